//! What the ViT-family models (ViT, TNT) share in their configs: the pooling before the head,
//! the serde defaults and the checks of their sizes.

use std::ops::Bound;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::check;

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
    /// How many leading tokens [`GlobalPool::pool`] reads, if not all of them.
    pub fn rows_read(self) -> Option<usize> {
        match self {
            GlobalPool::Token => Some(1),
            GlobalPool::Avg => None,
        }
    }

    /// `[B, 1 + N, D]` -> `[B, D]`.
    pub fn pool(self, tokens: Tensor<3>) -> Tensor<2> {
        let [b, n, d] = tokens.dims();
        match self {
            GlobalPool::Token => tokens.slice(s![.., 0..1]).reshape([b, d]),
            GlobalPool::Avg => tokens.slice(s![.., 1..n]).mean_dim(1).reshape([b, d]),
        }
    }
}

/// The first `rows` tokens of `x` `[B, N, D]` (`x` itself when that is all of them, so that no
/// slice enters the autodiff graph).
pub fn first_rows(x: Tensor<3>, rows: usize) -> Tensor<3> {
    if rows == x.dims()[1] { x } else { x.slice(s![.., 0..rows]) }
}

/// How many of `tokens` block `i` of `depth` computes: all of them, but only the first
/// `last_rows` in the last block when given.
pub fn block_rows(i: usize, depth: usize, tokens: usize, last_rows: Option<usize>) -> usize {
    if i + 1 == depth { last_rows.unwrap_or(tokens) } else { tokens }
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

/// Upper bounds of the ViT-family sizes: far beyond every published model, small enough that a
/// config cannot ask for more memory than a machine holds.
pub(crate) const MAX_IMAGE_SIZE: usize = 4096;
pub(crate) const MAX_WIDTH: usize = 16384;
pub(crate) const MAX_DEPTH: usize = 256;
pub(crate) const MAX_CLASSES: usize = 1 << 20;
/// Patches per image (attention is quadratic in them): a 2048-pixel image in 16-pixel patches.
pub(crate) const MAX_PATCHES: usize = 16384;

/// The input: `image_size`, `patch_size` and `in_channels`; returns the patches per side.
pub(crate) fn check_input(image_size: usize, patch_size: usize, in_channels: usize) -> Result<usize, String> {
    check::count("model.image_size", image_size, MAX_IMAGE_SIZE)?;
    check::count("model.in_channels", in_channels, 64)?;
    if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err(format!(
            "model.image_size = {image_size} must be a positive multiple of model.patch_size = {patch_size}"
        ));
    }
    let grid = image_size / patch_size;
    if grid * grid > MAX_PATCHES {
        return Err(format!(
            "model.image_size = {image_size} in patches of model.patch_size = {patch_size} makes {} patches, more \
             than the {MAX_PATCHES} attention can hold",
            grid * grid
        ));
    }
    Ok(grid)
}

/// A token width `dim_field = dim` split over `heads_field = heads` attention heads.
pub(crate) fn check_heads(dim_field: &str, dim: usize, heads_field: &str, heads: usize) -> Result<(), String> {
    check::count(dim_field, dim, MAX_WIDTH)?;
    check::count(heads_field, heads, dim)?;
    if !dim.is_multiple_of(heads) {
        return Err(format!("{dim_field} = {dim} must be divisible by {heads_field} = {heads}"));
    }
    Ok(())
}

/// `model.mlp_ratio` must give the MLP of `dim_field = dim` a hidden width of at least 1.
pub(crate) fn check_mlp_ratio(mlp_ratio: f64, dim_field: &str, dim: usize) -> Result<(), String> {
    check::number("model.mlp_ratio", mlp_ratio, (Bound::Excluded(0.0), Bound::Included(64.0)))?;
    if mlp_hidden(dim, mlp_ratio) == 0 {
        return Err(format!("model.mlp_ratio = {mlp_ratio} gives the MLP of {dim_field} = {dim} no hidden units"));
    }
    Ok(())
}

/// The hidden width of an MLP over `dim` features, as timm computes it.
pub(crate) fn mlp_hidden(dim: usize, mlp_ratio: f64) -> usize {
    (dim as f64 * mlp_ratio) as usize
}

/// Depth, classes and the layer norms' epsilon.
pub(crate) fn check_depth_classes_eps(depth: usize, num_classes: usize, layer_norm_eps: f64) -> Result<(), String> {
    check::count("model.depth", depth, MAX_DEPTH)?;
    check::count("model.num_classes", num_classes, MAX_CLASSES)?;
    check::number("model.layer_norm_eps", layer_norm_eps, (Bound::Excluded(0.0), Bound::Included(1.0)))
}
