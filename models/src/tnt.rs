//! Transformer in Transformer (Han et al., "Transformer in Transformer", NeurIPS 2021) in the
//! layout of timm's `TNT` (the official one), so that timm checkpoints load by name.
//!
//! Each 16x16 patch is itself a sequence of 4x4 "pixel" tokens (inner dim 24 for TNT-S) made by a
//! 7x7 stride-4 convolution applied to the patch alone. Every block runs an inner transformer
//! on the pixel tokens, adds their projection to the patch tokens, then an outer transformer.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::check;
use crate::common::{
    GlobalPool, block_rows, check_depth_classes_eps, check_heads, check_input, check_mlp_ratio, defaults, first_rows,
    mlp_hidden,
};
use crate::import::{Checkpoint, Tensors};
use crate::layers::{Mlp, timm_init, timm_linear};
use crate::ops::{AttentionMaps, Record, attend, conv2d, layer_norm, linear};
use crate::resample::fit_pos_embed;

/// TNT-S is `embed_dim 384, inner_dim 24, depth 12, num_heads_outer 6, num_heads_inner 4`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TntConfig {
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    pub num_classes: usize,
    /// Patch (outer) token width.
    pub embed_dim: usize,
    /// Pixel (inner) token width.
    pub inner_dim: usize,
    pub depth: usize,
    pub num_heads_inner: usize,
    pub num_heads_outer: usize,
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub qkv_bias: bool,
    /// Stride of the pixel embedding convolution inside each patch.
    #[serde(default = "default_first_stride")]
    pub first_stride: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::global_pool")]
    pub global_pool: GlobalPool,
}

/// TNT-S: 4x4 pixel tokens per 16x16 patch.
fn default_first_stride() -> usize {
    4
}
/// TNT keeps PyTorch's LayerNorm eps.
fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl TntConfig {
    /// Checks the hyper-parameters; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let grid = check_input(self.image_size, self.patch_size, self.in_channels)?;
        check::count("model.first_stride", self.first_stride, self.patch_size)?;
        check_heads("model.embed_dim", self.embed_dim, "model.num_heads_outer", self.num_heads_outer)?;
        check_heads("model.inner_dim", self.inner_dim, "model.num_heads_inner", self.num_heads_inner)?;
        check_mlp_ratio(self.mlp_ratio, "model.embed_dim", self.embed_dim)?;
        check_depth_classes_eps(self.depth, self.num_classes, self.layer_norm_eps)?;
        // Per block: the inner transformer (12 di^2 with its 4x MLP), the projection of a patch's
        // pixel tokens (p di d) and the outer transformer (4 d^2 + 2 d h).
        let (d, di) = (self.embed_dim as f64, self.inner_dim as f64);
        let h = mlp_hidden(self.embed_dim, self.mlp_ratio) as f64;
        let pixels = (self.pixel_grid() * self.pixel_grid()) as f64;
        check::parameters(
            (self.depth + 1) as f64 * (12.0 * di * di + pixels * di * d + 4.0 * d * d + 2.0 * d * h)
                + ((grid * grid + 1) as f64 + self.num_classes as f64) * d,
        )
    }

    /// Pixel tokens per patch side: ceil(patch / stride).
    fn pixel_grid(&self) -> usize {
        self.patch_size.div_ceil(self.first_stride)
    }

    pub fn init(&self, device: &Device) -> Tnt {
        let (d, di) = (self.embed_dim, self.inner_dim);
        let norm = |dim: usize| LayerNormConfig::new(dim).with_epsilon(self.layer_norm_eps).init(device);
        let attention = |dim: usize, heads: usize| TntAttention {
            qk: timm_linear(dim, 2 * dim, self.qkv_bias, device),
            v: timm_linear(dim, dim, self.qkv_bias, device),
            proj: timm_linear(dim, dim, true, device),
            num_heads: heads,
        };
        let num_pixel = self.pixel_grid() * self.pixel_grid();
        let grid = self.image_size / self.patch_size;
        let trunc = timm_init();
        Tnt {
            pixel_embed: PixelEmbed {
                proj: Conv2dConfig::new([self.in_channels, di], [7, 7])
                    .with_stride([self.first_stride; 2])
                    .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                    .init(device),
                patch_size: self.patch_size,
            },
            norm1_proj: norm(num_pixel * di),
            proj: timm_linear(num_pixel * di, d, true, device),
            norm2_proj: norm(d),
            cls_token: trunc.init([1, 1, d], device),
            patch_pos: trunc.init([1, 1 + grid * grid, d], device),
            pixel_pos: trunc.init([1, di, self.pixel_grid(), self.pixel_grid()], device),
            blocks: (0..self.depth)
                .map(|_| TntBlock {
                    norm_in: norm(di),
                    attn_in: attention(di, self.num_heads_inner),
                    norm_mlp_in: norm(di),
                    mlp_in: Mlp::new(di, 4 * di, device),
                    norm1_proj: norm(num_pixel * di),
                    proj: timm_linear(num_pixel * di, d, false, device),
                    norm2_proj: norm(d),
                    norm_out: norm(d),
                    attn_out: attention(d, self.num_heads_outer),
                    norm_mlp: norm(d),
                    mlp: Mlp::new(d, mlp_hidden(d, self.mlp_ratio), device),
                })
                .collect(),
            norm: norm(d),
            head: timm_linear(d, self.num_classes, true, device),
            global_pool: self.global_pool,
        }
    }
}

