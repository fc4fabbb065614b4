//! The training engine, after facebookresearch/detr's `main.py` and `engine.py`: one outer loop
//! for every model (output folder, seeding, resume from the last checkpoint, epochs, gradient
//! accumulation and optimizer steps, `metrics.jsonl`, checkpoints, best and last weights,
//! progress bars, the per-epoch log line), and a [`Task`] per kind of model that says how one
//! batch trains and how the model is scored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zoo_datasets::DataError;
use zoo_models::import::non_finite_parameters;

use crate::checkpoint::{self, Progress};
use crate::config::TrainConfig;
use crate::optimizer::{ParamGroups, adamw, lr_scheduler, optimizer_step, param_group};

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
    /// Set (by a Ctrl-C handler, say) to stop the run: the current optimizer step is finished,
    /// a checkpoint of the epoch so far is written, and [`run`] returns [`Interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
    /// Write `batches.jsonl` in the output folder: each epoch's image files in the order its
    /// batches take them (to train another implementation on the same batches, or to find the
    /// images of a batch whose loss stood out).
    pub record_batches: bool,
}

/// A run stopped by [`TrainOptions::stop`] after writing its checkpoint; `--resume` continues it
/// from the next batch.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted in epoch {epoch} after batch {batch}: checkpoint {} written; run again with --resume to continue",
    checkpoint.display()
)]
pub struct Interrupted {
    pub epoch: usize,
    pub batch: usize,
    pub checkpoint: PathBuf,
}

/// What differs between training a classifier and a detector: the model, its batches, its loss
/// and its validation. The engine does the rest.
pub trait Task {
    type Model: Module;
    /// A training batch on the host.
    type Batch;
    /// What one epoch's training steps add up.
    type Totals: EpochTotals;
    /// A validation result.
    type Eval;
    /// One epoch's line of `metrics.jsonl`.
    type Metrics: Serialize;

    fn config(&self) -> &TrainConfig;

    /// The model with its initial weights on `device` (seeded by the engine).
    fn init(&self, device: &Device) -> Result<Self::Model>;

    /// The parameters that train differently, as the model declares them.
    fn param_groups(&self, model: &Self::Model) -> ParamGroups;

    /// Loads the weights a fresh run starts from (`train.init_from`, ...), if any.
    fn load_initial(&self, model: Self::Model) -> Result<Self::Model>;

    fn load(model: Self::Model, path: &Path) -> Result<Self::Model>;

    fn save(model: &Self::Model, path: &Path) -> Result<()>;

    fn batches_per_epoch(&self) -> usize;

    /// The epoch's training batches from batch `first` on, in an order that follows from
    /// `(seed, epoch)`.
    fn batches(&self, epoch: usize, first: usize) -> Receiver<Result<Self::Batch, DataError>>;

    /// The image files of an epoch's training batches, in their order.
    fn epoch_files(&self, epoch: usize) -> Vec<PathBuf>;

    /// A seed for the device's generator before batch `batch` of `epoch` (for dropout), if the
    /// task reseeds it: a run resumed at any batch then draws what an uninterrupted one draws.
    fn batch_seed(&self, _epoch: usize, _batch: usize) -> Option<u64> {
        None
    }

    /// Forward and backward passes of one batch: adds its gradients, scaled for accumulation, to
    /// `step.grads` and its losses to `step.totals`.
    fn train_step(&self, model: &Self::Model, batch: Self::Batch, step: &mut Step<Self>) -> Result<()>;

    /// Validation of the model (without autodiff) on `device`.
    fn evaluate(&self, model: &Self::Model, device: &Device, quiet: bool) -> Result<Self::Eval>;

    /// The validation score that picks `best.bpk` (higher is better).
    fn score(eval: &Self::Eval) -> f64;

    fn metrics(trained: &Trained<Self::Totals>, eval: &Self::Eval) -> Self::Metrics;

    /// The line printed after each epoch.
    fn log_line(metrics: &Self::Metrics, epochs: usize) -> String;
}

/// Sums over an epoch's training batches (serialisable: an interrupted epoch's sums go into its
/// checkpoint).
pub trait EpochTotals: Default + Serialize + serde::de::DeserializeOwned {
    /// Images trained on.
    fn images(&self) -> usize;
    /// The epoch's mean training loss so far, as the progress bar shows it.
    fn loss(&self) -> f64;
}

/// One training batch of an epoch, as a task's step sees it.
pub struct Step<'a, T: Task + ?Sized> {
    /// The epoch and the batch in it, both from 0.
    pub epoch: usize,
    pub batch: usize,
    /// The autodiff device the model trains on.
    pub device: &'a Device,
    /// The gradients since the last optimizer step.
    pub grads: GradientsAccumulator<T::Model>,
    pub totals: T::Totals,
}

