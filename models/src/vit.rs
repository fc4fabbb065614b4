//! Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021) in the layout of
//! timm's `VisionTransformer`, so that timm checkpoints load by name.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::check;
use crate::common::{
    GlobalPool, block_rows, check_depth_classes_eps, check_heads, check_input, check_mlp_ratio, defaults, first_rows,
    mlp_hidden,
};
use crate::import::{Checkpoint, Tensors};
use crate::layers::{Mlp, timm_init, timm_linear};
use crate::ops::{AttentionMaps, attend, conv2d, layer_norm, linear};
use crate::resample::fit_pos_embed;

/// A ViT family member: Ti/16 is `embed_dim 192, num_heads 3`, S/16 `384, 6`, B/16 `768, 12`,
/// L/16 `1024, 16, depth 24`; `/32` variants set `patch_size = 32`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "defaults::qkv_bias")]
    pub qkv_bias: bool,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The class token after the final `norm` (`token`), or the mean of the patch tokens, then
    /// `fc_norm` (`avg`; timm has no final `norm` in this mode).
    #[serde(default = "defaults::global_pool")]
    pub global_pool: GlobalPool,
}

/// timm's ViTs use LayerNorm with eps 1e-6.
fn default_layer_norm_eps() -> f64 {
    1e-6
}

impl VitConfig {
    /// Checks the hyper-parameters; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let grid = check_input(self.image_size, self.patch_size, self.in_channels)?;
        check_heads("model.embed_dim", self.embed_dim, "model.num_heads", self.num_heads)?;
        check_mlp_ratio(self.mlp_ratio, "model.embed_dim", self.embed_dim)?;
        check_depth_classes_eps(self.depth, self.num_classes, self.layer_norm_eps)?;
        // Per block: qkv and proj (4 d^2), the MLP (2 d h); then the patch embedding, the
        // position embedding and the head.
        let (d, h) = (self.embed_dim as f64, mlp_hidden(self.embed_dim, self.mlp_ratio) as f64);
        let patch = (self.patch_size * self.patch_size * self.in_channels) as f64;
        check::parameters(
            self.depth as f64 * (4.0 * d * d + 2.0 * d * h)
                + (patch + (grid * grid + 1) as f64 + self.num_classes as f64) * d,
        )
    }

    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn init(&self, device: &Device) -> Vit {
        let d = self.embed_dim;
        let norm = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let num_tokens = 1 + self.grid_size() * self.grid_size();
        let trunc = timm_init();
        let (final_norm, fc_norm) = match self.global_pool {
            GlobalPool::Token => (Some(norm()), None),
            GlobalPool::Avg => (None, Some(norm())),
        };
        Vit {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_channels, d], [self.patch_size; 2])
                    .with_stride([self.patch_size; 2])
                    .init(device),
            },
            cls_token: trunc.init([1, 1, d], device),
            pos_embed: trunc.init([1, num_tokens, d], device),
            blocks: (0..self.depth)
                .map(|_| Block {
                    norm1: norm(),
                    attn: Attention {
                        qkv: timm_linear(d, 3 * d, self.qkv_bias, device),
                        proj: timm_linear(d, d, true, device),
                        num_heads: self.num_heads,
                    },
                    norm2: norm(),
                    mlp: Mlp::new(d, mlp_hidden(d, self.mlp_ratio), device),
                })
                .collect(),
            norm: final_norm,
            fc_norm,
            head: timm_linear(d, self.num_classes, true, device),
            global_pool: self.global_pool,
        }
    }
}

/// Non-overlapping patches projected by a strided convolution.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// `[B, C, H, W]` -> `[B, (H/p)*(W/p), D]`, patches in row-major order.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        conv2d(&self.proj, images).flatten::<3>(2, 3).swap_dims(1, 2)
    }
}

