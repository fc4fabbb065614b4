//! One config system for every model: a TOML file with a `[model]` section (its `arch` picks the
//! architecture), a `[data]` section (preprocessing and dataset paths) and an `[eval]` section.
//! Unknown and missing fields are errors that name the file and the field.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::detr::DetrConfig;
use crate::tnt::TntConfig;
use crate::vit::VitConfig;

/// A whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZooConfig {
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Present in configs that can be trained.
    #[serde(default)]
    pub train: Option<TrainConfig>,
}

/// The architecture and its hyper-parameters; `arch = "vit"` selects [`VitConfig`], `"tnt"` [`TntConfig`], `"detr"` [`DetrConfig`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelConfig {
    Vit(VitConfig),
    Tnt(TntConfig),
    Detr(DetrConfig),
}

impl ModelConfig {
    pub fn arch(&self) -> &'static str {
        match self {
            ModelConfig::Vit(_) => "vit",
            ModelConfig::Tnt(_) => "tnt",
            ModelConfig::Detr(_) => "detr",
        }
    }

    /// Classes the model predicts (for DETR, without its "no object" column).
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_classes,
            ModelConfig::Tnt(c) => c.num_classes,
            ModelConfig::Detr(c) => c.num_classes,
        }
    }

    /// The square input size of a classifier; DETR takes images of any size.
    pub fn image_size(&self) -> Option<usize> {
        match self {
            ModelConfig::Vit(c) => Some(c.image_size),
            ModelConfig::Tnt(c) => Some(c.image_size),
            ModelConfig::Detr(_) => None,
        }
    }
}

/// How images are resampled when resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

/// Preprocessing and dataset locations.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Resampling filter of the eval resize.
    #[serde(default = "default_interpolation")]
    pub interpolation: Interpolation,
    /// Eval transform: resize the shorter side to floor(image_size / crop_pct), then center crop.
    #[serde(default = "default_crop_pct")]
    pub crop_pct: f64,
    /// Optional text file with one class name per line (line i = class i), relative to the config.
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            mean: default_mean(),
            std: default_std(),
            interpolation: default_interpolation(),
            crop_pct: default_crop_pct(),
            labels: None,
        }
    }
}

fn default_mean() -> [f32; 3] {
    [0.5, 0.5, 0.5]
}
fn default_std() -> [f32; 3] {
    [0.5, 0.5, 0.5]
}
fn default_interpolation() -> Interpolation {
    Interpolation::Bicubic
}
fn default_crop_pct() -> f64 {
    0.9
}

/// Evaluation and inference settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { batch_size: default_eval_batch() }
    }
}

fn default_eval_batch() -> usize {
    8
}

