//! `zoo detect`: DETR detections for images or a preprocessed batch, as JSON and as pictures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::RgbImage;
use serde::Serialize;
use zoo_datasets::DetrTransform;
use zoo_datasets::coco::COCO_CATEGORY_NAMES;
use zoo_datasets::detection::load_batch;
use zoo_models::box_ops::{box_xywh_to_xyxy, box_xyxy_to_xywh};
use zoo_models::detr::{Detr, DetrConfig, postprocess};
use zoo_models::{ModelConfig, load_weights};
use zoo_train::ZooConfig;

use crate::{Inputs, draw, npy};

pub fn detr_config<'a>(config: &'a ZooConfig, config_path: &Path) -> Result<&'a DetrConfig> {
    match &config.model {
        ModelConfig::Detr(c) => Ok(c),
        other => bail!("{}: model arch `{}` is not a detector (expected `detr`)", config_path.display(), other.arch()),
    }
}

pub fn load_detr(config: &ZooConfig, config_path: &Path, weights: &Path, device: &Device) -> Result<Detr> {
    load_weights(detr_config(config, config_path)?.init(device), weights)
        .map_err(|e| crate::weights_error(e, config_path))
}

/// Class names by class index: the config's label file, else COCO's for 91-class models.
pub fn class_names(config: &ZooConfig, num_classes: usize) -> Result<Vec<String>> {
    if let Some(labels) = config.labels()? {
        return Ok(labels);
    }
    Ok((0..num_classes)
        .map(|i| match COCO_CATEGORY_NAMES.get(i) {
            Some(name) if num_classes == COCO_CATEGORY_NAMES.len() => name.to_string(),
            _ => format!("class {i}"),
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct DetectionJson {
    pub category_id: usize,
    pub category: String,
    pub score: f32,
    /// Absolute `[x, y, width, height]` in the original image.
    pub bbox: [f32; 4],
}

#[derive(Debug, Serialize)]
pub struct DetectOutput {
    pub inputs: Vec<String>,
    /// `[B][queries][classes + 1]`, last decoder layer.
    pub pred_logits: Vec<Vec<Vec<f32>>>,
    /// `[B][queries][4]`, normalised (cx, cy, w, h).
    pub pred_boxes: Vec<Vec<Vec<f32>>>,
    /// Per image, the detections scoring at least the threshold, best first.
    pub detections: Vec<Vec<DetectionJson>>,
}

/// `[B, Q, C]` on the host. A non-finite prediction (the weights and the input were checked) is
/// an error, not a list of no detections.
fn nested(t: Tensor<3>, what: &str) -> Result<Vec<Vec<Vec<f32>>>> {
    let [_, q, c] = t.dims();
    let values: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().context("reading predictions")?;
    if values.iter().any(|v| !v.is_finite()) {
        bail!("the model's {what} hold NaN or infinite values: the computation overflowed");
    }
    Ok(values.chunks(q * c).map(|img| img.chunks(c).map(<[f32]>::to_vec).collect()).collect())
}

/// Runs DETR over the inputs; returns the predictions and, for image inputs, the decoded images.
pub fn detect(
    model: &Detr,
    config: &ZooConfig,
    config_path: &Path,
    inputs: &Inputs,
    threshold: f32,
    device: &Device,
) -> Result<(DetectOutput, Vec<RgbImage>)> {
    let detr = detr_config(config, config_path)?;
    let names = class_names(config, detr.num_classes)?;
    let mut out = DetectOutput { inputs: vec![], pred_logits: vec![], pred_boxes: vec![], detections: vec![] };
    let mut pictures = Vec::new();
    let mut run = |images: Tensor<4>, mask: Tensor<3, Bool>, sizes: &[(usize, usize)]| -> Result<()> {
        let prediction = model.forward(images, mask);
        let logits = nested(prediction.logits.clone(), "pred_logits")?;
        let boxes = nested(prediction.boxes.clone(), "pred_boxes")?;
        for dets in postprocess(&prediction, sizes) {
            let mut kept: Vec<DetectionJson> = dets
                .into_iter()
                .filter(|d| d.score >= threshold)
                .map(|d| DetectionJson {
                    category_id: d.label,
                    category: names[d.label].clone(),
                    score: d.score,
                    bbox: box_xyxy_to_xywh(d.bbox_xyxy),
                })
                .collect();
            kept.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.detections.push(kept);
        }
        out.pred_logits.extend(logits);
        out.pred_boxes.extend(boxes);
        Ok(())
    };
    match inputs {
        Inputs::Npy(path) => {
            let x = npy::read_batch(path, device)?;
            let [b, c, h, w] = x.dims();
            if c != 3 {
                bail!("input {}: {c} channels given, 3 expected", path.display());
            }
            run(x, Tensor::<3, Bool>::full([b, h, w], false, device), &vec![(h, w); b])?;
            out.inputs = (0..b).map(|i| format!("{}[{i}]", path.display())).collect();
        }
        Inputs::Images(paths) => {
            let transform = DetrTransform::new(detr.eval_short_side, detr.eval_max_side, &config.data);
            for chunk in paths.chunks(config.eval.batch_size) {
                let batch = load_batch(chunk, &transform, device)?;
                run(batch.images, batch.mask, &batch.sizes)?;
                pictures.extend(batch.decoded);
            }
            out.inputs = paths.iter().map(|p| p.display().to_string()).collect();
        }
    }
    Ok((out, pictures))
}

/// Draws each image's detections and writes `<out_dir>/<stem>.detections.png` (`<stem>-2...`
/// when two inputs share a name); returns the paths.
pub fn draw_detections(out: &DetectOutput, pictures: Vec<RgbImage>, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut written = Vec::new();
    let names = draw::unique_stems(out.inputs.iter().map(Path::new));
    for ((name, dets), mut img) in names.iter().zip(&out.detections).zip(pictures) {
        for d in dets.iter().rev() {
            let text = format!("{} {:.2}", d.category, d.score);
            draw::labelled_box(&mut img, box_xywh_to_xyxy(d.bbox), &text, draw::class_colour(d.category_id));
        }
        let path = out_dir.join(format!("{name}.detections.png"));
        img.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

impl DetectOutput {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (input, dets) in self.inputs.iter().zip(&self.detections) {
            s.push_str(&format!("{input}: {} detections\n", dets.len()));
            for d in dets {
                let [x, y, w, h] = d.bbox;
                s.push_str(&format!(
                    "  {} ({}) {:.3} at x={x:.1} y={y:.1} w={w:.1} h={h:.1}\n",
                    d.category, d.category_id, d.score
                ));
            }
        }
        s
    }
}
