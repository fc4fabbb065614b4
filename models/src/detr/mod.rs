//! DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020) with a
//! ResNet-50 backbone, in the layout of facebookresearch/detr so that its checkpoints load by
//! name; Hugging Face's `facebook/detr-resnet-50` layout is translated on import.

mod heads;
mod import;
mod position_encoding;
mod transformer;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Serialize};

use crate::check;
use crate::ops::{AttentionMaps, conv2d, linear};
use crate::resnet::ResNet;

pub use heads::{BoxHead, Detection, postprocess};
pub use position_encoding::sine_position_embedding;
pub use transformer::{Decoder, DecoderLayer, Encoder, EncoderLayer, MultiheadAttention, Transformer, TransformerDims};

use position_encoding::downsample_mask;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetrConfig {
    /// Object classes; class logits have `num_classes + 1` columns, the last is "no object".
    /// COCO checkpoints use 91 (the largest COCO category id is 90).
    pub num_classes: usize,
    #[serde(default = "defaults::hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::dim_feedforward")]
    pub dim_feedforward: usize,
    #[serde(default = "defaults::encoder_layers")]
    pub encoder_layers: usize,
    #[serde(default = "defaults::decoder_layers")]
    pub decoder_layers: usize,
    #[serde(default = "defaults::num_queries")]
    pub num_queries: usize,
    /// Bottleneck blocks per backbone stage; ResNet-50 is `[3, 4, 6, 3]`.
    #[serde(default = "defaults::backbone_layers")]
    pub backbone_layers: [usize; 4],
    /// Bottleneck width per stage (outputs are 4x wider); ResNet-50 is `[64, 128, 256, 512]`.
    #[serde(default = "defaults::backbone_channels")]
    pub backbone_channels: [usize; 4],
    #[serde(default = "defaults::backbone_stem_width")]
    pub backbone_stem_width: usize,
    /// Dropout in the transformer while training (DETR: 0.1; not on the attention weights).
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    /// Eval resize: shorter side to this, unless the longer side would exceed `eval_max_side`.
    #[serde(default = "defaults::eval_short_side")]
    pub eval_short_side: usize,
    #[serde(default = "defaults::eval_max_side")]
    pub eval_max_side: usize,
}

/// The values of DETR-R50 (the paper's and the reference code's defaults) for fields a config leaves out.
mod defaults {
    pub fn hidden_dim() -> usize {
        256
    }
    pub fn num_heads() -> usize {
        8
    }
    pub fn dim_feedforward() -> usize {
        2048
    }
    pub fn encoder_layers() -> usize {
        6
    }
    pub fn decoder_layers() -> usize {
        6
    }
    pub fn num_queries() -> usize {
        100
    }
    /// ResNet-50.
    pub fn backbone_layers() -> [usize; 4] {
        [3, 4, 6, 3]
    }
    pub fn backbone_channels() -> [usize; 4] {
        [64, 128, 256, 512]
    }
    pub fn backbone_stem_width() -> usize {
        64
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn eval_short_side() -> usize {
        800
    }
    pub fn eval_max_side() -> usize {
        1333
    }
}

impl DetrConfig {
    /// Checks the hyper-parameters; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check::count("model.hidden_dim", self.hidden_dim, 16384)?;
        check::count("model.num_heads", self.num_heads, self.hidden_dim)?;
        if !self.hidden_dim.is_multiple_of(self.num_heads) || !self.hidden_dim.is_multiple_of(2) {
            return Err(format!(
                "model.hidden_dim = {} must be even and divisible by model.num_heads = {}",
                self.hidden_dim, self.num_heads
            ));
        }
        check::count("model.num_classes", self.num_classes, 1 << 20)?;
        check::count("model.num_queries", self.num_queries, 10_000)?;
        check::count("model.dim_feedforward", self.dim_feedforward, 1 << 16)?;
        check::count("model.decoder_layers", self.decoder_layers, 64)?;
        if self.encoder_layers > 64 {
            return Err(format!("model.encoder_layers = {} must be at most 64", self.encoder_layers));
        }
        check::count("model.backbone_stem_width", self.backbone_stem_width, 4096)?;
        for (stage, (&blocks, &width)) in self.backbone_layers.iter().zip(&self.backbone_channels).enumerate() {
            check::count(&format!("model.backbone_layers[{stage}]"), blocks, 256)?;
            check::count(&format!("model.backbone_channels[{stage}]"), width, 4096)?;
        }
        check::number("model.dropout", self.dropout, 0.0..1.0)?;
        check::count("model.eval_short_side", self.eval_short_side, 4096)?;
        if !(self.eval_short_side..=8192).contains(&self.eval_max_side) {
            return Err(format!(
                "model.eval_max_side = {} must be from model.eval_short_side = {} to 8192",
                self.eval_max_side, self.eval_short_side
            ));
        }
        // A bottleneck block of width w has about 17 w^2 weights; each transformer layer 4 d^2
        // of attention (8 d^2 in the decoder) and 2 d f of feed-forward.
        let backbone: f64 =
            self.backbone_layers.iter().zip(&self.backbone_channels).map(|(&n, &w)| 17.0 * (n * w * w) as f64).sum();
        let (d, f) = (self.hidden_dim as f64, self.dim_feedforward as f64);
        let layers = self.encoder_layers as f64 * (4.0 * d * d + 2.0 * d * f)
            + self.decoder_layers as f64 * (8.0 * d * d + 2.0 * d * f);
        check::parameters(backbone + layers + (self.num_queries + self.num_classes) as f64 * d)
    }