/// An epoch's training, for its metrics.
pub struct Trained<T> {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The base learning rate of the epoch's last optimizer step.
    pub lr: f64,
    pub totals: T,
    pub images_per_sec: f64,
    /// Training and validation.
    pub seconds: f64,
}

/// What a run leaves: its epochs' metrics and weights.
pub struct Run<T: Task> {
    pub epochs: Vec<T::Metrics>,
    pub best_score: f64,
    pub best_epoch: usize,
    pub output_dir: PathBuf,
    /// The weights of the best validation score and of the last epoch.
    pub best_model: PathBuf,
    pub last_model: PathBuf,
    /// The last epoch's validation.
    pub last_eval: Option<T::Eval>,
}

/// The error that stops a run whose loss or weights stopped being finite, naming the epoch and the
/// checkpoint to go back to.
fn diverged(output: &Path, epoch: usize, what: String) -> anyhow::Error {
    let last = match checkpoint::list(output).ok().and_then(|mut l| l.pop()) {
        Some(((done, _), dir)) => format!("the last checkpoint, {} (epoch {done}), is from before", dir.display()),
        None => "there is no checkpoint yet".into(),
    };
    anyhow::anyhow!(
        "training diverged in epoch {}: {what}; nothing of this epoch was saved and {last}; lower train.lr or \
         set train.grad_clip",
        epoch + 1
    )
}

/// `curves.png` beside `metrics.jsonl`: the run's loss, learning rate and score so far. A picture
/// that cannot be drawn is a warning, not the end of the run.
fn plot_curves(output: &Path) {
    let name = output.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let drawn = crate::plot::read_metrics(&output.join("metrics.jsonl"))
        .and_then(|epochs| crate::plot::plot(&[crate::plot::Curves { name, epochs }], &output.join("curves.png")));
    if let Err(e) = drawn {
        eprintln!("warning: {e:#}");
    }
}