/// TNT's attention: queries and keys from one `qk` projection, values from their own `v`.
#[derive(Module, Debug)]
pub struct TntAttention {
    pub qk: Linear,
    pub v: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl TntAttention {
    /// The outputs of the first `rows` tokens, every token a key and a value.
    pub fn forward(&self, x: Tensor<3>, rows: usize, record: Record) -> Tensor<3> {
        let [_, _, d] = x.dims();
        let qk = linear(&self.qk, x.clone());
        let q = first_rows(qk.clone(), rows).slice(s![.., .., 0..d]);
        let k = qk.slice(s![.., .., d..2 * d]);
        linear(&self.proj, attend((q, k, linear(&self.v, x), None), self.num_heads, record))
    }
}

/// Cuts the image into patches and embeds each patch's pixels on their own.
#[derive(Module, Debug)]
pub struct PixelEmbed {
    pub proj: Conv2d,
    pub patch_size: usize,
}

impl PixelEmbed {
    /// `[B, C, H, W]` -> pixel tokens `[B * patches, pixels per patch, inner_dim]`, patches in
    /// row-major order and pixels row-major inside each patch (as `nn.Unfold` orders them).
    pub fn forward(&self, images: Tensor<4>, pixel_pos: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = images.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b * gh * gw, c, p, p]);
        let x = conv2d(&self.proj, patches) + pixel_pos;
        let [n, di, ph, pw] = x.dims();
        x.reshape([n, di, ph * pw]).swap_dims(1, 2)
    }
}

/// Inner transformer on pixel tokens, their projection added to the patch tokens, outer
/// transformer on the patch tokens. Pre-norm throughout.
#[derive(Module, Debug)]
pub struct TntBlock {
    pub norm_in: LayerNorm,
    pub attn_in: TntAttention,
    pub norm_mlp_in: LayerNorm,
    pub mlp_in: Mlp,
    pub norm1_proj: LayerNorm,
    pub proj: Linear,
    pub norm2_proj: LayerNorm,
    pub norm_out: LayerNorm,
    pub attn_out: TntAttention,
    pub norm_mlp: LayerNorm,
    pub mlp: Mlp,
}

impl TntBlock {
    /// The new pixel tokens and the first `rows` patch tokens (all of them: `1 + patches`). With
    /// `maps`, the inner attention's probabilities are recorded as `inner_attn`
    /// (`[B * patches, heads, pixels, pixels]`), the outer one's as `attn`.
    pub fn forward(
        &self,
        pixels: Tensor<3>,
        patches: Tensor<3>,
        rows: usize,
        maps: Option<&AttentionMaps>,
    ) -> (Tensor<3>, Tensor<3>) {
        let np = pixels.dims()[1];
        let inner =
            self.attn_in.forward(layer_norm(&self.norm_in, pixels.clone()), np, maps.map(|m| (m, "inner_attn")));
        let pixels = pixels + inner;
        let pixels = pixels.clone() + self.mlp_in.forward(layer_norm(&self.norm_mlp_in, pixels));
        let [b, n, d] = patches.dims();
        let flat = pixels.clone().reshape([b, n - 1, pixels.dims()[1] * pixels.dims()[2]]);
        let link = layer_norm(&self.norm2_proj, linear(&self.proj, layer_norm(&self.norm1_proj, flat)));
        // The class token (index 0) receives nothing from the pixels.
        let link = Tensor::cat(vec![Tensor::zeros([b, 1, d], &link.device()), link], 1);
        let patches = patches + link;
        let attended =
            self.attn_out.forward(layer_norm(&self.norm_out, patches.clone()), rows, maps.map(|m| (m, "attn")));
        let patches = first_rows(patches, rows) + attended;
        let patches = patches.clone() + self.mlp.forward(layer_norm(&self.norm_mlp, patches));
        (pixels, patches)
    }
}

#[derive(Module, Debug)]
pub struct Tnt {
    pub pixel_embed: PixelEmbed,
    pub norm1_proj: LayerNorm,
    pub proj: Linear,
    pub norm2_proj: LayerNorm,
    pub cls_token: Param<Tensor<3>>,
    pub patch_pos: Param<Tensor<3>>,
    pub pixel_pos: Param<Tensor<4>>,
    pub blocks: Vec<TntBlock>,
    pub norm: LayerNorm,
    pub head: Linear,
    #[module(skip)]
    pub global_pool: GlobalPool,
}