    pub fn init(&self, device: &Device) -> Detr {
        let d = self.hidden_dim;
        let dims = TransformerDims {
            d_model: d,
            nhead: self.num_heads,
            dim_feedforward: self.dim_feedforward,
            num_encoder_layers: self.encoder_layers,
            num_decoder_layers: self.decoder_layers,
            dropout: self.dropout,
        };
        Detr {
            backbone: ResNet::new(self.backbone_layers, self.backbone_channels, self.backbone_stem_width, None, device),
            input_proj: Conv2dConfig::new([4 * self.backbone_channels[3], d], [1, 1]).init(device),
            query_embed: EmbeddingConfig::new(self.num_queries, d).init(device),
            transformer: Transformer::new(&dims, device),
            class_embed: LinearConfig::new(d, self.num_classes + 1).init(device),
            bbox_embed: BoxHead::new(d, device),
        }
    }
}

/// Class logits `[B, queries, classes + 1]` and boxes `[B, queries, 4]` (normalised cx, cy, w, h)
/// of one decoder layer.
#[derive(Debug, Clone)]
pub struct DetrOutput {
    pub logits: Tensor<3>,
    pub boxes: Tensor<3>,
}

/// [`Detr::forward_attention`]'s result.
pub struct DetrAttention {
    /// The last decoder layer's predictions.
    pub output: DetrOutput,
    pub maps: AttentionMaps,
    /// The feature map's `[h, w]`: the attention's keys are its cells, row-major.
    pub feature_size: [usize; 2],
}

#[derive(Module, Debug)]
pub struct Detr {
    pub backbone: ResNet,
    pub input_proj: Conv2d,
    pub query_embed: Embedding,
    pub transformer: Transformer,
    pub class_embed: Linear,
    pub bbox_embed: BoxHead,
}

impl Detr {
    /// Predictions of every decoder layer, the last one last, for normalised images `[B, 3, H, W]`
    /// zero-padded bottom/right, with `mask` `[B, H, W]` true on the padding.
    pub fn forward_all(&self, images: Tensor<4>, mask: Tensor<3, Bool>) -> Vec<DetrOutput> {
        self.forward_recording(images, mask, None).0
    }

    /// The last decoder layer's predictions and every layer's attention probabilities
    /// (`encoder_attn` `[B, heads, hw, hw]`, `decoder_self_attn` `[B, heads, Q, Q]`,
    /// `decoder_cross_attn` `[B, heads, Q, hw]`, with hw the feature map's cells, row-major).
    pub fn forward_attention(&self, images: Tensor<4>, mask: Tensor<3, Bool>) -> DetrAttention {
        let maps = AttentionMaps::default();
        let (mut outputs, feature_size) = self.forward_recording(images, mask, Some(&maps));
        let output = outputs.pop().expect("DETR has at least one decoder layer");
        DetrAttention { output, maps, feature_size }
    }

    /// [`Detr::forward_all`], recording the attention probabilities in `maps` when given; also
    /// returns the feature map's size `[h, w]`.
    fn forward_recording(
        &self,
        images: Tensor<4>,
        mask: Tensor<3, Bool>,
        maps: Option<&AttentionMaps>,
    ) -> (Vec<DetrOutput>, [usize; 2]) {
        let features = self.backbone.forward_features(images);
        let [b, _, h, w] = features.dims();
        let mask = downsample_mask(mask, h, w);
        let pos = sine_position_embedding(&mask, self.query_embed.weight.dims()[1]);
        // [B, d, h, w] -> [B, h*w, d]: one token per feature-map cell, row-major.
        let tokens = |x: Tensor<4>| x.flatten::<3>(2, 3).swap_dims(1, 2);
        let src = tokens(conv2d(&self.input_proj, features));
        let pos = tokens(pos);
        let mask = mask.reshape([b, h * w]);
        let outputs = self
            .transformer
            .forward(src, mask, self.query_embed.weight.val(), pos, maps)
            .map(|hs| DetrOutput {
                logits: linear(&self.class_embed, hs.clone()),
                boxes: sigmoid(self.bbox_embed.forward(hs)),
            })
            .collect();
        (outputs, [h, w])
    }

    /// The last decoder layer's predictions.
    pub fn forward(&self, images: Tensor<4>, mask: Tensor<3, Bool>) -> DetrOutput {
        self.forward_all(images, mask).pop().expect("DETR has at least one decoder layer")
    }
}

/// Parameter names the training loop needs.
impl Detr {
    /// The backbone's parameters (a regex over parameter paths), trained at their own learning rate.
    pub fn backbone_params() -> &'static str {
        r"^backbone\."
    }

    /// The class head, left at its initialisation when fine-tuning to another number of classes.
    pub fn classifier_head() -> &'static str {
        "class_embed"
    }

    /// The backbone's first `parts` freeze groups (stem, layer1, ..., see [`ResNet::freeze_groups`])
    /// as a regex over parameter paths; `None` for 0.
    pub fn frozen_backbone(parts: usize) -> Option<String> {
        let names = ResNet::freeze_groups()[..parts].concat();
        (parts > 0).then(|| format!(r"^backbone\.({})\.", names.join("|")))
    }
}