/// How a classifier is trained (timm/DeiT-style recipe).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Training images in the ImageNet layout (`<class>/<image>`), relative to the config file.
    pub train_dir: PathBuf,
    /// Validation images, same layout and the same class folders.
    pub val_dir: PathBuf,
    /// Where checkpoints, metrics and the exported models go, relative to the working directory.
    pub output_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW, reached after the warmup.
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_epochs: usize,
    /// AdamW weight decay, applied to weight matrices and convolution kernels only (not to
    /// biases, norms, class tokens or position embeddings), as timm does.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Scale the gradients down when their global L2 norm (over every parameter, as
    /// `torch.nn.utils.clip_grad_norm_`) exceeds this; 0 turns clipping off.
    #[serde(default)]
    pub grad_clip: f64,
    /// Optimizer steps every `grad_accum` batches.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Mixup's Beta(alpha, alpha); 0 turns it off.
    #[serde(default)]
    pub mixup_alpha: f64,
    /// CutMix's Beta(alpha, alpha); 0 turns it off.
    #[serde(default)]
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    #[serde(default = "one_f64")]
    pub mix_prob: f64,
    /// When both are on: probability of CutMix rather than mixup.
    #[serde(default = "half")]
    pub switch_prob: f64,
    /// Random resized crop: smallest fraction of the image area kept.
    #[serde(default = "default_scale_min")]
    pub scale_min: f64,
    #[serde(default = "half")]
    pub hflip: f64,
    #[serde(default)]
    pub seed: u64,
    /// Start from these weights (timm .safetensors/.pth or .bpk); a head of another size is
    /// left at its initialisation (fine-tuning to a new number of classes).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Skip images that cannot be decoded (reported and counted) instead of stopping.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Train data-parallel on these devices (`flex`, `ndarray`, `tch`, `wgpu`, `wgpu:N` for the
    /// N-th discrete GPU): each takes an even share of every batch on its own copy of the model,
    /// and the gradients are summed on the first, which holds the optimizer. Empty: the command's
    /// `--device`. Classifiers only.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Step schedule instead of warmup + cosine: the learning rate is multiplied by 0.1 after
    /// this many epochs (DETR: 200 of 300).
    #[serde(default)]
    pub lr_drop: Option<usize>,
    /// Detection: COCO `instances_*.json` of the training images (`train_dir`) and of the
    /// validation images (`val_dir`), relative to the config file.
    #[serde(default)]
    pub train_annotations: Option<PathBuf>,
    #[serde(default)]
    pub val_annotations: Option<PathBuf>,
    /// Detection: torchvision ResNet weights (the ImageNet `resnet50-0676ba61.pth` for DETR-R50)
    /// for the backbone of a model trained from the start, as DETR does; relative to the config.
    #[serde(default)]
    pub backbone_init: Option<PathBuf>,
    /// Detection: learning rate of the backbone (DETR: 1e-5 against 1e-4 for the rest).
    #[serde(default)]
    pub backbone_lr: Option<f64>,
    /// Detection: leading parts of the backbone kept frozen, in the order stem, layer1, ...,
    /// layer4. DETR, starting from ImageNet weights, freezes the stem and layer1 (2); 0 trains
    /// the whole backbone (from scratch), 5 none of it.
    #[serde(default = "two")]
    pub frozen_backbone_parts: usize,
    /// Detection: DETR's training augmentation.
    #[serde(default)]
    pub detection: DetrAugmentConfig,
}

/// DETR's training augmentation (its defaults are the paper's, for COCO).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetrAugmentConfig {
    /// Shorter sides of the multi-scale resize, one picked per image.
    #[serde(default = "detr_scales")]
    pub scales: Vec<usize>,
    /// The longer side never exceeds this after the multi-scale resize.
    #[serde(default = "detr_max_size")]
    pub max_size: usize,
    /// Half of the images are first resized to one of these shorter sides and randomly cropped;
    /// empty turns the crop off.
    #[serde(default = "detr_crop_scales")]
    pub crop_scales: Vec<usize>,
    /// Smallest and largest width and height of the random crop.
    #[serde(default = "detr_crop_size")]
    pub crop_size: [usize; 2],
}

impl Default for DetrAugmentConfig {
    fn default() -> Self {
        Self {
            scales: detr_scales(),
            max_size: detr_max_size(),
            crop_scales: detr_crop_scales(),
            crop_size: detr_crop_size(),
        }
    }
}

fn detr_scales() -> Vec<usize> {
    (480..=800).step_by(32).collect()
}
fn detr_max_size() -> usize {
    1333
}
fn detr_crop_scales() -> Vec<usize> {
    vec![400, 500, 600]
}
fn detr_crop_size() -> [usize; 2] {
    [384, 600]
}

