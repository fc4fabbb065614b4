//! Pieces shared by the transformers: the GELU MLP and timm's initialisation.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::ops::{gelu, linear};

/// timm's `Mlp`: `fc2(GELU(fc1(x)))`, GELU with erf.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// timm's initialisation of transformer weights: N(0, 0.02).
pub fn timm_init() -> Initializer {
    Initializer::Normal { mean: 0.0, std: 0.02 }
}

/// A linear layer initialised as timm initialises transformers.
pub fn timm_linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(bias).with_initializer(timm_init()).init(device)
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self { fc1: timm_linear(dim, hidden, true, device), fc2: timm_linear(hidden, dim, true, device) }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(&self.fc2, gelu(linear(&self.fc1, x)))
    }
}
