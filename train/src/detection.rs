//! DETR's training loop (facebookresearch/detr `main.py`): AdamW with weight decay on every
//! parameter, a lower learning rate for the backbone, the stem and layer1 frozen, the global
//! gradient norm clipped, a step schedule; the set criterion on every decoder layer; COCO AP on
//! the validation set every epoch, atomic checkpoints and exact resume as for classifiers.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::lr_scheduler::module_lr_scheduler::ModuleLrSchedulerConfig;
use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;
use zoo_datasets::coco_eval::{CocoEvalResult, Detection, evaluate};
use zoo_datasets::detection::load_batch;
use zoo_datasets::{
    CocoDetection, DataError, DetrImage, DetrTarget, DetrTrainTransform, DetrTransform, PixelBoxes, pad_batch,
};
use zoo_models::box_ops::box_xyxy_to_xywh;
use zoo_models::detr::{Detr, DetrConfig, postprocess};
use zoo_models::{ModelConfig, load_weights, load_weights_for_finetuning, save_burnpack};

use crate::TrainOptions;
use crate::checkpoint::{self, Progress};
use crate::classification::{optimizer_step, progress_bar, schedule};
use crate::config::{TrainConfig, ZooConfig};
use crate::detr_loss::SetCriterion;
use crate::loader::{decode_or_skip, prefetch, rng_for};

/// Training batches of a COCO detection set, augmented as DETR does, prepared in the background.
#[derive(Clone)]
pub struct DetrLoader {
    pub set: Arc<CocoDetection>,
    pub batch_size: usize,
    pub transform: DetrTrainTransform,
    pub seed: u64,
    pub skip_bad_images: bool,
    pub skipped: Arc<AtomicUsize>,
}

/// One training batch on the host.
pub struct DetrHostBatch {
    pub images: Vec<DetrImage>,
    pub targets: Vec<DetrTarget>,
}

impl DetrLoader {
    pub fn batches_per_epoch(&self) -> usize {
        self.set.samples.len().div_ceil(self.batch_size)
    }

    fn load(&self, epoch: usize, index: usize) -> Result<(DetrImage, DetrTarget), DataError> {
        let samples = &self.set.samples;
        let (used, img) =
            decode_or_skip(samples.len(), index, self.skip_bad_images, &self.skipped, |i| &samples[i].path)?;
        let boxes = PixelBoxes::from_coco(&samples[used].annotations, (img.height() as usize, img.width() as usize));
        Ok(self.transform.apply(&img, &boxes, &mut rng_for(self.seed, epoch, index)))
    }

    /// The epoch's batches in an order that follows from `(seed, epoch)`.
    pub fn epoch(&self, epoch: usize) -> Receiver<Result<DetrHostBatch, DataError>> {
        let mut order: Vec<usize> = (0..self.set.samples.len()).collect();
        order.shuffle(&mut rng_for(self.seed, epoch, usize::MAX));
        let this = self.clone();
        prefetch(order, self.batch_size, move |_, chunk| {
            let (images, targets) =
                chunk.par_iter().map(|&i| this.load(epoch, i)).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
            Ok(DetrHostBatch { images, targets })
        })
    }
}