impl Tnt {
    /// Parameters trained without weight decay, as a regex over parameter paths (timm's
    /// `no_weight_decay()`, with every bias and norm): biases, norm scales and shifts, the class
    /// token and both position embeddings.
    pub fn no_weight_decay() -> &'static str {
        r"(\.bias|\.gamma|\.beta|cls_token|patch_pos|pixel_pos)$"
    }

    /// The classifier, left at its initialisation when fine-tuning to another number of classes.
    pub fn classifier_head() -> &'static str {
        "head"
    }

    /// timm's `forward_features`: the patch tokens after the last block and the final norm,
    /// `[B, 1 + N, D]`.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<3> {
        self.forward_features_recording(images, None)
    }

    /// [`Tnt::forward_features`], recording every block's attention probabilities in `maps`
    /// (`attn` for the outer, `inner_attn` for the inner transformer) when given.
    pub fn forward_features_recording(&self, images: Tensor<4>, maps: Option<&AttentionMaps>) -> Tensor<3> {
        self.features(images, None, maps)
    }

    /// The patch tokens after the final norm; with `last_rows`, the last block computes only
    /// the first `last_rows` of them.
    fn features(&self, images: Tensor<4>, last_rows: Option<usize>, maps: Option<&AttentionMaps>) -> Tensor<3> {
        let b = images.dims()[0];
        let mut pixels = self.pixel_embed.forward(images, self.pixel_pos.val());
        let [bn, np, di] = pixels.dims();
        let n = bn / b;
        let patches = pixels.clone().reshape([b, n, np * di]);
        let patches = layer_norm(&self.norm2_proj, linear(&self.proj, layer_norm(&self.norm1_proj, patches)));
        let d = patches.dims()[2];
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut patches = Tensor::cat(vec![cls, patches], 1) + self.patch_pos.val();
        for (i, block) in self.blocks.iter().enumerate() {
            (pixels, patches) =
                block.forward(pixels, patches, block_rows(i, self.blocks.len(), n + 1, last_rows), maps);
        }
        layer_norm(&self.norm, patches)
    }

    /// timm's `forward_head`: pools the tokens of [`Tnt::forward_features`] to `[B, D]` and
    /// applies the head, `[B, num_classes]`; with `pre_logits` it stops before the head.
    pub fn forward_head(&self, tokens: Tensor<3>, pre_logits: bool) -> Tensor<2> {
        let pooled = self.global_pool.pool(tokens);
        if pre_logits { pooled } else { linear(&self.head, pooled) }
    }

    /// Class logits `[B, num_classes]` for normalised images `[B, C, H, W]`: timm's, except that
    /// the last block's outer transformer computes only the tokens the pooling reads (as
    /// [`crate::vit::Vit::forward`]).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.features(images, self.global_pool.rows_read(), None), false)
    }
}

/// Names of the original Huawei release, as timm's `checkpoint_filter_fn` translates them.
const HUAWEI_NAMES: [(&str, &str); 13] = [
    ("outer_pos", "patch_pos"),
    ("inner_pos", "pixel_pos"),
    ("patch_embed", "pixel_embed"),
    ("proj_norm1", "norm1_proj"),
    ("proj_norm2", "norm2_proj"),
    ("inner_norm1", "norm_in"),
    ("inner_attn", "attn_in"),
    ("inner_norm2", "norm_mlp_in"),
    ("inner_mlp", "mlp_in"),
    ("outer_norm1", "norm_out"),
    ("outer_attn", "attn_out"),
    ("outer_norm2", "norm_mlp"),
    ("outer_mlp", "mlp"),
];

impl Checkpoint for Tnt {
    fn adapt_checkpoint(&self, tensors: Tensors) -> Result<Tensors, String> {
        let mut tensors = if tensors.contains_key("patch_pos") { tensors } else { huawei_to_timm(tensors)? };
        fit_pos_embed(&mut tensors, "patch_pos", self.patch_pos.dims())?;
        Ok(tensors)
    }
}

/// The original release's names, and its `pixel_pos` stored as `[1, pixels, dim]`.
fn huawei_to_timm(tensors: Tensors) -> Result<Tensors, String> {
    tensors
        .into_iter()
        .filter(|(k, _)| k != "outer_tokens")
        .map(|(k, v)| {
            let k = HUAWEI_NAMES.iter().fold(k, |k, (from, to)| k.replace(from, to));
            if k != "pixel_pos" {
                return Ok((k, v));
            }
            let [1, n, c] = *v.shape().as_slice() else {
                return Err(format!("inner_pos has shape {:?}, expected [1, pixels, dim]", v.shape()));
            };
            let g = (n as f64).sqrt() as usize;
            let values: Vec<f32> = v.try_to_vec().map_err(|e| format!("inner_pos: {e:?}"))?;
            let permuted = (0..c).flat_map(|ch| (0..n).map(move |p| (ch, p))).map(|(ch, p)| values[p * c + ch]);
            Ok((k, TensorData::new(permuted.collect::<Vec<f32>>(), [1, c, g, g])))
        })
        .collect()
}
