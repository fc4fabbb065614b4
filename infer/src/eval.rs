//! `zoo eval`: COCO bbox mAP of DETR over an annotated image folder, and ImageNet-style top-1 /
//! top-5 of a classifier over a class-folder validation set.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zoo_datasets::{CocoDetection, DetrTransform, EvalTransform, ImageFolder};
use zoo_models::detr::Detr;
use zoo_train::ZooConfig;
use zoo_train::classification::evaluate;
use zoo_train::detection::coco_detections;
use zoo_train::loader::{Augment, Loader};

use crate::classify::load_classifier;
use crate::coco_eval::{CocoEvalResult, evaluate as coco_evaluate};
use crate::detect::detr_config;

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_prefix(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// One COCO result, as written to `--results-out`.
#[derive(Debug, Serialize)]
struct CocoResult {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    score: f64,
}

/// Runs DETR over every image of the annotation file (all queries kept, as DETR's evaluation
/// does), optionally writes the COCO results JSON, and scores them as pycocotools would.
pub fn eval_detr(
    model: &Detr,
    config: &ZooConfig,
    config_path: &Path,
    annotations: &Path,
    images: &Path,
    results_out: Option<&Path>,
    device: &Device,
) -> Result<CocoEvalResult> {
    let detr = detr_config(config, config_path)?;
    let set = CocoDetection::open(annotations, images)?;
    if let Some(unknown) = set.unknown_categories() {
        eprintln!("warning: {unknown}; as pycocotools does, they are not scored");
    }
    let files = set.files();
    let transform = DetrTransform::new(detr.eval_short_side, detr.eval_max_side, &config.data);
    let dets = coco_detections(model, &files, &transform, config.eval.batch_size, device, &bar(files.len(), "eval"))?;
    if let Some(path) = results_out {
        let results: Vec<CocoResult> = dets
            .iter()
            .map(|d| CocoResult { image_id: d.image_id, category_id: d.category_id, bbox: d.bbox, score: d.score })
            .collect();
        let text = serde_json::to_string(&results)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} ({} detections)", path.display(), results.len());
    }
    // Like pycocotools, detections of categories the ground truth does not have are not scored.
    Ok(coco_evaluate(&set.ground_truth, &dets))
}

#[derive(Debug, Serialize)]
pub struct ClassificationEval {
    pub images: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub images_per_sec: f64,
}

/// Top-1 / top-5 of a classifier over `data` (`<class>/<image>`, classes in sorted order).
pub fn eval_classifier(
    config: &ZooConfig,
    config_path: &Path,
    weights: &Path,
    data: &Path,
    device: &Device,
) -> Result<ClassificationEval> {
    let model = load_classifier(config, config_path, weights, device)?;
    let size = config.model.image_size().context("not a classifier")?;
    let folder = ImageFolder::open(data, false)?;
    if folder.classes.len() != config.model.num_classes() {
        anyhow::bail!(
            "{} has {} class folders but the model of {} has model.num_classes = {}",
            data.display(),
            folder.classes.len(),
            config_path.display(),
            config.model.num_classes()
        );
    }
    let loader = Loader::new(
        &folder,
        config.eval.batch_size,
        size,
        Augment::Eval(EvalTransform::new(size, &config.data)),
        0,
        false,
    );
    let start = Instant::now();
    let (loss, top1, top5) = evaluate(&model, &loader, device, false)?;
    let images = folder.samples.len();
    Ok(ClassificationEval { images, loss, top1, top5, images_per_sec: images as f64 / start.elapsed().as_secs_f64() })
}
