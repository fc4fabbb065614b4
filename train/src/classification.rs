//! Classifier training, run by the engine: soft-target cross-entropy (label smoothing,
//! mixup/CutMix) on image folders, data-parallel over several devices, AdamW without weight decay
//! on what the model declares (biases, norms, tokens, position embeddings), linear warmup then
//! cosine decay per optimizer step, and top-1/top-5 validation every epoch.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use zoo_datasets::{DataError, EvalTransform, ImageFolder, TrainTransform};
use zoo_models::Classifier;

use crate::config::{TrainConfig, ZooConfig};
use crate::engine::{self, EpochTotals, Step, Task, TrainOptions, Trained, progress_bar};
use crate::loader::{Augment, HostBatch, Loader};
use crate::mix::MixConfig;
use crate::optimizer::ParamGroups;

#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub train_images_per_sec: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub epochs: Vec<EpochMetrics>,
    pub best_top1: f64,
    pub best_epoch: usize,
    pub output_dir: PathBuf,
    /// The weights of the best validation top-1 and of the last epoch.
    pub best_model: PathBuf,
    pub last_model: PathBuf,
    pub classes: Vec<String>,
}

/// Cross-entropy against soft targets `[B, classes]`, averaged over the batch.
pub fn soft_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let b = logits.dims()[0];
    (targets * log_softmax(logits, 1)).sum().neg().div_scalar(b as f64).reshape([1])
}

/// The parameter groups a classifier trains with: no weight decay where the model says so.
pub fn classifier_param_groups(model: &Classifier) -> ParamGroups {
    ParamGroups { no_weight_decay: Some(model.no_weight_decay().into()), ..Default::default() }
}

/// One batch's forward and backward pass on one device, as the training loop runs it: the loss
/// of `images` `[B, 3, S, S]` against the soft `targets` `[B, classes]`, scaled by `scale` (for
/// gradient accumulation) before the backward pass; adds the gradients to `grads` and returns
/// the unscaled loss.
pub fn classifier_step(
    model: &Classifier,
    images: Tensor<4>,
    targets: Tensor<2>,
    scale: f64,
    grads: &mut GradientsAccumulator<Classifier>,
) -> f64 {
    let loss = soft_cross_entropy(model.forward(images), targets).mul_scalar(scale);
    grads.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
    loss.into_scalar::<f64>() / scale
}

fn to_device(batch: &HostBatch, size: usize, classes: usize, device: &Device) -> (Tensor<4>, Tensor<2>) {
    shard_to_device(batch, 0..batch.labels.len(), size, classes, device)
}

/// Samples `range` of a batch as tensors on `device`.
fn shard_to_device(
    batch: &HostBatch,
    range: std::ops::Range<usize>,
    size: usize,
    classes: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<2>) {
    let (n, image) = (range.len(), 3 * size * size);
    (
        Tensor::from_data(
            TensorData::new(batch.images[range.start * image..range.end * image].to_vec(), [n, 3, size, size]),
            device,
        ),
        Tensor::from_data(
            TensorData::new(batch.targets[range.start * classes..range.end * classes].to_vec(), [n, classes]),
            device,
        ),
    )
}

/// The batch's mean loss and its gradients (on the model's device), computed data-parallel: each
/// device takes an even share of the batch on its own copy of the model, the first on the calling
/// thread and the others in threads of their own, and the shares' gradients, weighted by their
/// size, are summed on the model's device. (The calling thread computes rather than waits: in
/// `zoo` it is one of the threads of rayon's pool, which the CPU backends compute on.)
fn data_parallel_step(
    model: &Classifier,
    batch: &HostBatch,
    devices: &[Device],
    size: usize,
    classes: usize,
    scale: f64,
) -> (f64, Vec<GradientsParams>) {
    let b = batch.labels.len();
    let main = model.devices()[0].clone();
    let shares: Vec<(Device, std::ops::Range<usize>)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i * b / devices.len()..(i + 1) * b / devices.len()))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let share_step = |(device, range): &(Device, std::ops::Range<usize>)| {
        let replica = model.clone().fork(&device.clone().autodiff());
        let (x, t) = shard_to_device(batch, range.clone(), size, classes, &replica.devices()[0]);
        let weight = range.len() as f64 / b as f64;
        let loss = soft_cross_entropy(replica.forward(x), t).mul_scalar(weight * scale);
        let grads = GradientsParams::from_grads(loss.backward(), &replica).to_device(&main, &replica);
        (loss.into_scalar::<f64>(), grads)
    };
    let results: Vec<(f64, GradientsParams)> = std::thread::scope(|scope| {
        let Some((first, others)) = shares.split_first() else { return Vec::new() };
        let handles: Vec<_> = others.iter().map(|share| scope.spawn(|| share_step(share))).collect();
        std::iter::once(share_step(first))
            .chain(handles.into_iter().map(|h| h.join().expect("a data-parallel worker panicked")))
            .collect()
    });
    let loss = results.iter().map(|(l, _)| l).sum::<f64>() / scale;
    (loss, results.into_iter().map(|(_, g)| g).collect())
}

