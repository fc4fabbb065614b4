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
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsAccumulator, LearningRate, ModuleOptimizer,
    Optimizer,
};
use burn::prelude::*;
use zoo_models::ops::{AdamWStep, adamw_update};

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
    let optim = ModuleOptimizer::from(FusedAdamW::new(cfg.weight_decay as f32, 1e-8));
    Ok(match &groups.no_weight_decay {
        Some(regex) => optim.with_group(param_group(regex)?, FusedAdamW::new(0.0, 1e-8), None),
        None => optim,
    })
}

/// AdamW (betas 0.9, 0.999) that steps each float32 parameter on flex in one multi-threaded pass
/// ([`adamw_update`]) instead of Burn's dozen single-threaded tensor ops, with the same
/// arithmetic, and with Burn's `AdamW` everywhere else. Its state is Burn's, so checkpoints load
/// into either.
#[derive(Clone)]
pub struct FusedAdamW {
    weight_decay: f32,
    epsilon: f32,
    burn: AdamW,
}

impl FusedAdamW {
    const BETAS: (f32, f32) = (0.9, 0.999);

    pub fn new(weight_decay: f32, epsilon: f32) -> Self {
        let (beta_1, beta_2) = Self::BETAS;
        let config = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay);
        Self { weight_decay, epsilon, burn: config.build() }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, Option<AdamWState<D>>) {
        let moments = state.as_ref().map(|s| (s.momentum.moment_1.clone(), s.momentum.moment_2.clone()));
        let time = state.as_ref().map_or(0, |s| s.momentum.time) + 1;
        let (beta_1, beta_2) = Self::BETAS;
        let step = AdamWStep { lr, beta_1, beta_2, epsilon: self.epsilon, weight_decay: self.weight_decay, time };
        match adamw_update((tensor, grad, moments), &step) {
            Ok((tensor, m, v)) => (tensor, Some(AdamWState::new(AdaptiveMomentumState::new(time, m, v)))),
            Err((tensor, grad, _)) => self.burn.step(lr, tensor, grad, state),
        }
    }

    fn to_device<const D: usize>(state: AdamWState<D>, device: &Device) -> AdamWState<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;

    /// Three steps of a linear layer with each optimizer from the same start: the fused pass
    /// gives Burn's AdamW's parameters, with and without weight decay.
    #[test]
    fn fused_adamw_steps_as_burns_adamw() {
        let device = Device::flex().autodiff();
        let start = LinearConfig::new(300, 70).init(&device);
        let x = Tensor::<2>::random([9, 300], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        for weight_decay in [0.0, 0.05] {
            let burn_adamw = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(weight_decay).init();
            let mut results = Vec::new();
            for mut optim in [ModuleOptimizer::from(FusedAdamW::new(weight_decay, 1e-8)), burn_adamw] {
                let mut model: Linear = start.clone();
                for step in 0..3 {
                    let loss = (model.forward(x.clone()).powf_scalar(2.0) * (step + 1) as f32).mean();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(1e-2, model, grads);
                }
                let read = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
                results.push(read(model.weight.val()));
            }
            let initial = start.weight.val().into_data().try_into_vec::<f32>().unwrap();
            assert!(
                results[0].iter().zip(&initial).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) > 1e-3,
                "the steps moved the weights"
            );
            for (a, b) in results[0].iter().zip(&results[1]) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-2), "weight decay {weight_decay}: {a} vs {b}");
            }
        }
    }
}