/// DETR's detections (every query, as its evaluation keeps them) on each `(image_id, path)`,
/// in COCO's result form: `[x, y, width, height]` in pixels of the original image.
pub fn coco_detections(
    model: &Detr,
    files: &[(u64, PathBuf)],
    transform: &DetrTransform,
    batch_size: usize,
    device: &Device,
    bar: &ProgressBar,
) -> Result<Vec<Detection>> {
    let mut results = Vec::new();
    for chunk in files.chunks(batch_size) {
        let paths: Vec<PathBuf> = chunk.iter().map(|(_, p)| p.clone()).collect();
        let batch = load_batch(&paths, transform, device)?;
        let dets = postprocess(&model.forward(batch.images, batch.mask), &batch.sizes);
        for ((image_id, _), image_dets) in chunk.iter().zip(dets) {
            results.extend(image_dets.into_iter().map(|d| Detection {
                image_id: *image_id,
                category_id: d.label as u64,
                // In f64, as COCO's results are: the width is the difference of the f64 corners.
                bbox: box_xyxy_to_xywh(d.bbox_xyxy.map(f64::from)),
                score: d.score as f64,
            }));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(results)
}

#[derive(Debug, Clone, Serialize)]
pub struct DetrEpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    /// The weighted total over every decoder layer, averaged over the epoch's batches.
    pub train_loss: f64,
    /// The last decoder layer's unweighted losses, averaged over the epoch's batches.
    pub loss_ce: f64,
    pub loss_bbox: f64,
    pub loss_giou: f64,
    /// COCO AP@[.50:.95] and AP@.50 on the validation set.
    pub val_ap: f64,
    pub val_ap50: f64,
    pub train_images_per_sec: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct DetrTrainReport {
    pub epochs: Vec<DetrEpochMetrics>,
    pub best_ap: f64,
    pub best_epoch: usize,
    pub output_dir: PathBuf,
    pub best_model: PathBuf,
    pub last_model: PathBuf,
    /// The validation set's last full evaluation.
    pub last_eval: Option<CocoEvalResult>,
}

/// The backbone parts that `frozen_backbone_parts` freezes, as a parameter group.
fn frozen_group(parts: usize) -> Result<Option<ParamGroup>> {
    let names = ["conv1|bn1", "layer1", "layer2", "layer3", "layer4"];
    if parts == 0 {
        return Ok(None);
    }
    let regex = format!(r"^backbone\.({})\.", names[..parts].join("|"));
    Ok(Some(ParamGroup::from_regex(&regex).map_err(|e| anyhow::anyhow!("{e:?}"))?))
}

fn detr_parts(config: &ZooConfig) -> Result<(&DetrConfig, &TrainConfig)> {
    let ModelConfig::Detr(detr) = &config.model else {
        bail!("model.arch `{}` is not a detector", config.model.arch())
    };
    let cfg = config.train.as_ref().context("the config has no [train] section")?;
    Ok((detr, cfg))
}

/// Opens a split and checks its category ids fit the model's classes.
fn open_split(annotations: &Option<PathBuf>, images: &std::path::Path, num_classes: usize) -> Result<CocoDetection> {
    let annotations =
        annotations.as_ref().context("a detector's [train] needs train_annotations and val_annotations")?;
    let set = CocoDetection::open(annotations, images)?;
    let max_id = set.max_category_id();
    if max_id as usize >= num_classes {
        bail!(
            "{}: category id {max_id} does not fit model.num_classes = {num_classes} (DETR predicts category ids \
             directly: num_classes must exceed the largest id, 91 for COCO)",
            annotations.display()
        );
    }
    Ok(set)
}

/// Validation COCO metrics of `model` on `set`.
pub fn evaluate_detr(
    model: &Detr,
    set: &CocoDetection,
    transform: &DetrTransform,
    batch_size: usize,
    device: &Device,
    quiet: bool,
) -> Result<CocoEvalResult> {
    let bar = progress_bar(set.samples.len(), quiet, "  validate".into());
    let dets = coco_detections(model, &set.files(), transform, batch_size, device, &bar)?;
    Ok(evaluate(&set.ground_truth, &dets))
}

/// Trains the DETR of `config` on `device`, writing checkpoints, `metrics.jsonl`, `best.bpk`
/// (best validation AP) and `last.bpk` under `train.output_dir`.
pub fn train_detr(config: &ZooConfig, device: &Device, opts: &TrainOptions) -> Result<DetrTrainReport> {
    let (detr, cfg) = detr_parts(config)?;
    if opts.devices.len() > 1 {
        bail!("train.devices (data-parallel) is for classifiers; DETR trains on one device");
    }
    let classes = detr.num_classes;
    let train_set = open_split(&cfg.train_annotations, &cfg.train_dir, classes)?;
    let val_set = open_split(&cfg.val_annotations, &cfg.val_dir, classes)?;
    let loader = DetrLoader {
        set: Arc::new(train_set),
        batch_size: cfg.batch_size,
        transform: DetrTrainTransform::new(&cfg.detection, cfg.hflip, &config.data),
        seed: cfg.seed,
        skip_bad_images: cfg.skip_bad_images,
        skipped: Arc::new(AtomicUsize::new(0)),
    };
    let eval_transform = DetrTransform::new(detr.eval_short_side, detr.eval_max_side, &config.data);
    let output = cfg.output_dir.clone();
    std::fs::create_dir_all(&output).with_context(|| format!("cannot create {}", output.display()))?;

    let train_device = device.clone().autodiff();
    train_device.seed(cfg.seed);
    let mut model = detr.init(&train_device);
    let steps_per_epoch = loader.batches_per_epoch().div_ceil(cfg.grad_accum);
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(cfg.weight_decay as f32).init();
    let backbone = ParamGroup::from_regex(r"^backbone\.").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let backbone_lr = cfg.backbone_lr.unwrap_or(cfg.lr);
    let mut sched = ModuleLrSchedulerConfig::new(schedule(cfg, cfg.lr, steps_per_epoch))
        .with_group(backbone, schedule(cfg, backbone_lr, steps_per_epoch))
        .init()
        .map_err(|e| anyhow::anyhow!("learning-rate schedule: {e}"))?;
    let mut progress = Progress { epoch: 0, step: 0, best_score: -1.0, best_epoch: 0 };

    let last_checkpoint = if opts.resume { checkpoint::list(&output)?.pop() } else { None };
    if let Some((_, dir)) = &last_checkpoint {
        (progress, optim) = checkpoint::restore(dir, optim, &mut sched, opts.quiet)?;
        model = load_weights(model, &dir.join(checkpoint::MODEL))?;
    } else if let Some(init) = &cfg.init_from {
        // A checkpoint with another number of classes keeps this model's fresh class head.
        model = load_weights_for_finetuning(model, init, "class_embed", classes + 1)?;
    } else if let Some(init) = &cfg.backbone_init {
        model.backbone = load_weights(model.backbone, init)?;
    }
    if let Some(group) = frozen_group(cfg.frozen_backbone_parts)? {
        model = model.set_require_grad_group(group, false);
    }

    let criterion = SetCriterion::default();
    let mut metrics_file = checkpoint::metrics_file(&output)?;
    let mut epochs = Vec::new();
    let mut last_eval = None;
    let last_epoch = opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs));
    for epoch in progress.epoch..last_epoch {
        // Dropout draws from the device's generator: seeded per epoch, a resumed run draws the same.
        train_device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let started = Instant::now();
        let batches = loader.batches_per_epoch();
        let bar = progress_bar(batches, opts.quiet, format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let mut accumulator = GradientsAccumulator::new();
        let (mut sums, mut seen, mut lr) = ([0.0f64; 4], 0usize, 0.0);
        for (i, batch) in loader.epoch(epoch).into_iter().enumerate() {
            let batch = batch?;
            let (images, mask) = pad_batch(&batch.images, &train_device);
            let outputs = model.forward_all(images, mask);
            let (loss, per_layer) = criterion.loss(&outputs, &batch.targets)?;
            let loss = loss.div_scalar(cfg.grad_accum as f64);
            let last = per_layer.last().expect("at least one decoder layer");
            let parts = [last.ce.clone(), last.bbox.clone(), last.giou.clone()].map(|t| t.into_scalar::<f64>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            accumulator.accumulate(&model, grads);
            let total = loss.into_scalar::<f64>() * cfg.grad_accum as f64;
            if !total.is_finite() {
                bail!(
                    "the loss is {total} at epoch {} batch {}: training diverged (try a lower train.lr)",
                    epoch + 1,
                    i + 1
                );
            }
            for (s, v) in sums.iter_mut().zip([total, parts[0], parts[1], parts[2]]) {
                *s += v;
            }
            seen += batch.images.len();
            if (i + 1) % cfg.grad_accum == 0 || i + 1 == batches {
                (model, lr) = optimizer_step(model, &mut optim, &mut sched, &mut accumulator, cfg.grad_clip);
                progress.step += 1;
            }
            bar.inc(1);
            bar.set_message(format!("loss {:.4} lr {lr:.2e}", sums[0] / (i + 1) as f64));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let eval =
            evaluate_detr(&model.valid(), &val_set, &eval_transform, config.eval.batch_size, device, opts.quiet)?;
        progress.epoch = epoch + 1;
        let ap = eval.stats[0];
        let improved = ap > progress.best_score;
        if improved {
            (progress.best_score, progress.best_epoch) = (ap, epoch + 1);
        }
        let n = batches as f64;
        let m = DetrEpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: sums[0] / n,
            loss_ce: sums[1] / n,
            loss_bbox: sums[2] / n,
            loss_giou: sums[3] / n,
            val_ap: ap,
            val_ap50: eval.stats[1],
            train_images_per_sec: seen as f64 / train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&m)?)?;
        if !opts.quiet {
            eprintln!(
                "epoch {}/{}: loss {:.4} (ce {:.3}, L1 {:.3}, GIoU {:.3}), val AP {:.3}, AP50 {:.3}, {:.1} img/s, lr {:.2e}",
                m.epoch,
                cfg.epochs,
                m.train_loss,
                m.loss_ce,
                m.loss_bbox,
                m.loss_giou,
                ap,
                m.val_ap50,
                m.train_images_per_sec,
                lr
            );
        }
        epochs.push(m);
        last_eval = Some(eval);
        checkpoint::save_with_optimizer(&output, &progress, &optim, |path| Ok(save_burnpack(&model, path)?))?;
        if improved {
            save_burnpack(&model, &output.join("best.bpk"))?;
        }
    }
    save_burnpack(&model, &output.join("last.bpk"))?;
    Ok(DetrTrainReport {
        epochs,
        best_ap: progress.best_score,
        best_epoch: progress.best_epoch,
        best_model: output.join("best.bpk"),
        last_model: output.join("last.bpk"),
        output_dir: output,
        last_eval,
    })
}