/// Top-1 and top-5 hits of logits `[B, classes]` against labels.
/// A row holding a NaN is never a hit: NaN compares false with everything, so counting the
/// logits above the label's would make a diverged model score 100%.
fn top_k_hits(logits: &[f32], labels: &[usize], classes: usize) -> (usize, usize) {
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let better =
            if row.iter().any(|v| v.is_nan()) { usize::MAX } else { row.iter().filter(|&&v| v > row[label]).count() };
        top1 += (better == 0) as usize;
        top5 += (better < 5) as usize;
    }
    (top1, top5)
}

/// Validation loss, top-1 and top-5 accuracy (fractions) of `model` on `loader`.
pub fn evaluate(model: &Classifier, loader: &Loader, device: &Device, quiet: bool) -> Result<(f64, f64, f64)> {
    let bar = progress_bar(loader.batches_per_epoch(), quiet, "  validate".into());
    let (mut loss_sum, mut top1, mut top5, mut n) = (0.0, 0, 0, 0);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let (x, t) = to_device(&batch, loader.size, loader.classes, device);
        let logits = model.forward(x);
        let b = batch.labels.len();
        loss_sum += soft_cross_entropy(logits.clone(), t).into_scalar::<f64>() * b as f64;
        let values: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().context("reading logits")?;
        let (h1, h5) = top_k_hits(&values, &batch.labels, loader.classes);
        (top1, top5, n) = (top1 + h1, top5 + h5, n + b);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((loss_sum / n as f64, top1 as f64 / n as f64, top5 as f64 / n as f64))
}

/// The training augmentation of a config's `[train]` section; without one, DeiT's (random
/// resized crop from 8%, flip, mixup 0.8 / CutMix 1.0, label smoothing 0.1).
pub fn train_augment(config: &ZooConfig, size: usize) -> Augment {
    let train = config.train.as_ref();
    let mix = MixConfig {
        mixup_alpha: train.map_or(0.8, |t| t.mixup_alpha),
        cutmix_alpha: train.map_or(1.0, |t| t.cutmix_alpha),
        prob: train.map_or(1.0, |t| t.mix_prob),
        switch_prob: train.map_or(0.5, |t| t.switch_prob),
        smoothing: train.map_or(0.1, |t| t.label_smoothing),
    };
    let (scale_min, hflip) = train.map_or((0.08, 0.5), |t| (t.scale_min, t.hflip));
    Augment::Train { transform: TrainTransform::new(size, scale_min, hflip, &config.data), mix }
}

fn loaders(config: &ZooConfig) -> Result<(Loader, Loader, Vec<String>)> {
    let cfg = config.train.as_ref().context("the config has no [train] section")?;
    let size = config.model.image_size().context("only classifiers are trained by this loop")?;
    let train = ImageFolder::open(&cfg.train_dir, cfg.skip_bad_images)?;
    let val = ImageFolder::open(&cfg.val_dir, cfg.skip_bad_images)?;
    if train.classes != val.classes {
        bail!(
            "{} and {} have different class folders ({} vs {})",
            cfg.train_dir.display(),
            cfg.val_dir.display(),
            train.classes.len(),
            val.classes.len()
        );
    }
    let train_loader =
        Loader::new(&train, cfg.batch_size, size, train_augment(config, size), cfg.seed, cfg.skip_bad_images);
    let eval = Augment::Eval(EvalTransform::new(size, &config.data));
    let val_loader = Loader::new(&val, config.eval.batch_size, size, eval, cfg.seed, cfg.skip_bad_images);
    Ok((train_loader, val_loader, train.classes))
}

/// A classifier trained on image folders with soft-target cross-entropy, scored by top-1.
struct ClassifierTask<'a> {
    config: &'a ZooConfig,
    cfg: &'a TrainConfig,
    train: Loader,
    val: Loader,
    classes: Vec<String>,
    /// Devices for data-parallel training (two or more), else empty or one.
    devices: &'a [Device],
}

/// The loss summed over the epoch's samples.
#[derive(Default, Serialize, Deserialize)]
struct LossTotals {
    loss_sum: f64,
    seen: usize,
}

impl EpochTotals for LossTotals {
    fn images(&self) -> usize {
        self.seen
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen as f64
    }
}

