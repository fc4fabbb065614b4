//! DETR's training (facebookresearch/detr `main.py`), run by the engine: AdamW with weight decay
//! on every parameter, a lower learning rate for the backbone, its leading parts frozen (DETR: the
//! stem and layer1), the global gradient norm clipped, a step schedule; the set criterion on every
//! decoder layer; COCO AP on the validation set every epoch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Receiver;

use anyhow::{Context, Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use zoo_datasets::coco_eval::{CocoEvalResult, Detection, evaluate};
use zoo_datasets::detection::load_batch;
use zoo_datasets::{
    CocoDetection, DataError, DetrImage, DetrTarget, DetrTrainTransform, DetrTransform, PixelBoxes, pad_batch,
};
use zoo_models::box_ops::box_xyxy_to_xywh;
use zoo_models::detr::{Detr, DetrConfig, postprocess};
use zoo_models::{ModelConfig, load_weights, load_weights_for_finetuning, save_burnpack};

use crate::config::{TrainConfig, ZooConfig};
use crate::detr_loss::{LayerMatching, SetCriterion};
use crate::engine::{self, EpochTotals, Step, Task, TrainOptions, Trained, progress_bar};
use crate::loader::{decode_or_skip, epoch_order, prefetch, rng_for};
use crate::optimizer::ParamGroups;

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

    /// The image files of an epoch, in the order its batches take them.
    pub fn files(&self, epoch: usize) -> Vec<PathBuf> {
        let samples = &self.set.samples;
        epoch_order(samples.len(), self.seed, epoch).into_iter().map(|i| samples[i].path.clone()).collect()
    }

    fn load(&self, epoch: usize, index: usize) -> Result<(DetrImage, DetrTarget), DataError> {
        let samples = &self.set.samples;
        let (used, img) =
            decode_or_skip(samples.len(), index, self.skip_bad_images, &self.skipped, |i| &samples[i].path)?;
        let boxes = PixelBoxes::from_coco(&samples[used].annotations, (img.height() as usize, img.width() as usize));
        Ok(self.transform.apply(&img, &boxes, &mut rng_for(self.seed, epoch, index)))
    }

    /// The epoch's batches from batch `first` on, in an order that follows from `(seed, epoch)`.
    pub fn epoch(&self, epoch: usize, first: usize) -> Receiver<Result<DetrHostBatch, DataError>> {
        let order = epoch_order(self.set.samples.len(), self.seed, epoch);
        let this = self.clone();
        prefetch(order, self.batch_size, first, move |_, chunk| {
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
    if let Some(unknown) = set.unknown_categories() {
        bail!("{unknown}: add them to categories or remove the annotations");
    }
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

/// DETR trained on a COCO detection set with the set criterion, scored by COCO AP.
struct DetrTask<'a> {
    config: &'a ZooConfig,
    detr: &'a DetrConfig,
    cfg: &'a TrainConfig,
    loader: DetrLoader,
    val_set: CocoDetection,
    eval_transform: DetrTransform,
    criterion: SetCriterion,
}

/// The weighted total loss and the last decoder layer's unweighted losses (class, L1, GIoU),
/// summed over the epoch's batches.
#[derive(Default, Serialize, Deserialize)]
struct DetrTotals {
    sums: [f64; 4],
    batches: usize,
    images: usize,
}

impl EpochTotals for DetrTotals {
    fn images(&self) -> usize {
        self.images
    }

    fn loss(&self) -> f64 {
        self.sums[0] / self.batches as f64
    }
}

/// DETR's parameter groups: the backbone at `train.backbone_lr`, its first
/// `train.frozen_backbone_parts` frozen (facebookresearch/detr: 1e-5, the stem and layer1).
pub fn detr_param_groups(cfg: &TrainConfig) -> ParamGroups {
    let backbone_lr = cfg.backbone_lr.unwrap_or(cfg.lr);
    ParamGroups {
        no_weight_decay: None,
        lr: vec![(Detr::backbone_params().into(), backbone_lr)],
        frozen: Detr::frozen_backbone(cfg.frozen_backbone_parts),
    }
}

/// One batch's forward and backward pass, as the training loop runs it: the set loss of every
/// decoder layer on the padded `images` (`mask` true on padding) against `targets`, scaled by
/// `scale` (for gradient accumulation) before the backward pass; adds the gradients to `grads`
/// and returns the unscaled total and the last layer's unweighted class, L1 and GIoU losses.
/// `matching` (one [`SetCriterion::match_layer`] result per decoder layer) replaces the matcher's
/// assignment, e.g. to follow another implementation's where queries tie.
#[allow(clippy::too_many_arguments)]
pub fn detr_step(
    model: &Detr,
    criterion: &SetCriterion,
    images: Tensor<4>,
    mask: Tensor<3, Bool>,
    targets: &[DetrTarget],
    matching: Option<&[LayerMatching]>,
    scale: f64,
    grads: &mut GradientsAccumulator<Detr>,
) -> Result<(f64, [f64; 3])> {
    let outputs = model.forward_all(images, mask);
    let (loss, per_layer) = match matching {
        Some(matching) => criterion.loss_matched(&outputs, targets, matching),
        None => criterion.loss(&outputs, targets)?,
    };
    let loss = loss.mul_scalar(scale);
    let last = per_layer.last().expect("at least one decoder layer");
    let parts = [last.ce.clone(), last.bbox.clone(), last.giou.clone()].map(|t| t.into_scalar::<f64>());
    grads.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
    Ok((loss.into_scalar::<f64>() / scale, parts))
}

impl Task for DetrTask<'_> {
    type Model = Detr;
    type Batch = DetrHostBatch;
    type Totals = DetrTotals;
    type Eval = CocoEvalResult;
    type Metrics = DetrEpochMetrics;

    fn config(&self) -> &TrainConfig {
        self.cfg
    }

    fn init(&self, device: &Device) -> Result<Detr> {
        Ok(self.detr.init(device))
    }

    fn param_groups(&self, _: &Detr) -> ParamGroups {
        detr_param_groups(self.cfg)
    }

    fn load_initial(&self, mut model: Detr) -> Result<Detr> {
        if let Some(init) = &self.cfg.init_from {
            // A checkpoint with another number of classes keeps this model's fresh class head.
            let classes = self.detr.num_classes + 1;
            model = load_weights_for_finetuning(model, init, Detr::classifier_head(), classes)?;
        } else if let Some(init) = &self.cfg.backbone_init {
            model.backbone = load_weights(model.backbone, init)?;
        }
        Ok(model)
    }

    fn load(model: Detr, path: &Path) -> Result<Detr> {
        Ok(load_weights(model, path)?)
    }

    fn save(model: &Detr, path: &Path) -> Result<()> {
        Ok(save_burnpack(model, path)?)
    }

    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    fn batches(&self, epoch: usize, first: usize) -> Receiver<Result<DetrHostBatch, DataError>> {
        self.loader.epoch(epoch, first)
    }

    fn epoch_files(&self, epoch: usize) -> Vec<PathBuf> {
        self.loader.files(epoch)
    }

    /// Dropout draws from the device's generator: seeded per batch, a run resumed at any batch
    /// draws the same.
    fn batch_seed(&self, epoch: usize, batch: usize) -> Option<u64> {
        Some(
            self.cfg
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as u64)
                .wrapping_mul(1_000_033)
                .wrapping_add(batch as u64),
        )
    }

    fn train_step(&self, model: &Detr, batch: DetrHostBatch, step: &mut Step<Self>) -> Result<()> {
        let scale = 1.0 / self.cfg.grad_accum as f64;
        let (images, mask) = pad_batch(&batch.images, step.device);
        let (total, parts) =
            detr_step(model, &self.criterion, images, mask, &batch.targets, None, scale, &mut step.grads)?;
        if !total.is_finite() {
            bail!(
                "the loss is {total} at epoch {} batch {}: training diverged (try a lower train.lr)",
                step.epoch + 1,
                step.batch + 1
            );
        }
        let totals = &mut step.totals;
        for (s, v) in totals.sums.iter_mut().zip([total, parts[0], parts[1], parts[2]]) {
            *s += v;
        }
        totals.batches += 1;
        totals.images += batch.images.len();
        Ok(())
    }

    fn evaluate(&self, model: &Detr, device: &Device, quiet: bool) -> Result<CocoEvalResult> {
        evaluate_detr(model, &self.val_set, &self.eval_transform, self.config.eval.batch_size, device, quiet)
    }

    fn score(eval: &CocoEvalResult) -> f64 {
        eval.stats[0]
    }

    fn metrics(trained: &Trained<DetrTotals>, eval: &CocoEvalResult) -> DetrEpochMetrics {
        let [loss, ce, bbox, giou] = trained.totals.sums.map(|s| s / trained.totals.batches as f64);
        DetrEpochMetrics {
            epoch: trained.epoch,
            lr: trained.lr,
            train_loss: loss,
            loss_ce: ce,
            loss_bbox: bbox,
            loss_giou: giou,
            val_ap: eval.stats[0],
            val_ap50: eval.stats[1],
            train_images_per_sec: trained.images_per_sec,
            seconds: trained.seconds,
        }
    }

    fn log_line(m: &DetrEpochMetrics, epochs: usize) -> String {
        format!(
            "epoch {}/{}: loss {:.4} (ce {:.3}, L1 {:.3}, GIoU {:.3}), val AP {:.3}, AP50 {:.3}, {:.1} img/s, lr {:.2e}",
            m.epoch,
            epochs,
            m.train_loss,
            m.loss_ce,
            m.loss_bbox,
            m.loss_giou,
            m.val_ap,
            m.val_ap50,
            m.train_images_per_sec,
            m.lr
        )
    }
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
    let task = DetrTask { config, detr, cfg, loader, val_set, eval_transform, criterion: SetCriterion::default() };
    let run = engine::run(&task, device, opts)?;
    Ok(DetrTrainReport {
        epochs: run.epochs,
        best_ap: run.best_score,
        best_epoch: run.best_epoch,
        output_dir: run.output_dir,
        best_model: run.best_model,
        last_model: run.last_model,
        last_eval: run.last_eval,
    })
}
