//! DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020) with a
//! ResNet-50 backbone, in the layout of facebookresearch/detr so that its checkpoints load by
//! name; Hugging Face's `facebook/detr-resnet-50` layout is translated on import.

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use serde::{Deserialize, Serialize};

use crate::cpu::{attention, conv2d, linear, linear_with};
use crate::import::{Checkpoint, Tensors};
use crate::resnet::{ResNet, torchvision_key};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetrConfig {
    /// Object classes; class logits have `num_classes + 1` columns, the last is "no object".
    /// COCO checkpoints use 91 (the largest COCO category id is 90).
    pub num_classes: usize,
    #[serde(default = "d_model")]
    pub hidden_dim: usize,
    #[serde(default = "heads")]
    pub num_heads: usize,
    #[serde(default = "ffn")]
    pub dim_feedforward: usize,
    #[serde(default = "six")]
    pub encoder_layers: usize,
    #[serde(default = "six")]
    pub decoder_layers: usize,
    #[serde(default = "queries")]
    pub num_queries: usize,
    /// Bottleneck blocks per backbone stage; ResNet-50 is `[3, 4, 6, 3]`.
    #[serde(default = "resnet50_layers")]
    pub backbone_layers: [usize; 4],
    /// Bottleneck width per stage (outputs are 4x wider); ResNet-50 is `[64, 128, 256, 512]`.
    #[serde(default = "resnet50_channels")]
    pub backbone_channels: [usize; 4],
    #[serde(default = "resnet50_stem")]
    pub backbone_stem_width: usize,
    /// Dropout in the transformer while training (DETR: 0.1; not on the attention weights).
    #[serde(default = "dropout_prob")]
    pub dropout: f64,
    /// Eval resize: shorter side to this, unless the longer side would exceed `eval_max_side`.
    #[serde(default = "short_side")]
    pub eval_short_side: usize,
    #[serde(default = "max_side")]
    pub eval_max_side: usize,
}

fn d_model() -> usize {
    256
}
fn heads() -> usize {
    8
}
fn ffn() -> usize {
    2048
}
fn six() -> usize {
    6
}
fn queries() -> usize {
    100
}
fn resnet50_layers() -> [usize; 4] {
    [3, 4, 6, 3]
}
fn resnet50_channels() -> [usize; 4] {
    [64, 128, 256, 512]
}
fn resnet50_stem() -> usize {
    64
}
fn dropout_prob() -> f64 {
    0.1
}
fn short_side() -> usize {
    800
}
fn max_side() -> usize {
    1333
}

impl DetrConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_heads == 0 || self.hidden_dim % self.num_heads != 0 || self.hidden_dim % 2 != 0 {
            return Err(format!(
                "model.hidden_dim = {} must be even and divisible by model.num_heads = {}",
                self.hidden_dim, self.num_heads
            ));
        }
        if self.num_classes == 0 || self.num_queries == 0 || self.decoder_layers == 0 {
            return Err("model.num_classes, model.num_queries and model.decoder_layers must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.eval_short_side == 0 || self.eval_max_side < self.eval_short_side {
            return Err("model.eval_max_side must be at least model.eval_short_side > 0".into());
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Detr {
        let d = self.hidden_dim;
        let norm = || LayerNormConfig::new(d).init(device);
        let attention = || MultiheadAttention::new(d, self.num_heads, device);
        // DETR's transformer initialises every matrix Xavier-uniform.
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o).with_initializer(Initializer::XavierUniform { gain: 1.0 }).init(device)
        };
        Detr {
            backbone: ResNet::new(self.backbone_layers, self.backbone_channels, self.backbone_stem_width, None, device),
            input_proj: Conv2dConfig::new([4 * self.backbone_channels[3], d], [1, 1]).init(device),
            query_embed: EmbeddingConfig::new(self.num_queries, d).init(device),
            transformer: Transformer {
                encoder: Encoder {
                    layers: (0..self.encoder_layers)
                        .map(|_| EncoderLayer {
                            self_attn: attention(),
                            linear1: linear(d, self.dim_feedforward),
                            linear2: linear(self.dim_feedforward, d),
                            norm1: norm(),
                            norm2: norm(),
                            dropout: self.dropout,
                        })
                        .collect(),
                },
                decoder: Decoder {
                    layers: (0..self.decoder_layers)
                        .map(|_| DecoderLayer {
                            self_attn: attention(),
                            multihead_attn: attention(),
                            linear1: linear(d, self.dim_feedforward),
                            linear2: linear(self.dim_feedforward, d),
                            norm1: norm(),
                            norm2: norm(),
                            norm3: norm(),
                            dropout: self.dropout,
                        })
                        .collect(),
                    norm: norm(),
                },
            },
            class_embed: LinearConfig::new(d, self.num_classes + 1).init(device),
            bbox_embed: BoxHead {
                layers: vec![
                    LinearConfig::new(d, d).init(device),
                    LinearConfig::new(d, d).init(device),
                    LinearConfig::new(d, 4).init(device),
                ],
            },
        }
    }
}