/// Self-attention with one fused `qkv` projection (rows: all of q, then k, then v).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    /// The outputs of the first `rows` tokens, every token a key and a value. With `maps`, the
    /// probabilities are recorded as `attn`.
    pub fn forward(&self, x: Tensor<3>, rows: usize, maps: Option<&AttentionMaps>) -> Tensor<3> {
        let [_, _, d] = x.dims();
        let qkv = linear(&self.qkv, x);
        let q = first_rows(qkv.clone(), rows).slice(s![.., .., 0..d]);
        let k = qkv.clone().slice(s![.., .., d..2 * d]);
        let v = qkv.slice(s![.., .., 2 * d..3 * d]);
        linear(&self.proj, attend((q, k, v, None), self.num_heads, maps.map(|m| (m, "attn"))))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    /// The block's output for the first `rows` tokens (all of them: `x.dims()[1]`).
    pub fn forward(&self, x: Tensor<3>, rows: usize, maps: Option<&AttentionMaps>) -> Tensor<3> {
        let x = first_rows(x.clone(), rows) + self.attn.forward(layer_norm(&self.norm1, x), rows, maps);
        x.clone() + self.mlp.forward(layer_norm(&self.norm2, x))
    }
}

#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: Option<LayerNorm>,
    pub fc_norm: Option<LayerNorm>,
    pub head: Linear,
    #[module(skip)]
    pub global_pool: GlobalPool,
}

impl Vit {
    /// Parameters trained without weight decay, as a regex over parameter paths (timm's
    /// `no_weight_decay()`, with every bias and norm): biases, norm scales and shifts, the class
    /// token and the position embedding.
    pub fn no_weight_decay() -> &'static str {
        r"(\.bias|\.gamma|\.beta|cls_token|pos_embed)$"
    }

    /// The classifier, left at its initialisation when fine-tuning to another number of classes.
    pub fn classifier_head() -> &'static str {
        "head"
    }

    /// timm's `forward_features`: the token sequence after the last block and the final norm,
    /// `[B, 1 + N, D]`.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<3> {
        self.forward_features_recording(images, None)
    }

    /// [`Vit::forward_features`], recording every block's attention probabilities in `maps`
    /// (`attn`, `[B, heads, 1 + N, 1 + N]`) when given.
    pub fn forward_features_recording(&self, images: Tensor<4>, maps: Option<&AttentionMaps>) -> Tensor<3> {
        self.features(images, None, maps)
    }

    /// The tokens after the final norm; with `last_rows`, the last block computes only the
    /// first `last_rows` of them.
    fn features(&self, images: Tensor<4>, last_rows: Option<usize>, maps: Option<&AttentionMaps>) -> Tensor<3> {
        let patches = self.patch_embed.forward(images);
        let [b, n, d] = patches.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, patches], 1) + self.pos_embed.val();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, block_rows(i, self.blocks.len(), n + 1, last_rows), maps);
        }
        match &self.norm {
            Some(norm) => layer_norm(norm, x),
            None => x,
        }
    }

    /// timm's `forward_head`: pools the tokens of [`Vit::forward_features`] (then `fc_norm`,
    /// if any) to `[B, D]` and applies the head, `[B, num_classes]`; with `pre_logits` it stops
    /// before the head.
    pub fn forward_head(&self, tokens: Tensor<3>, pre_logits: bool) -> Tensor<2> {
        let pooled = self.global_pool.pool(tokens);
        let pooled = match &self.fc_norm {
            Some(fc_norm) => layer_norm(fc_norm, pooled),
            None => pooled,
        };
        if pre_logits { pooled } else { linear(&self.head, pooled) }
    }

    /// Class logits `[B, num_classes]` for normalised images `[B, C, H, W]`: timm's, except that
    /// the last block computes only the tokens the pooling reads (with `token` pooling, the class
    /// token: the others would be discarded; it still attends to all of them). For ViT-B/16
    /// that skips 6% of the multiply-adds.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.features(images, self.global_pool.rows_read(), None), false)
    }
}

impl Checkpoint for Vit {
    /// timm names match the module's; only a `pos_embed` of another grid size needs resampling.
    fn adapt_checkpoint(&self, mut tensors: Tensors) -> Result<Tensors, String> {
        fit_pos_embed(&mut tensors, "pos_embed", self.pos_embed.dims())?;
        Ok(tensors)
    }
}
