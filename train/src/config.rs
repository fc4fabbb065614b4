//! A whole config file, [`ZooConfig`]: the `[model]` section (the models' crate), `[data]` (the
//! datasets' crate), and the sections that training owns, `[train]` and `[eval]`. Unknown and
//! missing fields are errors that name the file and the field.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zoo_datasets::config::{DataConfig, DetrAugmentConfig, MAX_SIDE};
use zoo_models::ModelConfig;
use zoo_models::check;
pub use zoo_models::config::ConfigError;
use zoo_models::config::Precision;

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

/// Evaluation and inference settings (`[eval]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "defaults::eval_batch_size")]
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { batch_size: defaults::eval_batch_size() }
    }
}

/// How a model is trained (`[train]`): for classifiers timm's / DeiT's recipe, for DETR its
/// `main.py`.
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
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Scale the gradients down when their global L2 norm (over every parameter, as
    /// `torch.nn.utils.clip_grad_norm_`) exceeds this; 0 turns clipping off.
    #[serde(default)]
    pub grad_clip: f64,
    /// Optimizer steps every `grad_accum` batches.
    #[serde(default = "defaults::grad_accum")]
    pub grad_accum: usize,
    /// Mixup's Beta(alpha, alpha); 0 turns it off.
    #[serde(default)]
    pub mixup_alpha: f64,
    /// CutMix's Beta(alpha, alpha); 0 turns it off.
    #[serde(default)]
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    #[serde(default = "defaults::mix_prob")]
    pub mix_prob: f64,
    /// When both are on: probability of CutMix rather than mixup.
    #[serde(default = "defaults::switch_prob")]
    pub switch_prob: f64,
    /// Random resized crop: smallest fraction of the image area kept.
    #[serde(default = "defaults::scale_min")]
    pub scale_min: f64,
    /// Probability of a horizontal flip.
    #[serde(default = "defaults::hflip")]
    pub hflip: f64,
    #[serde(default)]
    pub seed: u64,
    /// Start from these weights (timm .safetensors/.pth or .bpk, or a Hub model by name such as
    /// `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`); a head of another size is left at its
    /// initialisation (fine-tuning to a new number of classes).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Skip images that cannot be decoded (reported and counted) instead of stopping.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Train data-parallel on these devices (any `--device` name: `tch:cuda:N`, `wgpu:N` for the
    /// N-th discrete GPU): each takes an even share of every batch on its own copy of the model,
    /// and the gradients are summed on the first, which holds the optimizer. Empty: the command's
    /// `--device`. Classifiers only.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Float type of the whole training (weights, activations, gradients, optimizer state):
    /// `f32`, or `bf16` / `f16` on devices that have them (`zoo devices`); `--precision` overrides.
    #[serde(default)]
    pub precision: Precision,
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
    #[serde(default = "defaults::frozen_backbone_parts")]
    pub frozen_backbone_parts: usize,
    /// Detection: DETR's training augmentation.
    #[serde(default)]
    pub detection: DetrAugmentConfig,
}