fn default_weight_decay() -> f64 {
    0.05
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn one_f64() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn default_scale_min() -> f64 {
    0.08
}

impl TrainConfig {
    fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return Err("train.epochs, train.batch_size and train.grad_accum must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) || self.min_lr < 0.0 || self.min_lr > self.lr {
            return Err(format!(
                "train.lr = {} must be in (0, 1] and train.min_lr = {} in [0, lr]",
                self.lr, self.min_lr
            ));
        }
        if self.warmup_epochs >= self.epochs {
            return Err(format!(
                "train.warmup_epochs = {} must be less than train.epochs = {}",
                self.warmup_epochs, self.epochs
            ));
        }
        for (name, p) in [
            ("mix_prob", self.mix_prob),
            ("switch_prob", self.switch_prob),
            ("hflip", self.hflip),
            ("label_smoothing", self.label_smoothing),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("train.{name} = {p} must be in [0, 1]"));
            }
        }
        if !(self.scale_min > 0.0 && self.scale_min <= 1.0) {
            return Err(format!("train.scale_min = {} must be in (0, 1]", self.scale_min));
        }
        if let Some(drop) = self.lr_drop
            && (drop == 0 || drop > self.epochs)
        {
            return Err(format!("train.lr_drop = {drop} must be in [1, train.epochs = {}]", self.epochs));
        }
        if self.init_from.is_some() && self.backbone_init.is_some() {
            return Err("give train.init_from (a whole model) or train.backbone_init (its backbone), not both".into());
        }
        if self.frozen_backbone_parts > 5 {
            return Err(format!(
                "train.frozen_backbone_parts = {} must be at most 5 (stem and four stages)",
                self.frozen_backbone_parts
            ));
        }
        let d = &self.detection;
        if d.scales.is_empty() || d.scales.contains(&0) || d.max_size == 0 || d.crop_scales.contains(&0) {
            return Err("train.detection.scales must not be empty, and no size may be 0".into());
        }
        if d.crop_size[0] == 0 || d.crop_size[0] > d.crop_size[1] {
            return Err(format!(
                "train.detection.crop_size = {:?} must be [min, max] with 0 < min <= max",
                d.crop_size
            ));
        }
        Ok(())
    }
}

/// Defaults shared by the model configs (serde needs them as functions).
pub(crate) mod defaults {
    use crate::vit::GlobalPool;

    /// RGB input.
    pub fn three() -> usize {
        3
    }
    /// The MLP's hidden width over its input width.
    pub fn four() -> f64 {
        4.0
    }
    pub fn token_pool() -> GlobalPool {
        GlobalPool::Token
    }
}

/// The image must cut into whole patches.
pub(crate) fn check_patch_grid(image_size: usize, patch_size: usize) -> Result<(), String> {
    if patch_size == 0 || image_size % patch_size != 0 {
        return Err(format!(
            "model.image_size = {image_size} must be a positive multiple of model.patch_size = {patch_size}"
        ));
    }
    Ok(())
}

/// A config file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ZooConfig {
    /// Reads and validates a TOML config; relative paths inside it are resolved against its folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let mut config =
            Self::from_toml_str(&text).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        if let Some(dir) = path.parent() {
            let resolve = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            if let Some(labels) = &mut config.data.labels {
                resolve(labels);
            }
            if let Some(train) = &mut config.train {
                resolve(&mut train.train_dir);
                resolve(&mut train.val_dir);
                for path in [
                    &mut train.init_from,
                    &mut train.backbone_init,
                    &mut train.train_annotations,
                    &mut train.val_annotations,
                ]
                .into_iter()
                .flatten()
                {
                    resolve(path);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates TOML text; the error says which field is wrong and why.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match &self.model {
            ModelConfig::Vit(c) => c.validate()?,
            ModelConfig::Tnt(c) => c.validate()?,
            ModelConfig::Detr(c) => c.validate()?,
        }
        let d = &self.data;
        if !(d.crop_pct > 0.0 && d.crop_pct <= 1.0) {
            return Err(format!("data.crop_pct = {} must be in (0, 1]", d.crop_pct));
        }
        if d.std.iter().any(|s| *s <= 0.0) {
            return Err(format!("data.std = {:?} must be positive", d.std));
        }
        if let Some(train) = &self.train {
            train.validate()?;
            let detector = matches!(self.model, ModelConfig::Detr(_));
            let has_annotations = train.train_annotations.is_some() && train.val_annotations.is_some();
            if detector != has_annotations {
                return Err(if detector {
                    "a detector's [train] needs train_annotations and val_annotations (COCO instances JSON)".into()
                } else {
                    "train_annotations and val_annotations are for detectors; a classifier reads class folders".into()
                });
            }
        }
        if self.eval.batch_size == 0 {
            return Err("eval.batch_size must be at least 1".into());
        }
        Ok(())
    }

    /// Class names from `data.labels`, if the config names a label file.
    pub fn labels(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(path) = &self.data.labels else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.clone(), source })?;
        Ok(Some(text.lines().map(|l| l.trim().to_string()).collect()))
    }
}
