//! The classification training loop: AdamW with decoupled weight decay on weights only, linear
//! warmup then cosine decay per optimizer step, label smoothing, mixup/CutMix, gradient clipping
//! and accumulation, top-1/top-5 validation every epoch, atomic checkpoints and exact resume.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::lr_scheduler::step::StepLrSchedulerConfig;
use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zoo_datasets::{EvalTransform, ImageFolder, TrainTransform};
use zoo_models::Classifier;

use crate::checkpoint::{self, Progress};
use crate::clip::clip_grad_norm;
use crate::config::{TrainConfig, ZooConfig};
use crate::loader::{Augment, HostBatch, Loader};
use crate::mix::MixConfig;

/// Parameters without weight decay: biases, norm scales and shifts, tokens and position embeddings.
const NO_DECAY: &str = r"(\.bias|\.gamma|\.beta|cls_token|pos_embed|patch_pos|pixel_pos)$";

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the last checkpoint in the output folder.
    pub resume: bool,
    /// Stop after this many epochs in total even if the config asks for more (as an interrupted
    /// run would); the checkpoints are the same.
    pub stop_after: Option<usize>,
    /// No progress bars.
    pub quiet: bool,
    /// Data-parallel training over these devices (the config's `train.devices`, resolved), the
    /// first holding the model and the optimizer; fewer than two: the `device` argument alone.
    pub devices: Vec<Device>,
}

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

fn optimizer(cfg: &TrainConfig) -> Result<ModuleOptimizer> {
    let adamw = |wd: f64| AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(wd as f32);
    let no_decay = ParamGroup::from_regex(NO_DECAY).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(adamw(cfg.weight_decay).init().with_group(no_decay, adamw(0.0).build(), None))
}

/// The learning rate per optimizer step, peaking at `lr`: with `lr_drop`, constant then times
/// 0.1 from that epoch on (DETR); otherwise linear warmup from `lr / 1000`, then cosine decay to
/// `min_lr` (scaled like `lr` when `lr` is not the config's peak, e.g. a backbone's).
pub fn schedule(cfg: &TrainConfig, lr: f64, steps_per_epoch: usize) -> LrSchedulerConfig {
    if let Some(drop) = cfg.lr_drop {
        return LrSchedulerConfig::Step(StepLrSchedulerConfig::new(lr, drop * steps_per_epoch));
    }
    let total = cfg.epochs * steps_per_epoch;
    let warmup = cfg.warmup_epochs * steps_per_epoch;
    let min_lr = cfg.min_lr * lr / cfg.lr;
    let cosine =
        LrSchedulerConfig::Cosine(CosineAnnealingLrSchedulerConfig::new(lr, total - warmup).with_min_lr(min_lr));
    if warmup > 0 {
        let linear = LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(lr / 1000.0, lr, warmup));
        LrSchedulerConfig::Sequential(SequentialLrSchedulerConfig::new(vec![linear, cosine], vec![warmup]))
    } else {
        cosine
    }
}

/// Steps every accumulated gradient: clips their global norm (when the config asks), then one
/// optimizer step at the scheduled learning rates; returns the base learning rate.
pub fn optimizer_step<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    sched: &mut ModuleLrScheduler,
    accumulator: &mut GradientsAccumulator<M>,
    grad_clip: f64,
) -> (M, f64) {
    let mut grads = accumulator.grads();
    if grad_clip > 0.0 {
        clip_grad_norm(&model, &mut grads, grad_clip);
    }
    let rate = sched.step();
    let lr = rate.base();
    (optim.step(rate, model, grads), lr)
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

pub(crate) fn progress_bar(len: usize, quiet: bool, prefix: String) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64).with_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Top-1 and top-5 hits of logits `[B, classes]` against labels.
fn top_k_hits(logits: &[f32], labels: &[usize], classes: usize) -> (usize, usize) {
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let better = row.iter().filter(|&&v| v > row[label]).count();
        top1 += (better == 0) as usize;
        top5 += (better < 5) as usize;
    }
    (top1, top5)
}

