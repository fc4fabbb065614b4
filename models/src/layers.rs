//! Pieces shared by the transformers: the GELU MLP and multi-head attention over projections.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

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
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// `[B, N, heads * d]` -> `[B, heads, N, d]`.
fn split_heads(x: Tensor<3>, num_heads: usize) -> Tensor<4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, num_heads, c / num_heads]).swap_dims(1, 2)
}

/// Scaled dot-product attention of already projected queries `[B, Nq, C]`, keys and values
/// `[B, Nk, C]`, split into `num_heads` heads of `C / num_heads` channels, scale `d^-1/2`.
/// `key_padding_mask` `[B, Nk]` is true where a key must be ignored. Returns `[B, Nq, C]`.
pub fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    num_heads: usize,
    key_padding_mask: Option<Tensor<2, Bool>>,
) -> Tensor<3> {
    let [b, nq, c] = q.dims();
    let nk = k.dims()[1];
    let mask = key_padding_mask
        .map(|m| m.reshape([b, 1, 1, nk]).expand([b, num_heads, nq, nk]));
    let out = attention(
        split_heads(q, num_heads),
        split_heads(k, num_heads),
        split_heads(v, num_heads),
        mask,
        None,
        AttentionModuleOptions::default(),
    );
    out.swap_dims(1, 2).reshape([b, nq, c])
}