/// `torch.nn.MultiheadAttention`: one fused input projection `in_proj_weight` `[3d, d]` (rows:
/// query, key, value), scaled dot-product attention over heads, output projection.
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl MultiheadAttention {
    fn new(d: usize, num_heads: usize, device: &Device) -> Self {
        let init = burn::module::Initializer::XavierUniform { gain: 1.0 };
        Self {
            in_proj_weight: init.init_with([3 * d, d], Some(d), Some(3 * d), device),
            in_proj_bias: Param::from_tensor(Tensor::zeros([3 * d], device)),
            out_proj: LinearConfig::new(d, d).with_initializer(init.clone()).init(device),
            num_heads,
        }
    }

    /// Rows `i*d..(i+1)*d` of the fused projection applied to `x` `[B, N, d]`.
    fn project(&self, x: Tensor<3>, i: usize) -> Tensor<3> {
        let d = self.out_proj.weight.dims()[0];
        let w = self.in_proj_weight.val().slice(s![i * d..(i + 1) * d, ..]);
        let b = self.in_proj_bias.val().slice(s![i * d..(i + 1) * d]);
        linear_with(x, w.transpose(), Some(b))
    }

    pub fn forward(
        &self,
        query: Tensor<3>,
        key: Tensor<3>,
        value: Tensor<3>,
        key_padding_mask: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let out = attention(
            self.project(query, 0),
            self.project(key, 1),
            self.project(value, 2),
            self.num_heads,
            key_padding_mask,
        );
        linear(&self.out_proj, out)
    }
}

/// Dropout with probability `p` while training (on an autodiff device), the identity otherwise.
fn dropout<const D: usize>(x: Tensor<D>, p: f64) -> Tensor<D> {
    if p == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = x.random_like(burn::tensor::Distribution::Bernoulli(1.0 - p));
    x * keep / (1.0 - p)
}

/// Post-norm encoder layer; the position embedding is added to queries and keys only.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    /// Dropout on each residual branch and inside the feed-forward network, while training.
    pub dropout: f64,
}

impl EncoderLayer {
    pub fn forward(&self, src: Tensor<3>, pos: Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let p = self.dropout;
        let qk = src.clone() + pos;
        let attended = self.self_attn.forward(qk.clone(), qk, src.clone(), Some(mask));
        let src = self.norm1.forward(src + dropout(attended, p));
        let ffn = linear(&self.linear2, dropout(relu(linear(&self.linear1, src.clone())), p));
        self.norm2.forward(src + dropout(ffn, p))
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

/// Post-norm decoder layer: self-attention among the queries, cross-attention to the image.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: MultiheadAttention,
    pub multihead_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    pub dropout: f64,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        tgt: Tensor<3>,
        query_pos: Tensor<3>,
        memory: Tensor<3>,
        pos: Tensor<3>,
        mask: Tensor<2, Bool>,
    ) -> Tensor<3> {
        let p = self.dropout;
        let qk = tgt.clone() + query_pos.clone();
        let attended = self.self_attn.forward(qk.clone(), qk, tgt.clone(), None);
        let tgt = self.norm1.forward(tgt + dropout(attended, p));
        let attended = self.multihead_attn.forward(tgt.clone() + query_pos, memory.clone() + pos, memory, Some(mask));
        let tgt = self.norm2.forward(tgt + dropout(attended, p));
        let ffn = linear(&self.linear2, dropout(relu(linear(&self.linear1, tgt.clone())), p));
        self.norm3.forward(tgt + dropout(ffn, p))
    }
}

/// The decoder layers and the norm shared by every layer's output.
#[derive(Module, Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    pub norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Transformer {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

/// Three linear layers with ReLU between them: the box regression head.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub layers: Vec<Linear>,
}

impl BoxHead {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last { relu(y) } else { y }
        })
    }
}