/// Validation loss, top-1 and top-5 accuracy (fractions) of `model` on `loader`.
pub fn evaluate(model: &Classifier, loader: &Loader, device: &Device, quiet: bool) -> Result<(f64, f64, f64)> {
    let bar = progress_bar(loader.batches_per_epoch(), quiet, "  validate".into());
    let (mut loss_sum, mut top1, mut top5, mut n) = (0.0, 0, 0, 0);
    for batch in loader.epoch(0) {
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

/// Trains the classifier of `config` on `device`, writing checkpoints, `metrics.jsonl`,
/// `best.bpk` and `last.bpk` under `train.output_dir`.
pub fn train_classifier(config: &ZooConfig, device: &Device, opts: &TrainOptions) -> Result<TrainReport> {
    let cfg = config.train.as_ref().context("the config has no [train] section")?;
    let (train_loader, val_loader, classes) = loaders(config)?;
    if config.model.num_classes() != classes.len() {
        bail!(
            "model.num_classes = {} but {} has {} class folders",
            config.model.num_classes(),
            cfg.train_dir.display(),
            classes.len()
        );
    }
    let output = cfg.output_dir.clone();
    std::fs::create_dir_all(&output).with_context(|| format!("cannot create {}", output.display()))?;
    let device = opts.devices.first().unwrap_or(device);
    let train_device = device.clone().autodiff();
    // The initial weights follow from the seed, like the data order and augmentations.
    train_device.seed(cfg.seed);
    let mut model =
        Classifier::init(&config.model, &train_device).context("only classifiers are trained by this loop")?;
    let steps_per_epoch = train_loader.batches_per_epoch().div_ceil(cfg.grad_accum);
    let mut optim = optimizer(cfg)?;
    let mut sched = ModuleLrSchedulerConfig::new(schedule(cfg, cfg.lr, steps_per_epoch))
        .init()
        .map_err(|e| anyhow::anyhow!("learning-rate schedule: {e}"))?;
    let mut progress = Progress { epoch: 0, step: 0, best_score: -1.0, best_epoch: 0 };

    let last_checkpoint = if opts.resume { checkpoint::list(&output)?.pop() } else { None };
    if let Some((_, dir)) = &last_checkpoint {
        (progress, optim) = checkpoint::restore(dir, optim, &mut sched, opts.quiet)?;
        model = model.load(&dir.join(checkpoint::MODEL))?;
    } else if let Some(init) = &cfg.init_from {
        model = model.load_for_finetuning(init, classes.len())?;
    }

    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output.join("metrics.jsonl"))
        .with_context(|| format!("cannot write {}", output.join("metrics.jsonl").display()))?;
    let mut epochs = Vec::new();
    let last_epoch = opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs));
    let (size, n_classes) = (train_loader.size, classes.len());
    for epoch in progress.epoch..last_epoch {
        let started = Instant::now();
        let bar =
            progress_bar(train_loader.batches_per_epoch(), opts.quiet, format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let mut accumulator = GradientsAccumulator::new();
        let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, 0.0);
        for (i, batch) in train_loader.epoch(epoch).into_iter().enumerate() {
            let batch = batch?;
            let scale = 1.0 / cfg.grad_accum as f64;
            let batch_loss = if opts.devices.len() > 1 {
                let (loss, shares) = data_parallel_step(&model, &batch, &opts.devices, size, n_classes, scale);
                for grads in shares {
                    accumulator.accumulate(&model, grads);
                }
                loss
            } else {
                let (x, t) = to_device(&batch, size, n_classes, &train_device);
                let loss = soft_cross_entropy(model.forward(x), t).mul_scalar(scale);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
                loss.into_scalar::<f64>() / scale
            };
            let b = batch.labels.len();
            loss_sum += batch_loss * b as f64;
            seen += b;
            let last_of_epoch = i + 1 == train_loader.batches_per_epoch();
            if (i + 1) % cfg.grad_accum == 0 || last_of_epoch {
                (model, lr) = optimizer_step(model, &mut optim, &mut sched, &mut accumulator, cfg.grad_clip);
                progress.step += 1;
            }
            bar.inc(1);
            bar.set_message(format!("loss {:.4} lr {lr:.2e}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, top1, top5) = evaluate(&model.valid(), &val_loader, device, opts.quiet)?;
        progress.epoch = epoch + 1;
        let improved = top1 > progress.best_score;
        if improved {
            (progress.best_score, progress.best_epoch) = (top1, epoch + 1);
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen as f64,
            val_loss,
            val_top1: top1,
            val_top5: top5,
            train_images_per_sec: seen as f64 / train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&m)?)?;
        if !opts.quiet {
            eprintln!(
                "epoch {}/{}: train loss {:.4}, val loss {:.4}, top-1 {:.2}%, top-5 {:.2}%, {:.1} img/s, lr {:.2e}",
                m.epoch,
                cfg.epochs,
                m.train_loss,
                m.val_loss,
                100.0 * top1,
                100.0 * top5,
                m.train_images_per_sec,
                lr
            );
        }
        epochs.push(m);
        checkpoint::save_with_optimizer(&output, &progress, &optim, |path| Ok(model.save(path)?))?;
        if improved {
            model.save(&output.join("best.bpk"))?;
        }
    }
    model.save(&output.join("last.bpk"))?;
    std::fs::write(output.join("classes.txt"), classes.join("\n") + "\n")?;
    Ok(TrainReport {
        epochs,
        best_top1: progress.best_score,
        best_epoch: progress.best_epoch,
        best_model: output.join("best.bpk"),
        last_model: output.join("last.bpk"),
        output_dir: output,
        classes,
    })
}
