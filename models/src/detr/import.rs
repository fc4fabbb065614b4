//! Checkpoint import: facebookresearch/detr's names are the model's own (its ResNet under
//! `backbone.0.body.`); Hugging Face's `DetrForObjectDetection` layout (`facebook/detr-resnet-50`)
//! is renamed, and its separate q/k/v projections are fused as `nn.MultiheadAttention` keeps them.
//! The backbone may be timm's ResNet (torchvision's names) or transformers' own `ResNetBackbone`
//! (`embedder`, `encoder.stages`), as `use_timm_backbone = false` checkpoints have it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use burn::prelude::*;
use regex::Regex;

use super::Detr;
use crate::import::{Checkpoint, Tensors};
use crate::resnet::torchvision_key;

/// Hugging Face names -> facebookresearch/detr names. Each key takes the first rule whose
/// pattern (anchored at the key's start) matches, and that matched part is replaced; the rest of
/// the key is kept. Keys that no rule matches keep their names.
const HF_RULES: [(&str, &str); 16] = [
    // Backbone: timm's ResNet inside HF's conv encoder (torchvision names are mapped afterwards).
    (r"^model\.backbone\.conv_encoder\.model\.", "backbone."),
    // Input projection, object queries and prediction heads.
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
    // The norm applied to every decoder layer's output.
    (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
    // Encoder and decoder layers alike: self-attention (its output projection is `o_proj` in newer
    // transformers releases), the norm after it, the feed-forward network.
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.o_proj\.", "transformer.$1.layers.$2.self_attn.out_proj."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.", "transformer.$1.layers.$2.self_attn."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.", "transformer.$1.layers.$2.norm1."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.fc1\.", "transformer.$1.layers.$2.linear1."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.fc2\.", "transformer.$1.layers.$2.linear2."),
    // Encoder layers: `final_layer_norm` is their second norm.
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", "transformer.encoder.layers.$1.norm2."),
    // Decoder layers: cross-attention (`encoder_attn`) and the norm after it; `final_layer_norm` is the third.
    (
        r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.",
        "transformer.decoder.layers.$1.multihead_attn.out_proj.",
    ),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", "transformer.decoder.layers.$1.multihead_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", "transformer.decoder.layers.$1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", "transformer.decoder.layers.$1.norm3."),
];

static HF_PATTERNS: LazyLock<Vec<(Regex, &str)>> =
    LazyLock::new(|| HF_RULES.iter().map(|&(pattern, to)| (Regex::new(pattern).expect("valid pattern"), to)).collect());

/// One of an attention's separate projections: its module, which one (`q`, `k`, `v`) and the
/// parameter (`weight`, `bias`).
static QKV_PROJECTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(.+)\.([qkv])_proj\.(weight|bias)$").expect("valid pattern"));

/// A Hugging Face key under its facebookresearch/detr name (before the q/k/v fusion).
fn hf_key(key: &str) -> String {
    match HF_PATTERNS.iter().find(|(pattern, _)| pattern.is_match(key)) {
        Some((pattern, to)) => pattern.replace(key, *to).into_owned(),
        None => key.to_string(),
    }
}

fn from_hf(tensors: Tensors) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    let mut qkv: BTreeMap<String, [Option<TensorData>; 3]> = Default::default();
    for (key, value) in tensors {
        let key = hf_key(&key);
        match QKV_PROJECTION.captures(&key) {
            Some(c) => {
                // `...self_attn.q_proj.weight` -> slot 0 of `...self_attn.in_proj_weight`.
                let slot = ["q", "k", "v"].iter().position(|p| *p == &c[2]).expect("q, k or v");
                qkv.entry(format!("{}.in_proj_{}", &c[1], &c[3])).or_default()[slot] = Some(value);
            }
            None => {
                out.insert(key, value);
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
                match key.strip_prefix("backbone.") {
                    Some(inner) => torchvision_key(inner).map(|k| format!("backbone.{k}")),
                    None => Some(key),
                }
                .map(|k| (k, value))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_detr_names() {
        for (hf, detr) in [
            (
                "model.backbone.conv_encoder.model.layer1.0.downsample.1.running_var",
                "backbone.layer1.0.downsample.1.running_var",
            ),
            ("model.input_projection.weight", "input_proj.weight"),
            ("model.query_position_embeddings.weight", "query_embed.weight"),
            ("class_labels_classifier.bias", "class_embed.bias"),
            ("bbox_predictor.layers.2.weight", "bbox_embed.layers.2.weight"),
            ("model.decoder.layernorm.weight", "transformer.decoder.norm.weight"),
            ("model.encoder.layers.3.self_attn.q_proj.weight", "transformer.encoder.layers.3.self_attn.q_proj.weight"),
            ("model.encoder.layers.3.self_attn.out_proj.bias", "transformer.encoder.layers.3.self_attn.out_proj.bias"),
            (
                "model.decoder.layers.0.self_attn.o_proj.weight",
                "transformer.decoder.layers.0.self_attn.out_proj.weight",
            ),
            ("model.encoder.layers.3.self_attn_layer_norm.bias", "transformer.encoder.layers.3.norm1.bias"),
            ("model.decoder.layers.12.fc1.weight", "transformer.decoder.layers.12.linear1.weight"),
            ("model.encoder.layers.0.fc2.bias", "transformer.encoder.layers.0.linear2.bias"),
            ("model.encoder.layers.5.final_layer_norm.weight", "transformer.encoder.layers.5.norm2.weight"),
            ("model.decoder.layers.5.final_layer_norm.weight", "transformer.decoder.layers.5.norm3.weight"),
            (
                "model.decoder.layers.1.encoder_attn.v_proj.bias",
                "transformer.decoder.layers.1.multihead_attn.v_proj.bias",
            ),
            (
                "model.decoder.layers.1.encoder_attn.o_proj.bias",
                "transformer.decoder.layers.1.multihead_attn.out_proj.bias",
            ),
            ("model.decoder.layers.1.encoder_attn_layer_norm.weight", "transformer.decoder.layers.1.norm2.weight"),
        ] {
            assert_eq!(hf_key(hf), detr, "{hf}");
        }
    }

    #[test]
    fn q_k_v_projections_are_fused_in_that_order() {
        let row = |v: f32| TensorData::new(vec![v, v], [1, 2]);
        let prefix = "model.encoder.layers.0.self_attn";
        let tensors: Tensors = [("k", 2.0), ("q", 1.0), ("v", 3.0)]
            .into_iter()
            .map(|(p, v)| (format!("{prefix}.{p}_proj.weight"), row(v)))
            .collect();
        let out = from_hf(tensors).unwrap();
        let fused = &out["transformer.encoder.layers.0.self_attn.in_proj_weight"];
        assert_eq!(fused.shape().to_vec(), vec![3, 2]);
        assert_eq!(fused.try_to_vec::<f32>().unwrap(), vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(out.len(), 1);

        let missing: Tensors = [(format!("{prefix}.q_proj.bias"), row(1.0))].into_iter().collect();
        assert!(from_hf(missing).unwrap_err().contains("in_proj_bias"));
    }
}