/// Class logits `[B, queries, classes + 1]` and boxes `[B, queries, 4]` (normalised cx, cy, w, h)
/// of one decoder layer.
#[derive(Debug, Clone)]
pub struct DetrOutput {
    pub logits: Tensor<3>,
    pub boxes: Tensor<3>,
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
        let features = self.backbone.forward_features(images);
        let [b, _, h, w] = features.dims();
        let device = features.device();
        let mask = downsample_mask(mask, h, w);
        let pos = sine_position_embedding(&mask, self.query_embed.weight.dims()[1], &device);
        let d = pos.dims()[1];
        // [B, d, h, w] -> [B, h*w, d]: one token per feature-map cell, row-major.
        let tokens = |x: Tensor<4>| x.flatten::<3>(2, 3).swap_dims(1, 2);
        let src = tokens(conv2d(&self.input_proj, features));
        let pos = tokens(pos);
        let mask = mask.reshape([b, h * w]);

        let mut memory = src;
        for layer in &self.transformer.encoder.layers {
            memory = layer.forward(memory, pos.clone(), mask.clone());
        }
        let num_queries = self.query_embed.weight.dims()[0];
        let query_pos = self.query_embed.weight.val().unsqueeze::<3>().expand([b, num_queries, d]);
        let mut tgt = Tensor::zeros([b, num_queries, d], &device);
        let decoder = &self.transformer.decoder;
        decoder
            .layers
            .iter()
            .map(|layer| {
                tgt = layer.forward(tgt.clone(), query_pos.clone(), memory.clone(), pos.clone(), mask.clone());
                let hs = decoder.norm.forward(tgt.clone());
                DetrOutput { logits: self.class_embed.forward(hs.clone()), boxes: sigmoid(self.bbox_embed.forward(hs)) }
            })
            .collect()
    }

    /// The last decoder layer's predictions.
    pub fn forward(&self, images: Tensor<4>, mask: Tensor<3, Bool>) -> DetrOutput {
        self.forward_all(images, mask).pop().expect("DETR has at least one decoder layer")
    }
}

/// Nearest-neighbour resize of the padding mask to the feature map, as
/// `F.interpolate(mask[None].float(), size=(h, w))`: source index `floor(i * in / out)`.
fn downsample_mask(mask: Tensor<3, Bool>, h: usize, w: usize) -> Tensor<3, Bool> {
    let [_, in_h, in_w] = mask.dims();
    let device = mask.device();
    let index = |out: usize, inp: usize| {
        let scale = inp as f32 / out as f32;
        let idx: Vec<i64> = (0..out).map(|i| ((i as f32 * scale).floor() as i64).min(inp as i64 - 1)).collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [out]), &device)
    };
    mask.int().select(1, index(h, in_h)).select(2, index(w, in_w)).bool()
}

/// DETR's sine position embedding with `d/2` features per axis, temperature 10000, normalised
/// to `[0, 2*pi]` over the unpadded extent: `[B, d, h, w]`, the y half first. Computed on the
/// host from the (small) mask, in f32 as the reference does.
pub fn sine_position_embedding(mask: &Tensor<3, Bool>, d: usize, device: &Device) -> Tensor<4> {
    let [b, h, w] = mask.dims();
    let padded: Vec<bool> = mask.to_data().try_to_vec().expect("mask is boolean");
    let feats = d / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..feats).map(|k| 10000f32.powf((2 * (k / 2)) as f32 / feats as f32)).collect();
    let mut out = vec![0f32; b * d * h * w];
    for bi in 0..b {
        let valid = |y: usize, x: usize| !padded[(bi * h + y) * w + x] as u8 as f32;
        // Cumulative counts of valid cells down each column and along each row.
        let mut y_embed = vec![0f32; h * w];
        let mut x_embed = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let v = valid(y, x);
                y_embed[y * w + x] = v + if y > 0 { y_embed[(y - 1) * w + x] } else { 0.0 };
                x_embed[y * w + x] = v + if x > 0 { x_embed[y * w + x - 1] } else { 0.0 };
            }
        }
        for y in 0..h {
            for x in 0..w {
                let ye = y_embed[y * w + x] / (y_embed[(h - 1) * w + x] + 1e-6) * scale;
                let xe = x_embed[y * w + x] / (x_embed[y * w + w - 1] + 1e-6) * scale;
                for (k, dt) in dim_t.iter().enumerate() {
                    // Even feature indices take the sine, odd ones the cosine.
                    let f = |e: f32| if k % 2 == 0 { (e / dt).sin() } else { (e / dt).cos() };
                    out[((bi * d + k) * h + y) * w + x] = f(ye);
                    out[((bi * d + feats + k) * h + y) * w + x] = f(xe);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, d, h, w]), device)
}