impl Task for ClassifierTask<'_> {
    type Model = Classifier;
    type Batch = HostBatch;
    type Totals = LossTotals;
    /// Loss, top-1 and top-5.
    type Eval = (f64, f64, f64);
    type Metrics = EpochMetrics;

    fn config(&self) -> &TrainConfig {
        self.cfg
    }

    fn init(&self, device: &Device) -> Result<Classifier> {
        Classifier::init(&self.config.model, device).context("only classifiers are trained by this loop")
    }

    fn param_groups(&self, model: &Classifier) -> ParamGroups {
        classifier_param_groups(model)
    }

    fn load_initial(&self, model: Classifier) -> Result<Classifier> {
        match &self.cfg.init_from {
            Some(init) => Ok(model.load_for_finetuning(init, self.classes.len())?),
            None => Ok(model),
        }
    }

    fn load(model: Classifier, path: &Path) -> Result<Classifier> {
        Ok(model.load(path)?)
    }

    fn save(model: &Classifier, path: &Path) -> Result<()> {
        Ok(model.save(path)?)
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.batches_per_epoch()
    }

    fn batches(&self, epoch: usize, first: usize) -> Receiver<Result<HostBatch, DataError>> {
        self.train.epoch(epoch, first)
    }

    fn epoch_files(&self, epoch: usize) -> Vec<PathBuf> {
        self.train.files(epoch)
    }

    fn train_step(&self, model: &Classifier, batch: HostBatch, step: &mut Step<Self>) -> Result<()> {
        let (size, classes) = (self.train.size, self.classes.len());
        let scale = 1.0 / self.cfg.grad_accum as f64;
        let batch_loss = if self.devices.len() > 1 {
            let (loss, shares) = data_parallel_step(model, &batch, self.devices, size, classes, scale);
            for grads in shares {
                step.grads.accumulate(model, grads);
            }
            loss
        } else {
            let (x, t) = to_device(&batch, size, classes, step.device);
            classifier_step(model, x, t, scale, &mut step.grads)
        };
        let b = batch.labels.len();
        step.totals.loss_sum += batch_loss * b as f64;
        step.totals.seen += b;
        Ok(())
    }

    fn evaluate(&self, model: &Classifier, device: &Device, quiet: bool) -> Result<(f64, f64, f64)> {
        evaluate(model, &self.val, device, quiet)
    }

    fn score(&(_, top1, _): &(f64, f64, f64)) -> f64 {
        top1
    }

    fn metrics(trained: &Trained<LossTotals>, &(val_loss, top1, top5): &(f64, f64, f64)) -> EpochMetrics {
        EpochMetrics {
            epoch: trained.epoch,
            lr: trained.lr,
            train_loss: trained.totals.loss(),
            val_loss,
            val_top1: top1,
            val_top5: top5,
            train_images_per_sec: trained.images_per_sec,
            seconds: trained.seconds,
        }
    }

    fn log_line(m: &EpochMetrics, epochs: usize) -> String {
        format!(
            "epoch {}/{}: train loss {:.4}, val loss {:.4}, top-1 {:.2}%, top-5 {:.2}%, {:.1} img/s, lr {:.2e}",
            m.epoch,
            epochs,
            m.train_loss,
            m.val_loss,
            100.0 * m.val_top1,
            100.0 * m.val_top5,
            m.train_images_per_sec,
            m.lr
        )
    }
}

/// Trains the classifier of `config` on `device`, writing checkpoints, `metrics.jsonl`,
/// `best.bpk`, `last.bpk` and `classes.txt` under `train.output_dir`.
pub fn train_classifier(config: &ZooConfig, device: &Device, opts: &TrainOptions) -> Result<TrainReport> {
    let cfg = config.train.as_ref().context("the config has no [train] section")?;
    let (train, val, classes) = loaders(config)?;
    if config.model.num_classes() != classes.len() {
        bail!(
            "model.num_classes = {} but {} has {} class folders",
            config.model.num_classes(),
            cfg.train_dir.display(),
            classes.len()
        );
    }
    let task = ClassifierTask { config, cfg, train, val, classes, devices: &opts.devices };
    let run = engine::run(&task, opts.devices.first().unwrap_or(device), opts)?;
    let classes = run.output_dir.join("classes.txt");
    std::fs::write(&classes, task.classes.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", classes.display()))?;
    Ok(TrainReport {
        epochs: run.epochs,
        best_top1: run.best_score,
        best_epoch: run.best_epoch,
        output_dir: run.output_dir,
        best_model: run.best_model,
        last_model: run.last_model,
        classes: task.classes,
    })
}

#[cfg(test)]
mod tests {
    use super::top_k_hits;

    #[test]
    fn top_k_counts_ranks_and_never_counts_nan() {
        // Label 2 first, label 0 third of six, label 1 in a row with a NaN, label 3 in a NaN row.
        let logits = [
            0.1,
            0.2,
            0.9,
            0.0,
            0.0,
            0.0, //
            0.5,
            0.7,
            0.0,
            0.6,
            0.0,
            0.0, //
            0.1,
            0.9,
            f32::NAN,
            0.0,
            0.0,
            0.0, //
            f32::NAN,
            f32::NAN,
            f32::NAN,
            f32::NAN,
            f32::NAN,
            f32::NAN,
        ];
        assert_eq!(top_k_hits(&logits[..6], &[2], 6), (1, 1));
        assert_eq!(top_k_hits(&logits[6..12], &[0], 6), (0, 1));
        assert_eq!(top_k_hits(&logits[12..18], &[1], 6), (0, 0));
        assert_eq!(top_k_hits(&logits[18..], &[3], 6), (0, 0));
        assert_eq!(top_k_hits(&logits, &[2, 0, 1, 3], 6), (1, 2));
    }
}
