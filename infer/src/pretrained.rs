//! Pretrained models by their Hugging Face Hub name: `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`,
//! `timm/tnt_s_patch16_224.in1k`, `facebook/detr-resnet-50` (a revision after `@`, e.g.
//! `facebook/detr-resnet-50@no_timm`). The zoo's config is made from the repository's own
//! `config.json` (timm's `architecture`, `model_args` and `pretrained_cfg`; transformers' DETR
//! config and `preprocessor_config.json`), the class names from its labels (or ImageNet-1k's /
//! COCO's), and the weights are the repository's `model.safetensors` (else `pytorch_model.bin`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use serde_json::{Map, Value, json};
use zoo_models::Classifier;
use zoo_models::detr::Detr;
use zoo_train::ZooConfig;

use crate::hub::{Hub, HubError};

/// ImageNet-1k's class descriptions in class order, as timm ships them (`ImageNetInfo`).
pub const IMAGENET_1K_LABELS: &str = include_str!("../data/imagenet1k_labels.txt");

/// A model of the Hub, its config made and its files located.
pub struct Pretrained {
    pub repo: String,
    pub revision: String,
    pub config: ZooConfig,
    /// The repository's `config.json` in the cache (named in errors about the model).
    pub config_file: PathBuf,
    hub: Hub,
}

/// The weight files tried, in order.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

impl Pretrained {
    /// Reads the model's config from the Hub (or the cache), as [`Hub::from_env`] says.
    pub fn from_hub(reference: &str) -> Result<Self> {
        Self::with_hub(reference, Hub::from_env())
    }