/// Hugging Face `DetrForObjectDetection` names -> facebookresearch/detr names, for the parts
/// that are renamed one to one (the q/k/v projections are fused separately).
const HF_NAMES: [(&str, &str); 14] = [
    ("model.input_projection.", "input_proj."),
    ("model.query_position_embeddings.", "query_embed."),
    ("model.encoder.", "transformer.encoder."),
    ("model.decoder.layernorm.", "transformer.decoder.norm."),
    ("model.decoder.", "transformer.decoder."),
    ("class_labels_classifier.", "class_embed."),
    ("bbox_predictor.", "bbox_embed."),
    (".encoder_attn.", ".multihead_attn."),
    (".fc1.", ".linear1."),
    (".fc2.", ".linear2."),
    (".encoder_attn_layer_norm.", ".norm2."),
    (".self_attn_layer_norm.", ".norm1."),
    (".final_layer_norm.", ".FINAL."),
    ("model.backbone.conv_encoder.model.", "backbone."),
];

/// Which norm `final_layer_norm` is: the second of an encoder layer, the third of a decoder layer.
fn final_norm_name(key: &str) -> String {
    let n = if key.starts_with("transformer.encoder.") { "norm2" } else { "norm3" };
    key.replace(".FINAL.", &format!(".{n}."))
}

fn from_hf(tensors: Tensors) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    let mut qkv: std::collections::BTreeMap<String, [Option<TensorData>; 3]> = Default::default();
    for (key, value) in tensors {
        let key = final_norm_name(&HF_NAMES.iter().fold(key, |k, (from, to)| k.replace(from, to)));
        let projection = [".q_proj.", ".k_proj.", ".v_proj."].iter().position(|p| key.contains(p));
        match projection {
            Some(i) => {
                // `...self_attn.q_proj.weight` -> slot 0 of `...self_attn.in_proj_weight`.
                let (module, param) = key.rsplit_once('.').unwrap();
                let module = module.rsplit_once('.').unwrap().0;
                qkv.entry(format!("{module}.in_proj_{param}")).or_default()[i] = Some(value);
            }
            None => {
                out.insert(key.replace(".o_proj.", ".out_proj."), value);
            }
        }
    }
    for (key, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(format!("{key}: the checkpoint lacks one of its q_proj / k_proj / v_proj"));
        };
        out.insert(key, concat_rows(vec![q, k, v])?);
    }
    Ok(out)
}

/// Stacks tensors along their first dimension.
fn concat_rows(parts: Vec<TensorData>) -> Result<TensorData, String> {
    let mut shape = parts[0].shape().clone();
    shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
    let mut values = Vec::new();
    for p in parts {
        values.extend(p.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?);
    }
    Ok(TensorData::new(values, shape))
}

impl Checkpoint for Detr {
    fn adapt_checkpoint(&self, tensors: Tensors) -> Result<Tensors, String> {
        let tensors = if tensors.keys().any(|k| k.starts_with("model.backbone.conv_encoder.")) {
            from_hf(tensors)?
        } else {
            tensors
        };
        Ok(tensors
            .into_iter()
            .filter_map(|(key, value)| {
                let key = key.replace("backbone.0.body.", "backbone.");
                if key.starts_with("backbone.") { torchvision_key(&key) } else { Some(key) }.map(|k| (k, value))
            })
            .collect())
    }
}

/// One detection, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Class index (a COCO category id for COCO checkpoints).
    pub label: usize,
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]`.
    pub bbox_xyxy: [f32; 4],
}

/// DETR's `PostProcess`: softmax over the classes, the "no object" column dropped, each query's
/// best class and its probability; boxes from normalised (cx, cy, w, h) to absolute corners of
/// each image's original `(height, width)`. Every query is kept (thresholds are for display).
pub fn postprocess(output: &DetrOutput, sizes: &[(usize, usize)]) -> Vec<Vec<Detection>> {
    let [b, q, c] = output.logits.dims();
    assert_eq!(b, sizes.len(), "one original size per image");
    let probs: Vec<f32> = burn::tensor::activation::softmax(output.logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("probabilities are floats");
    let boxes: Vec<f32> = output.boxes.clone().into_data().convert::<f32>().try_into_vec().expect("boxes are floats");
    (0..b)
        .map(|bi| {
            let (h, w) = (sizes[bi].0 as f32, sizes[bi].1 as f32);
            (0..q)
                .map(|qi| {
                    let p = &probs[(bi * q + qi) * c..][..c - 1];
                    // The first maximum, as torch.max returns it.
                    let (label, score) = p
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                    let [cx, cy, bw, bh] = boxes[(bi * q + qi) * 4..][..4] else { unreachable!() };
                    let bbox_xyxy =
                        [(cx - 0.5 * bw) * w, (cy - 0.5 * bh) * h, (cx + 0.5 * bw) * w, (cy + 0.5 * bh) * h];
                    Detection { label, score, bbox_xyxy }
                })
                .collect()
        })
        .collect()
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
