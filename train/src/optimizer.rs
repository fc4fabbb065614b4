//! AdamW with parameter groups, the learning-rate schedule per optimizer step, and one optimizer
//! step over accumulated gradients with the global gradient norm clipped.

use anyhow::Result;
use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::lr_scheduler::step::StepLrSchedulerConfig;
use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, ModuleOptimizer};

use crate::clip::clip_grad_norm;
use crate::config::TrainConfig;

/// Parameters that train differently from the rest, each a regex over parameter paths that the
/// model declares (e.g. `Classifier::no_weight_decay`, `Detr::backbone_params`).
#[derive(Debug, Clone, Default)]
pub struct ParamGroups {
    /// Trained without weight decay.
    pub no_weight_decay: Option<String>,
    /// Trained with their own peak learning rate, on the same schedule.
    pub lr: Vec<(String, f64)>,
    /// Not trained at all.
    pub frozen: Option<String>,
}

/// The parameters whose paths match `regex`.
pub fn param_group(regex: &str) -> Result<ParamGroup> {
    ParamGroup::from_regex(regex).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// AdamW (PyTorch's epsilon) with the config's weight decay, none on `groups.no_weight_decay`.
pub fn adamw(cfg: &TrainConfig, groups: &ParamGroups) -> Result<ModuleOptimizer> {
    let adamw = |wd: f64| AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(wd as f32);
    let optim = adamw(cfg.weight_decay).init();
    Ok(match &groups.no_weight_decay {
        Some(regex) => optim.with_group(param_group(regex)?, adamw(0.0).build(), None),
        None => optim,
    })
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

/// The config's schedule at `train.lr`, and at their own peak for `groups.lr`.
pub fn lr_scheduler(cfg: &TrainConfig, groups: &ParamGroups, steps_per_epoch: usize) -> Result<ModuleLrScheduler> {
    let mut sched = ModuleLrSchedulerConfig::new(schedule(cfg, cfg.lr, steps_per_epoch));
    for (regex, lr) in &groups.lr {
        sched = sched.with_group(param_group(regex)?, schedule(cfg, *lr, steps_per_epoch));
    }
    sched.init().map_err(|e| anyhow::anyhow!("learning-rate schedule: {e}"))
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