    pub fn with_hub(reference: &str, hub: Hub) -> Result<Self> {
        let (repo, revision) = match reference.split_once('@') {
            Some((repo, revision)) if !revision.is_empty() => (repo, revision),
            _ => (reference, "main"),
        };
        let config_file = hub.file(repo, revision, "config.json")?;
        let text =
            std::fs::read_to_string(&config_file).with_context(|| format!("reading {}", config_file.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{} of {repo} is not JSON", config_file.display()))?;
        let table = if json.get("architecture").is_some() {
            timm_config(&json)
        } else if json.get("model_type").and_then(Value::as_str) == Some("detr") {
            let preprocessor = match hub.file(repo, revision, "preprocessor_config.json") {
                Ok(path) => Some(read_json(&path)?),
                Err(HubError::FileNotFound { .. } | HubError::NotCached { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            detr_config(&json, preprocessor.as_ref())
        } else {
            Err(format!(
                "neither a timm model (`architecture`) nor a transformers DETR (`model_type` = \"detr\"); {SUPPORTED}"
            ))
        }
        .map_err(|e| anyhow!("{} of `{repo}`: {e}", config_file.display()))?;
        let toml = toml::to_string(&table).expect("a JSON object without nulls is TOML");
        let config = ZooConfig::from_toml_str(&toml)
            .map_err(|e| anyhow!("{} of `{repo}` makes an invalid model config: {e}", config_file.display()))?;
        Ok(Self { repo: repo.into(), revision: revision.into(), config, config_file, hub })
    }

    /// The weights file in the cache, downloaded first if need be.
    pub fn weights(&self) -> Result<PathBuf> {
        for (i, file) in WEIGHT_FILES.iter().enumerate() {
            match self.hub.file(&self.repo, &self.revision, file) {
                Ok(path) => return Ok(path),
                Err(HubError::FileNotFound { .. } | HubError::NotCached { .. }) if i + 1 < WEIGHT_FILES.len() => {}
                Err(HubError::FileNotFound { .. }) => {
                    bail!("model repository `{}` has none of {}", self.repo, WEIGHT_FILES.join(", "))
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last file returns")
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

const SUPPORTED: &str = "the zoo reads timm's vit_{tiny,small,base,large}_patch{16,32}_{224,384} and \
                         tnt_{s,b}_patch16_224, and transformers' DETR with a ResNet backbone (see `zoo models`)";

/// A timm ViT/TNT `config.json`: the architecture's hyper-parameters (as timm's model functions
/// set them), overridden by `model_args`; preprocessing from `pretrained_cfg`.
fn timm_config(json: &Value) -> Result<Value, String> {
    let architecture = json["architecture"].as_str().ok_or("`architecture` is not a string")?;
    let mut model = timm_architecture(architecture)
        .ok_or_else(|| format!("architecture `{architecture}` is not supported: {SUPPORTED}"))?;
    let cfg = &json["pretrained_cfg"];
    if let Some(size) = cfg.get("input_size").and_then(square_size) {
        model.insert("image_size".into(), size.into());
    }
    for (key, value) in json.get("model_args").and_then(Value::as_object).into_iter().flatten() {
        let field = match key.as_str() {
            "img_size" => {
                let size = square_size(value).ok_or_else(|| format!("model_args.img_size = {value} is not square"))?;
                model.insert("image_size".into(), size.into());
                continue;
            }
            "in_chans" => "in_channels",
            "patch_size" | "embed_dim" | "depth" | "num_heads" | "mlp_ratio" | "qkv_bias" | "num_classes"
            | "global_pool" | "inner_dim" | "num_heads_inner" | "num_heads_outer" => key.as_str(),
            other => {
                return Err(format!("model_args.{other} = {value} is a timm option the zoo's models do not have"));
            }
        };
        if !model.contains_key(field) && !matches!(field, "in_channels" | "num_classes" | "global_pool" | "mlp_ratio") {
            return Err(format!("model_args.{key} is not an option of {architecture}"));
        }
        model.insert(field.into(), value.clone());
    }
    for (key, field) in [("num_classes", "num_classes"), ("global_pool", "global_pool")] {
        if let Some(value) = json.get(key) {
            model.insert(field.into(), value.clone());
        }
    }
    match model.get("global_pool").and_then(Value::as_str) {
        Some("token" | "avg") => {}
        other => return Err(format!("global_pool = {other:?}: the zoo pools by \"token\" or \"avg\"")),
    }
    if model.get("num_classes").and_then(Value::as_u64) == Some(0) {
        return Err("num_classes = 0 (a feature extractor without a head) is not supported; pick a classifier".into());
    }
    let mut data = Map::new();
    for key in ["mean", "std", "crop_pct"] {
        if let Some(value) = cfg.get(key) {
            data.insert(key.into(), value.clone());
        }
    }
    match cfg.get("interpolation").and_then(Value::as_str) {
        Some(mode @ ("bicubic" | "bilinear")) => {
            data.insert("interpolation".into(), mode.into());
        }
        None => {}
        Some(other) => return Err(format!("pretrained_cfg.interpolation = \"{other}\" is not bicubic or bilinear")),
    }
    match cfg.get("crop_mode").and_then(Value::as_str) {
        None | Some("center") => {}
        Some(other) => return Err(format!("pretrained_cfg.crop_mode = \"{other}\": the zoo crops at the center")),
    }
    let classes = model.get("num_classes").and_then(Value::as_u64).unwrap_or(0) as usize;
    if let Some(labels) = timm_labels(json, classes)? {
        data.insert("label_names".into(), labels.into());
    }
    Ok(json!({ "model": model, "data": data }))
}

/// `[3, H, H]`, `[H, H]` or `H` -> `H`.
fn square_size(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::Array(dims) => {
            let dims: Vec<u64> = dims.iter().map(Value::as_u64).collect::<Option<_>>()?;
            match dims[..] {
                [3, h, w] | [h, w] if h == w => Some(h),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The hyper-parameters timm's model function of that name sets (`vit_base_patch16_224`:
/// patch 16, width 768, depth 12, 12 heads at 224 pixels).
fn timm_architecture(name: &str) -> Option<Map<String, Value>> {
    let model = |value: Value| value.as_object().cloned();
    if let Some(rest) = name.strip_prefix("vit_") {
        let (size, rest) = rest.split_once("_patch")?;
        let (patch, image) = rest.split_once('_')?;
        let (patch, image): (u64, u64) = (patch.parse().ok()?, image.parse().ok()?);
        let (embed_dim, depth, num_heads) = match size {
            "tiny" => (192, 12, 3),
            "small" => (384, 12, 6),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return None,
        };
        if !matches!(patch, 16 | 32) || !matches!(image, 224 | 384) {
            return None;
        }
        return model(json!({
            "arch": "vit", "image_size": image, "patch_size": patch, "embed_dim": embed_dim, "depth": depth,
            "num_heads": num_heads, "num_classes": 1000, "qkv_bias": true, "layer_norm_eps": 1e-6,
            "global_pool": "token",
        }));
    }
    let (embed_dim, inner_dim, num_heads_outer) = match name {
        "tnt_s_patch16_224" => (384, 24, 6),
        "tnt_b_patch16_224" => (640, 40, 10),
        _ => return None,
    };
    model(json!({
        "arch": "tnt", "image_size": 224, "patch_size": 16, "embed_dim": embed_dim, "inner_dim": inner_dim,
        "depth": 12, "num_heads_inner": 4, "num_heads_outer": num_heads_outer, "num_classes": 1000,
        "qkv_bias": false, "first_stride": 4, "layer_norm_eps": 1e-5, "global_pool": "token",
    }))
}

/// The repository's class names (`label_names`, or `label_descriptions` keyed by them), else
/// ImageNet-1k's for a 1000-class model.
fn timm_labels(json: &Value, classes: usize) -> Result<Option<Vec<String>>, String> {
    if let Some(names) = json.get("label_names").and_then(Value::as_array) {
        let names: Vec<String> = names.iter().map(|n| n.as_str().unwrap_or_default().to_string()).collect();
        if names.len() != classes {
            return Err(format!("label_names has {} names for {classes} classes", names.len()));
        }
        let descriptions = json.get("label_descriptions").and_then(Value::as_object);
        return Ok(Some(
            names
                .into_iter()
                .map(|n| descriptions.and_then(|d| d.get(&n)).and_then(Value::as_str).map_or(n, str::to_string))
                .collect(),
        ));
    }
    Ok((classes == 1000).then(|| IMAGENET_1K_LABELS.lines().map(str::to_string).collect()))
}

/// A transformers `DetrConfig` (`config.json`) with its image processor's resize and
/// normalisation (`preprocessor_config.json`, else `DetrImageProcessor`'s defaults).
fn detr_config(json: &Value, preprocessor: Option<&Value>) -> Result<Value, String> {
    let get = |key: &str| json.get(key).filter(|v| !v.is_null());
    let number =
        |key: &str| get(key).and_then(Value::as_u64).ok_or_else(|| format!("`{key}` is missing or not a count"));
    for (a, b) in [("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")] {
        if get(a).is_some() && get(b).is_some() && get(a) != get(b) {
            return Err(format!("`{a}` = {} differs from `{b}` = {}; the zoo's DETR has one value", json[a], json[b]));
        }
    }
    for (key, expected) in [("activation_function", "relu"), ("position_embedding_type", "sine")] {
        if let Some(value) = get(key).and_then(Value::as_str)
            && value != expected
        {
            return Err(format!("`{key}` = \"{value}\": the zoo's DETR has \"{expected}\""));
        }
    }
    if get("dilation").and_then(Value::as_bool) == Some(true) {
        return Err("`dilation` = true (DETR-DC5) is not supported".into());
    }
    let id2label = get("id2label").and_then(Value::as_object).ok_or("`id2label` is missing")?;
    let classes = id2label.len();
    let labels = (0..classes)
        .map(|i| {
            id2label
                .get(&i.to_string())
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("`id2label` has {classes} entries but not \"{i}\": ids must run from 0"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (backbone_layers, backbone_channels, stem) = detr_backbone(json)?;
    let mut model = json!({
        "arch": "detr",
        "num_classes": classes,
        "hidden_dim": number("d_model")?,
        "num_heads": number("encoder_attention_heads")?,
        "dim_feedforward": number("encoder_ffn_dim")?,
        "encoder_layers": number("encoder_layers")?,
        "decoder_layers": number("decoder_layers")?,
        "num_queries": number("num_queries")?,
        "backbone_layers": backbone_layers,
        "backbone_channels": backbone_channels,
        "backbone_stem_width": stem,
    });
    if let Some(dropout) = get("dropout") {
        model["dropout"] = dropout.clone();
    }
    // DetrImageProcessor: shorter side 800, longer at most 1333, ImageNet's mean and std.
    let mut data = json!({
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
        "label_names": labels,
    });
    if let Some(p) = preprocessor {
        if let Some(size) = p.get("size").and_then(Value::as_object) {
            for (key, field) in [("shortest_edge", "eval_short_side"), ("longest_edge", "eval_max_side")] {
                if let Some(v) = size.get(key) {
                    model[field] = v.clone();
                }
            }
        }
        for (key, field) in [("image_mean", "mean"), ("image_std", "std")] {
            if let Some(v) = p.get(key) {
                data[field] = v.clone();
            }
        }
        if p.get("do_normalize").and_then(Value::as_bool) == Some(false) {
            return Err("preprocessor_config.json: do_normalize = false is not supported".into());
        }
    }
    Ok(json!({ "model": model, "data": data }))
}

/// Bottleneck blocks per stage, their widths and the stem's width: from a timm backbone's name
/// (`backbone` = "resnet50" / "resnet101", the original DETR's) or transformers' own ResNet
/// (`backbone_config` of `model_type` "resnet").
fn detr_backbone(json: &Value) -> Result<([u64; 4], [u64; 4], u64), String> {
    let backbone_config = json.get("backbone_config").filter(|v| v.is_object());
    let use_timm = json.get("use_timm_backbone").and_then(Value::as_bool).unwrap_or(backbone_config.is_none());
    let config_type = backbone_config.and_then(|c| c["model_type"].as_str());
    if use_timm || config_type == Some("timm_backbone") {
        let name = json
            .get("backbone")
            .and_then(Value::as_str)
            .or_else(|| backbone_config.and_then(|c| c["backbone"].as_str()))
            .ok_or("neither `backbone` nor `backbone_config.backbone` names the timm backbone")?;
        let layers = match name {
            "resnet50" => [3, 4, 6, 3],
            "resnet101" => [3, 4, 23, 3],
            other => return Err(format!("backbone \"{other}\" is not supported (resnet50, resnet101)")),
        };
        return Ok((layers, [64, 128, 256, 512], 64));
    }
    let c = backbone_config.ok_or("`use_timm_backbone` is false and `backbone_config` is missing")?;
    if config_type != Some("resnet") {
        return Err(format!("backbone_config.model_type = {}: only ResNet backbones are supported", c["model_type"]));
    }
    if c["layer_type"].as_str() != Some("bottleneck") {
        return Err(format!(
            "backbone_config.layer_type = {}: the zoo's ResNet has bottleneck blocks",
            c["layer_type"]
        ));
    }
    for key in ["downsample_in_bottleneck", "downsample_in_first_stage"] {
        if c[key].as_bool() == Some(true) {
            return Err(format!(
                "backbone_config.{key} = true is not supported (torchvision's ResNet strides in the 3x3)"
            ));
        }
    }
    let four = |key: &str| -> Result<[u64; 4], String> {
        let values: Option<Vec<u64>> = c[key].as_array().and_then(|a| a.iter().map(Value::as_u64).collect());
        values.and_then(|v| v.try_into().ok()).ok_or(format!("backbone_config.{key} is not four counts"))
    };
    let widths = four("hidden_sizes")?;
    if widths.iter().any(|w| w % 4 != 0) {
        return Err(format!("backbone_config.hidden_sizes = {widths:?}: bottleneck outputs are 4x their width"));
    }
    let stem = c["embedding_size"].as_u64().ok_or("backbone_config.embedding_size is missing")?;
    Ok((four("depths")?, widths.map(|w| w / 4), stem))
}

/// Loading by Hub name, for programs that embed the zoo:
///
/// ```no_run
/// use zoo_infer::pretrained::FromPretrained;
/// use zoo_models::Classifier;
///
/// let device = burn::prelude::Device::default();
/// let (model, pretrained) = Classifier::from_pretrained("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", &device)?;
/// // pretrained.config: the preprocessing (resize, crop, mean, std) and the class names.
/// # anyhow::Ok(())
/// ```
pub trait FromPretrained: Sized {
    /// The model with its weights, and what it was made from (config, files).
    fn from_pretrained(name: &str, device: &Device) -> Result<(Self, Pretrained)>;
}

impl FromPretrained for Classifier {
    fn from_pretrained(name: &str, device: &Device) -> Result<(Self, Pretrained)> {
        let p = Pretrained::from_hub(name)?;
        let model = crate::classify::load_classifier(&p.config, &p.config_file, &p.weights()?, device)?;
        Ok((model, p))
    }
}

impl FromPretrained for Detr {
    fn from_pretrained(name: &str, device: &Device) -> Result<(Self, Pretrained)> {
        let p = Pretrained::from_hub(name)?;
        let model = crate::detect::load_detr(&p.config, &p.config_file, &p.weights()?, device)?;
        Ok((model, p))
    }
}

/// A model `zoo models` lists: its name and the ImageNet-1k / COCO figures upstream reports.
pub struct Listed {
    pub name: &'static str,
    /// top-1 / top-5 (ImageNet-1k val) or AP / AP50 (COCO val2017), in percent.
    pub scores: (f64, f64),
}

/// timm's `results/results-imagenet.csv` (commit aa4b585 of huggingface/pytorch-image-models,
/// 2026-08-08: top-1, top-5 on ImageNet-1k val at the model's input size and crop) and
/// facebookresearch/detr's README (DETR-R50: 42.0 AP, 62.4 AP50 on COCO val2017).
pub const LISTED: &[Listed] = &[
    Listed { name: "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", scores: (75.452, 92.858) },
    Listed { name: "timm/vit_tiny_patch16_384.augreg_in21k_ft_in1k", scores: (78.438, 94.542) },
    Listed { name: "timm/vit_small_patch16_224.augreg_in1k", scores: (78.842, 94.280) },
    Listed { name: "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", scores: (81.402, 96.150) },
    Listed { name: "timm/vit_small_patch16_384.augreg_in1k", scores: (81.130, 95.590) },
    Listed { name: "timm/vit_small_patch16_384.augreg_in21k_ft_in1k", scores: (83.814, 97.106) },
    Listed { name: "timm/vit_small_patch32_224.augreg_in21k_ft_in1k", scores: (76.010, 93.266) },
    Listed { name: "timm/vit_small_patch32_384.augreg_in21k_ft_in1k", scores: (80.476, 95.594) },
    Listed { name: "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", scores: (85.108, 97.530) },
    Listed { name: "timm/vit_base_patch16_224.augreg_in21k_ft_in1k", scores: (84.534, 97.300) },
    Listed { name: "timm/vit_base_patch16_224.augreg_in1k", scores: (79.154, 94.108) },
    Listed { name: "timm/vit_base_patch16_224.orig_in21k_ft_in1k", scores: (81.782, 96.122) },
    Listed { name: "timm/vit_base_patch16_224.sam_in1k", scores: (80.246, 94.764) },
    Listed { name: "timm/vit_base_patch16_384.augreg_in1k", scores: (81.102, 95.334) },
    Listed { name: "timm/vit_base_patch16_384.augreg_in21k_ft_in1k", scores: (86.010, 97.998) },
    Listed { name: "timm/vit_base_patch16_384.orig_in21k_ft_in1k", scores: (84.212, 97.210) },
    Listed { name: "timm/vit_base_patch32_224.augreg_in1k", scores: (74.908, 91.770) },
    Listed { name: "timm/vit_base_patch32_224.augreg_in21k_ft_in1k", scores: (80.732, 95.574) },
    Listed { name: "timm/vit_base_patch32_224.sam_in1k", scores: (73.704, 91.012) },
    Listed { name: "timm/vit_base_patch32_384.augreg_in1k", scores: (78.750, 94.238) },
    Listed { name: "timm/vit_base_patch32_384.augreg_in21k_ft_in1k", scores: (83.358, 96.828) },
    Listed { name: "timm/vit_large_patch16_224.augreg_in21k_ft_in1k", scores: (85.856, 97.822) },
    Listed { name: "timm/vit_large_patch16_384.augreg_in21k_ft_in1k", scores: (87.096, 98.302) },
    Listed { name: "timm/vit_large_patch32_384.orig_in21k_ft_in1k", scores: (81.508, 96.086) },
    Listed { name: "timm/tnt_s_patch16_224.in1k", scores: (81.506, 95.766) },
    Listed { name: "timm/tnt_b_patch16_224.in1k", scores: (82.864, 96.230) },
    Listed { name: "facebook/detr-resnet-50", scores: (42.0, 62.4) },
];

/// The config a listed name maps to, made without the Hub (from what its `config.json` says):
/// for `zoo models`' sizes and parameter counts.
pub fn listed_config(name: &str) -> Result<ZooConfig> {
    let table = if name == "facebook/detr-resnet-50" {
        let id2label: Map<String, Value> = zoo_datasets::coco::COCO_CATEGORY_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), Value::from(*n)))
            .collect();
        detr_config(
            &json!({
                "model_type": "detr", "d_model": 256, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
                "encoder_layers": 6, "decoder_layers": 6, "num_queries": 100, "backbone": "resnet50",
                "use_timm_backbone": true, "id2label": id2label,
            }),
            None,
        )
    } else {
        let architecture = name.trim_start_matches("timm/").split('.').next().unwrap_or_default();
        timm_config(&json!({ "architecture": architecture, "num_classes": 1000 }))
    }
    .map_err(|e| anyhow!("{name}: {e}"))?;
    ZooConfig::from_toml_str(&toml::to_string(&table)?).map_err(|e| anyhow!("{name}: {e}"))
}

/// `zoo models`: each listed name with its input, parameter count (of the zoo's model, built
/// lazily: no weights are made) and upstream's scores.
pub fn list_models(json: bool) -> Result<String> {
    let device = Device::default();
    let mut rows = Vec::new();
    for listed in LISTED {
        let config = listed_config(listed.name)?;
        // The input in words (JSON) and in the table's column.
        let (input, column, params, metric) = match &config.model {
            zoo_models::ModelConfig::Detr(c) => (
                format!("shorter side {} (at most {})", c.eval_short_side, c.eval_max_side),
                format!("{}-{}", c.eval_short_side, c.eval_max_side),
                c.init(&device).num_params(),
                ("AP", "AP50"),
            ),
            model => {
                let size = model.image_size().expect("a classifier");
                let classifier = Classifier::init(model, &device).expect("a classifier");
                (format!("{size}x{size}"), format!("{size}x{size}"), classifier.num_params(), ("top-1", "top-5"))
            }
        };
        rows.push((listed, input, column, params, metric));
    }
    if json {
        let array: Vec<Value> = rows
            .iter()
            .map(|(l, input, _, params, metric)| {
                json!({ "name": l.name, "input": input, "parameters": params, metric.0: l.scores.0, metric.1: l.scores.1 })
            })
            .collect();
        return Ok(format!("{}\n", Value::Array(array)));
    }
    let mut text =
        format!("{:<50} {:>10} {:>8}  {}\n", "model", "input", "params", "reported (ImageNet-1k val / COCO val2017)");
    for (l, _, column, params, metric) in &rows {
        text.push_str(&format!(
            "{:<50} {:>10} {:>7.1}M  {} {:.1}%, {} {:.1}%\n",
            l.name,
            column,
            *params as f64 / 1e6,
            metric.0,
            l.scores.0,
            metric.1,
            l.scores.1
        ));
    }
    text.push_str("scores: timm's results-imagenet.csv (ViT, TNT), facebookresearch/detr's README (DETR)\n");
    text.push_str("DETR's count includes its frozen batch norms' 0.1M constants (buffers in PyTorch)\n");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The zoo's models of the listed names have timm's parameter counts (timm's
    /// `results-imagenet.csv`, `param_count` in millions) and DETR-R50 facebookresearch/detr's.
    #[test]
    fn listed_models_have_the_references_parameter_counts() {
        let timm = [
            ("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", 5.72),
            ("timm/vit_small_patch16_384.augreg_in1k", 22.20),
            ("timm/vit_small_patch32_224.augreg_in21k_ft_in1k", 22.88),
            ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", 86.57),
            ("timm/vit_base_patch32_384.augreg_in1k", 88.30),
            ("timm/vit_large_patch16_224.augreg_in21k_ft_in1k", 304.33),
            ("timm/vit_large_patch32_384.orig_in21k_ft_in1k", 306.63),
            ("timm/tnt_s_patch16_224.in1k", 23.77),
            ("timm/tnt_b_patch16_224.in1k", 65.43),
        ];
        let device = Device::default();
        for (name, millions) in timm {
            let config = listed_config(name).unwrap();
            let params = Classifier::init(&config.model, &device).unwrap().num_params() as f64 / 1e6;
            assert!((params - millions).abs() < 0.006, "{name}: {params:.3}M, timm {millions}M");
        }
        // transformers' DetrForObjectDetection with 91 labels has 41,524,768 parameters; its
        // frozen batch norms keep 4 x 26,560 values (weight, bias, mean, variance) as buffers,
        // which the zoo holds as parameters that are never trained.
        let detr = listed_config("facebook/detr-resnet-50").unwrap();
        let zoo_models::ModelConfig::Detr(c) = &detr.model else { panic!("a DETR") };
        assert_eq!(c.init(&device).num_params(), 41_524_768 + 4 * 26_560);
        assert_eq!(c.num_classes, 91);
        assert_eq!(detr.labels().unwrap().unwrap()[1], "person");
    }

    /// facebook/detr-resnet-50's `config.json` (transformers 4.26 wrote it; keys that do not
    /// concern the model are left out) and the form transformers 5 saves it in.
    #[test]
    fn detr_configs_of_the_hub_map_to_detr_r50() {
        let id2label: Map<String, Value> =
            (0..91).map(|i| (i.to_string(), Value::from(if i == 1 { "person" } else { "N/A" }))).collect();
        let original = json!({
            "activation_function": "relu", "architectures": ["DetrForObjectDetection"], "backbone": "resnet50",
            "d_model": 256, "decoder_attention_heads": 8, "decoder_ffn_dim": 2048, "decoder_layers": 6,
            "dilation": false, "dropout": 0.1, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
            "encoder_layers": 6, "id2label": id2label, "model_type": "detr", "num_queries": 100,
            "position_embedding_type": "sine", "use_pretrained_backbone": true, "use_timm_backbone": true,
        });
        let mut v5 = original.clone();
        v5.as_object_mut().unwrap().remove("backbone");
        v5["backbone_config"] =
            json!({ "model_type": "timm_backbone", "backbone": "resnet50", "out_indices": [1, 2, 3, 4] });
        for config in [original.clone(), v5] {
            let table = detr_config(&config, Some(&json!({ "size": { "shortest_edge": 800, "longest_edge": 1333 } })));
            let model = &table.unwrap()["model"];
            assert_eq!(model["backbone_layers"], json!([3, 4, 6, 3]));
            assert_eq!(model["backbone_channels"], json!([64, 128, 256, 512]));
            assert_eq!((model["num_classes"].as_u64(), model["num_queries"].as_u64()), (Some(91), Some(100)));
            assert_eq!(model["eval_short_side"], 800);
        }
        let mut dc5 = original.clone();
        dc5["dilation"] = true.into();
        assert!(detr_config(&dc5, None).unwrap_err().contains("DC5"));
        let mut gelu = original;
        gelu["activation_function"] = "gelu".into();
        assert!(detr_config(&gelu, None).unwrap_err().contains("activation_function"));
    }

    #[test]
    fn timm_options_the_zoo_lacks_are_errors() {
        let config = |args: Value| {
            timm_config(&json!({ "architecture": "vit_base_patch16_224", "num_classes": 1000, "model_args": args }))
        };
        assert!(config(json!({ "depth": 2, "img_size": 32 })).is_ok());
        assert!(config(json!({ "class_token": false })).unwrap_err().contains("model_args.class_token"));
        assert!(config(json!({ "inner_dim": 4 })).unwrap_err().contains("not an option of vit_base_patch16_224"));
        assert!(config(json!({ "img_size": [32, 48] })).unwrap_err().contains("not square"));
        let err = timm_config(&json!({ "architecture": "deit_base_patch16_224" })).unwrap_err();
        assert!(err.contains("deit_base_patch16_224") && err.contains("tnt_{s,b}_patch16_224"), "{err}");
    }
}
