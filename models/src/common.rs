//! What the ViT-family models (ViT, TNT) share in their configs: the pooling before the head,
//! the serde defaults and the patch-grid check.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// How the token sequence `[B, 1 + N, D]` (class token first) becomes one feature vector before
/// the head, as timm's `global_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPool {
    /// The class token.
    Token,
    /// The mean of the patch tokens (the class token left out).
    Avg,
}

impl GlobalPool {
    /// `[B, 1 + N, D]` -> `[B, D]`.
    pub fn pool(self, tokens: Tensor<3>) -> Tensor<2> {
        let [b, n, d] = tokens.dims();
        match self {
            GlobalPool::Token => tokens.slice(s![.., 0..1]).reshape([b, d]),
            GlobalPool::Avg => tokens.slice(s![.., 1..n]).mean_dim(1).reshape([b, d]),
        }
    }
}

/// Defaults of the model configs' fields (serde needs them as functions).
pub(crate) mod defaults {
    use super::GlobalPool;

    /// RGB input.
    pub fn in_channels() -> usize {
        3
    }
    /// The MLP's hidden width over its input width.
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn global_pool() -> GlobalPool {
        GlobalPool::Token
    }
    pub fn qkv_bias() -> bool {
        true
    }
}

/// The image must cut into whole patches.
pub(crate) fn check_patch_grid(image_size: usize, patch_size: usize) -> Result<(), String> {
    if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err(format!(
            "model.image_size = {image_size} must be a positive multiple of model.patch_size = {patch_size}"
        ));
    }
    Ok(())
}
