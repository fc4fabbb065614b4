//! Pieces shared by the transformers: the GELU MLP and multi-head attention over projections.

use burn::nn::{Linear, LinearConfig};
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

impl Mlp {
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(dim, hidden).init(device),
            fc2: LinearConfig::new(hidden, dim).init(device),
        }
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