/// `owner/name` (or `owner/name@revision`) as the Hugging Face Hub names models: two parts of
/// letters, digits, `-`, `_` and `.`, the second not a weights file's name.
pub fn is_hub_name(path: &Path) -> bool {
    let Some(text) = path.to_str() else { return false };
    let repo = text.split_once('@').map_or(text, |(repo, _)| repo);
    let part = |s: &str| {
        !s.is_empty() && !s.starts_with(['.', '-']) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let weights = [".safetensors", ".pth", ".pt", ".bin", ".bpk"];
    matches!(repo.split_once('/'), Some((owner, name)) if part(owner) && part(name) && !weights.iter().any(|w| name.ends_with(w)))
}

/// Defaults of the fields above (serde needs them as functions).
mod defaults {
    pub fn eval_batch_size() -> usize {
        8
    }
    /// DeiT's AdamW weight decay.
    pub fn weight_decay() -> f64 {
        0.05
    }
    /// An optimizer step after every batch.
    pub fn grad_accum() -> usize {
        1
    }
    /// Every batch is mixed when mixup or CutMix is on.
    pub fn mix_prob() -> f64 {
        1.0
    }
    /// timm's even choice between mixup and CutMix.
    pub fn switch_prob() -> f64 {
        0.5
    }
    /// timm's `RandomResizedCrop` keeps from 8% of the image area.
    pub fn scale_min() -> f64 {
        0.08
    }
    pub fn hflip() -> f64 {
        0.5
    }
    /// DETR freezes the stem and layer1 of its ImageNet-initialised backbone.
    pub fn frozen_backbone_parts() -> usize {
        2
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<(), String> {
        check::count("train.epochs", self.epochs, 1_000_000)?;
        check::count("train.batch_size", self.batch_size, 100_000)?;
        check::count("train.grad_accum", self.grad_accum, 10_000)?;
        check::number("train.lr", self.lr, (Bound::Excluded(0.0), Bound::Included(1.0)))?;
        check::number("train.min_lr", self.min_lr, 0.0..=self.lr)?;
        if let Some(lr) = self.backbone_lr {
            check::number("train.backbone_lr", lr, 0.0..=1.0)?;
        }
        check::number("train.weight_decay", self.weight_decay, 0.0..=10.0)?;
        check::number("train.grad_clip", self.grad_clip, 0.0..)?;
        check::number("train.label_smoothing", self.label_smoothing, 0.0..1.0)?;
        for (name, alpha) in [("mixup_alpha", self.mixup_alpha), ("cutmix_alpha", self.cutmix_alpha)] {
            check::number(&format!("train.{name}"), alpha, 0.0..=100.0)?;
        }
        for (name, p) in [("mix_prob", self.mix_prob), ("switch_prob", self.switch_prob), ("hflip", self.hflip)] {
            check::number(&format!("train.{name}"), p, 0.0..=1.0)?;
        }
        check::number("train.scale_min", self.scale_min, (Bound::Excluded(0.0), Bound::Included(1.0)))?;
        if self.warmup_epochs >= self.epochs {
            return Err(format!(
                "train.warmup_epochs = {} must be less than train.epochs = {}",
                self.warmup_epochs, self.epochs
            ));
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
        self.detection.validate()
    }
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
                // `init_from = "owner/name"` names a Hub model when no such file is beside the config.
                if let Some(init) = &mut train.init_from
                    && (!is_hub_name(init) || dir.join(&*init).exists())
                {
                    resolve(init);
                }
                for path in [&mut train.backbone_init, &mut train.train_annotations, &mut train.val_annotations]
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
        self.model.validate()?;
        self.data.validate()?;
        if let Some(size) = self.model.image_size()
            && size as f64 / self.data.crop_pct > MAX_SIDE as f64
        {
            return Err(format!(
                "data.crop_pct = {} resizes images to a shorter side of {:.0} before the {size}-pixel crop, more than {MAX_SIDE}",
                self.data.crop_pct,
                size as f64 / self.data.crop_pct
            ));
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
        let names = self.data.label_names.len();
        if names != 0 && names != self.model.num_classes() {
            return Err(format!(
                "data.label_names has {names} names, but model.num_classes is {}",
                self.model.num_classes()
            ));
        }
        check::count("eval.batch_size", self.eval.batch_size, 4096)
    }

    /// Class names from `data.labels`, if the config names a label file: one per class of the model.
    pub fn labels(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let path = self.data.labels.clone().unwrap_or_default();
        let labels = self.data.labels().map_err(|source| ConfigError::Io { path: path.clone(), source })?;
        if let Some(labels) = &labels
            && labels.len() != self.model.num_classes()
        {
            return Err(ConfigError::Invalid {
                path,
                message: format!(
                    "the label file (data.labels) has {} lines, one per class, but model.num_classes is {}",
                    labels.len(),
                    self.model.num_classes()
                ),
            });
        }
        Ok(labels)
    }
}
