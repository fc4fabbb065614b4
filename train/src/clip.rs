//! Gradient clipping by the global L2 norm over every parameter, as
//! `torch.nn.utils.clip_grad_norm_` (DETR clips at 0.1, timm's `--clip-grad` the same way).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales `grads` by `max_norm / (norm + 1e-6)` when that is below 1, `norm` being the L2 norm of
/// all of `module`'s gradients together; returns `norm` (before clipping).
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut squared = SquaredNorm { grads, total: None };
    module.visit(&mut squared);
    let Some(total) = squared.total else { return 0.0 };
    let norm = total.into_scalar::<f64>().sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        module.visit(&mut Scale { grads, factor: coef });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    /// The clipped gradients have the asked norm and keep their direction.
    #[test]
    fn clips_the_global_norm() {
        let device = Device::flex().autodiff();
        let layer: Linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], &device);
        let loss = layer.forward(x).sum() * 10.0;
        let mut grads = GradientsParams::from_grads(loss.backward(), &layer);
        let before: Vec<f32> = grads.get::<2>(layer.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let norm = clip_grad_norm(&layer, &mut grads, 0.5);
        // d(sum)/dW = column sums of x per output row, times 10; d/db = 2 * 10 per output.
        let expected = (2.0 * (50f64.powi(2) + 30f64.powi(2) + 30f64.powi(2)) + 2.0 * 20f64.powi(2)).sqrt();
        assert!((norm - expected).abs() < 1e-3, "{norm} vs {expected}");
        let after: Vec<f32> = grads.get::<2>(layer.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let bias: Vec<f32> =
            grads.get::<1>(layer.bias.as_ref().unwrap().id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let new_norm: f64 = after.iter().chain(&bias).map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((new_norm - 0.5).abs() < 1e-4, "{new_norm}");
        for (a, b) in after.iter().zip(&before) {
            assert!((*a as f64 - *b as f64 * 0.5 / expected).abs() < 1e-5);
        }
    }
}