pub fn progress_bar(len: usize, quiet: bool, prefix: String) -> ProgressBar {
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

/// Trains `task` on `device`, writing checkpoints, `metrics.jsonl`, `best.bpk` and `last.bpk`
/// under `train.output_dir`.
pub fn run<T: Task>(task: &T, device: &Device, opts: &TrainOptions) -> Result<Run<T>> {
    let cfg = task.config();
    let output = cfg.output_dir.clone();
    std::fs::create_dir_all(&output).with_context(|| format!("cannot create {}", output.display()))?;
    let _lock = checkpoint::lock_output(&output)?;
    checkpoint::remove_temporaries(&output)?;
    let train_device = device.clone().autodiff();
    // The initial weights follow from the seed, like the data order and augmentations.
    train_device.seed(cfg.seed);
    let mut model = task.init(&train_device)?;
    let batches = task.batches_per_epoch();
    let schedule = checkpoint::Schedule { batches_per_epoch: batches, grad_accum: cfg.grad_accum };
    let groups = task.param_groups(&model);
    let mut optim = adamw(cfg, &groups)?;
    let mut sched = lr_scheduler(cfg, &groups, schedule.steps_per_epoch())?;
    let mut progress = Progress { best_score: -1.0, ..Default::default() };

    let last_checkpoint = if opts.resume { checkpoint::list(&output)?.pop() } else { None };
    let mut resumed_totals = None;
    if let Some((_, dir)) = &last_checkpoint {
        (progress, optim) = checkpoint::restore(dir, optim, &mut sched, schedule, opts.quiet)?;
        model = T::load(model, &dir.join(checkpoint::MODEL))?;
        checkpoint::repair_best(&output, dir, &progress)?;
        if let Some(totals) = progress.partial_totals.take() {
            let read = serde_json::from_value(totals);
            resumed_totals =
                Some(read.with_context(|| format!("{}: partial_totals", dir.join(checkpoint::PROGRESS).display()))?);
        }
    } else {
        if opts.resume {
            eprintln!("warning: --resume, but {} holds no checkpoint: training from the start", output.display());
        }
        model = task.load_initial(model)?;
    }
    (progress.batches_per_epoch, progress.grad_accum) = (Some(batches), Some(cfg.grad_accum));
    if let Some(frozen) = &groups.frozen {
        model = model.set_require_grad_group(param_group(frozen)?, false);
    }

    checkpoint::trim_epochs(&output, "metrics.jsonl", progress.epoch)?;
    // An epoch resumed mid-way keeps the line of its batches.
    checkpoint::trim_epochs(&output, "batches.jsonl", progress.epoch + usize::from(progress.batch > 0))?;
    let mut metrics_file = checkpoint::epoch_file(&output, "metrics.jsonl")?;
    let mut batches_file = opts.record_batches.then(|| checkpoint::epoch_file(&output, "batches.jsonl")).transpose()?;
    let mut epochs = Vec::new();
    let mut last_eval = None;
    let last_epoch = opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs));
    let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
    for epoch in progress.epoch..last_epoch {
        // A checkpoint written mid-epoch resumes with the batch after it.
        let first = std::mem::take(&mut progress.batch);
        let started = Instant::now();
        let bar = progress_bar(batches, opts.quiet, format!("epoch {}/{}", epoch + 1, cfg.epochs));
        bar.set_position(first as u64);
        let mut step = Step::<T> {
            epoch,
            batch: first,
            device: &train_device,
            grads: GradientsAccumulator::new(),
            totals: resumed_totals.take().unwrap_or_default(),
        };
        // (A run resumed mid-epoch has its epoch's line already.)
        if let Some(file) = batches_file.as_mut()
            && first == 0
        {
            let line =
                serde_json::json!({"epoch": epoch + 1, "batch_size": cfg.batch_size, "files": task.epoch_files(epoch)});
            writeln!(file, "{line}")
                .with_context(|| format!("cannot write {}", output.join("batches.jsonl").display()))?;
        }
        let mut lr = 0.0;
        for (i, batch) in (first..).zip(task.batches(epoch, first)) {
            step.batch = i;
            if let Some(seed) = task.batch_seed(epoch, i) {
                train_device.seed(seed);
            }
            task.train_step(&model, batch?, &mut step)?;
            let loss = step.totals.loss();
            if !loss.is_finite() {
                bar.abandon();
                return Err(diverged(&output, epoch, format!("the training loss is {loss} at batch {}", i + 1)));
            }
            let stepped = (i + 1) % cfg.grad_accum == 0 || i + 1 == batches;
            if stepped {
                (model, lr) = optimizer_step(model, &mut optim, &mut sched, &mut step.grads, cfg.grad_clip);
                progress.step += 1;
            }
            bar.inc(1);
            bar.set_message(format!("loss {:.4} lr {lr:.2e}", step.totals.loss()));
            if stepped && i + 1 < batches && stop_requested() {
                bar.abandon();
                (progress.batch, progress.partial_totals) = (i + 1, Some(serde_json::to_value(&step.totals)?));
                let dir =
                    checkpoint::save_with_optimizer(&output, &mut progress, &optim, |path| T::save(&model, path))?;
                return Err(Interrupted { epoch: epoch + 1, batch: i + 1, checkpoint: dir }.into());
            }
        }
        bar.finish_and_clear();
        let not_finite = non_finite_parameters(&model.valid());
        if !not_finite.is_empty() {
            let which = format!("parameters hold NaN or infinite values ({})", not_finite.join(", "));
            return Err(diverged(&output, epoch, which));
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let eval = task.evaluate(&model.valid(), device, opts.quiet)?;
        (progress.epoch, progress.partial_totals) = (epoch + 1, None);
        let score = T::score(&eval);
        let improved = score > progress.best_score;
        if improved {
            (progress.best_score, progress.best_epoch) = (score, epoch + 1);
        }
        let trained = Trained {
            epoch: epoch + 1,
            lr,
            images_per_sec: step.totals.images() as f64 / train_seconds,
            totals: step.totals,
            seconds: started.elapsed().as_secs_f64(),
        };
        let m = T::metrics(&trained, &eval);
        writeln!(metrics_file, "{}", serde_json::to_string(&m)?)
            .with_context(|| format!("cannot write {}", output.join("metrics.jsonl").display()))?;
        if !opts.quiet {
            eprintln!("{}", T::log_line(&m, cfg.epochs));
        }
        plot_curves(&output);
        epochs.push(m);
        last_eval = Some(eval);
        // The checkpoint first, recording best.bpk's hash, then best.bpk copied from it: a run
        // stopped in between finds it out on resume and writes it again.
        let dir = checkpoint::save_with_optimizer(&output, &mut progress, &optim, |path| T::save(&model, path))?;
        if improved {
            checkpoint::export_best(&output, &dir)?;
        }
        if stop_requested() && epoch + 1 < last_epoch {
            return Err(Interrupted { epoch: epoch + 1, batch: batches, checkpoint: dir }.into());
        }
    }
    T::save(&model, &output.join("last.bpk"))?;
    Ok(Run {
        epochs,
        best_score: progress.best_score,
        best_epoch: progress.best_epoch,
        best_model: output.join(checkpoint::BEST),
        last_model: output.join("last.bpk"),
        output_dir: output,
        last_eval,
    })
}
