//! DETR's transformer (facebookresearch/detr `models/transformer.py`): post-norm encoder and
//! decoder layers whose position embeddings are added to the attention queries and keys only,
//! and a decoder that returns every layer's normed output for the auxiliary losses. Field names
//! are the checkpoint's parameter names.

use burn::module::{Initializer, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::ops::{AttentionMaps, Record, attend, layer_norm, linear, linear_with};

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
    pub fn new(d: usize, num_heads: usize, device: &Device) -> Self {
        let init = Initializer::XavierUniform { gain: 1.0 };
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
        record: Record,
    ) -> Tensor<3> {
        let (q, k, v) = (self.project(query, 0), self.project(key, 1), self.project(value, 2));
        let out = attend((q, k, v, key_padding_mask), self.num_heads, record);
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

/// The feed-forward sublayer both layer kinds end with, post-norm:
/// `norm(x + dropout(linear2(dropout(relu(linear1(x))))))`.
fn feed_forward(x: Tensor<3>, linear1: &Linear, linear2: &Linear, norm: &LayerNorm, p: f64) -> Tensor<3> {
    let ffn = linear(linear2, dropout(relu(linear(linear1, x.clone())), p));
    layer_norm(norm, x + dropout(ffn, p))
}

/// Sizes of the transformer's layers.
#[derive(Debug, Clone, Copy)]
pub struct TransformerDims {
    /// Model width `d`.
    pub d_model: usize,
    pub nhead: usize,
    pub dim_feedforward: usize,
    pub num_encoder_layers: usize,
    pub num_decoder_layers: usize,
    /// Dropout on each residual branch and inside the feed-forward networks, while training.
    pub dropout: f64,
}

/// The feed-forward sublayer's `linear1` (`d -> dim_feedforward`) and `linear2` (back to `d`),
/// initialised Xavier-uniform as every transformer matrix is.
fn feed_forward_layers(dims: &TransformerDims, device: &Device) -> [Linear; 2] {
    let xavier = |d_in, d_out| {
        LinearConfig::new(d_in, d_out).with_initializer(Initializer::XavierUniform { gain: 1.0 }).init(device)
    };
    [xavier(dims.d_model, dims.dim_feedforward), xavier(dims.dim_feedforward, dims.d_model)]
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
    pub fn new(dims: &TransformerDims, device: &Device) -> Self {
        let self_attn = MultiheadAttention::new(dims.d_model, dims.nhead, device);
        let [linear1, linear2] = feed_forward_layers(dims, device);
        let [norm1, norm2] = [(); 2].map(|_| LayerNormConfig::new(dims.d_model).init(device));
        Self { self_attn, linear1, linear2, norm1, norm2, dropout: dims.dropout }
    }

    /// With `maps`, the self-attention's probabilities are recorded as `encoder_attn`.
    pub fn forward(
        &self,
        src: Tensor<3>,
        pos: Tensor<3>,
        mask: Tensor<2, Bool>,
        maps: Option<&AttentionMaps>,
    ) -> Tensor<3> {
        let p = self.dropout;
        let qk = src.clone() + pos;
        let record = maps.map(|m| (m, "encoder_attn"));
        let attended = self.self_attn.forward(qk.clone(), qk, src.clone(), Some(mask), record);
        let src = layer_norm(&self.norm1, src + dropout(attended, p));
        feed_forward(src, &self.linear1, &self.linear2, &self.norm2, p)
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// The memory `[B, N, d]`: the image tokens `src` through every layer, with their position
    /// embedding `pos` `[B, N, d]` and `mask` `[B, N]` true on padding.
    pub fn forward(
        &self,
        src: Tensor<3>,
        pos: Tensor<3>,
        mask: Tensor<2, Bool>,
        maps: Option<&AttentionMaps>,
    ) -> Tensor<3> {
        self.layers.iter().fold(src, |memory, layer| layer.forward(memory, pos.clone(), mask.clone(), maps))
    }
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
    pub fn new(dims: &TransformerDims, device: &Device) -> Self {
        let [self_attn, multihead_attn] = [(); 2].map(|_| MultiheadAttention::new(dims.d_model, dims.nhead, device));
        let [linear1, linear2] = feed_forward_layers(dims, device);
        let [norm1, norm2, norm3] = [(); 3].map(|_| LayerNormConfig::new(dims.d_model).init(device));
        Self { self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3, dropout: dims.dropout }
    }

    pub fn forward(
        &self,
        tgt: Tensor<3>,
        query_pos: Tensor<3>,
        memory: Tensor<3>,
        pos: Tensor<3>,
        mask: Tensor<2, Bool>,
        maps: Option<&AttentionMaps>,
    ) -> Tensor<3> {
        let p = self.dropout;
        let qk = tgt.clone() + query_pos.clone();
        let attended =
            self.self_attn.forward(qk.clone(), qk, tgt.clone(), None, maps.map(|m| (m, "decoder_self_attn")));
        let tgt = layer_norm(&self.norm1, tgt + dropout(attended, p));
        let (query, key) = (tgt.clone() + query_pos, memory.clone() + pos);
        let record = maps.map(|m| (m, "decoder_cross_attn"));
        let attended = self.multihead_attn.forward(query, key, memory, Some(mask), record);
        let tgt = layer_norm(&self.norm2, tgt + dropout(attended, p));
        feed_forward(tgt, &self.linear1, &self.linear2, &self.norm3, p)
    }
}

/// The decoder layers and the norm shared by every layer's output.
#[derive(Module, Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    pub norm: LayerNorm,
}

impl Decoder {
    /// Every layer's output through `norm` (detr's `return_intermediate`), `[B, queries, d]`
    /// each, the last layer's last. The iterator runs one layer per item, so that a caller can
    /// apply the prediction heads between layers: parameters are initialised lazily, on first
    /// use, from the device's (seeded) generator, and the order of first uses decides their values.
    pub fn forward<'a>(
        &'a self,
        tgt: Tensor<3>,
        memory: Tensor<3>,
        pos: Tensor<3>,
        query_pos: Tensor<3>,
        mask: Tensor<2, Bool>,
        maps: Option<&'a AttentionMaps>,
    ) -> impl Iterator<Item = Tensor<3>> + 'a {
        self.layers.iter().scan(tgt, move |tgt, layer| {
            *tgt = layer.forward(tgt.clone(), query_pos.clone(), memory.clone(), pos.clone(), mask.clone(), maps);
            Some(layer_norm(&self.norm, tgt.clone()))
        })
    }
}

#[derive(Module, Debug)]
pub struct Transformer {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Transformer {
    pub fn new(dims: &TransformerDims, device: &Device) -> Self {
        Self {
            encoder: Encoder {
                layers: (0..dims.num_encoder_layers).map(|_| EncoderLayer::new(dims, device)).collect(),
            },
            decoder: Decoder {
                layers: (0..dims.num_decoder_layers).map(|_| DecoderLayer::new(dims, device)).collect(),
                norm: LayerNormConfig::new(dims.d_model).init(device),
            },
        }
    }

    /// The image tokens `src` `[B, N, d]` (with `mask` `[B, N]` true on padding and position
    /// embedding `pos` `[B, N, d]`) through the encoder, then the object queries, whose position
    /// embedding is `query_embed` `[queries, d]`, through the decoder: its per-layer outputs,
    /// see [`Decoder::forward`].
    pub fn forward<'a>(
        &'a self,
        src: Tensor<3>,
        mask: Tensor<2, Bool>,
        query_embed: Tensor<2>,
        pos: Tensor<3>,
        maps: Option<&'a AttentionMaps>,
    ) -> impl Iterator<Item = Tensor<3>> + 'a {
        let [b, _, d] = src.dims();
        let device = src.device();
        let memory = self.encoder.forward(src, pos.clone(), mask.clone(), maps);
        let num_queries = query_embed.dims()[0];
        let query_pos = query_embed.unsqueeze::<3>().expand([b, num_queries, d]);
        let tgt = Tensor::zeros([b, num_queries, d], &device);
        self.decoder.forward(tgt, memory, pos, query_pos, mask, maps)
    }
}
