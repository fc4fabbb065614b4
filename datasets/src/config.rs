//! The data sections of the zoo's TOML config files: `[data]` (preprocessing shared by training,
//! evaluation and inference) and `[train.detection]` (DETR's training augmentation).

use std::ops::Bound;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zoo_models::check;

/// The longest image side a resize may ask for.
pub const MAX_SIDE: usize = 8192;

/// How images are resampled when resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

/// Preprocessing and the class names (`[data]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    #[serde(default = "defaults::mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default = "defaults::std")]
    pub std: [f32; 3],
    /// Resampling filter of the eval resize.
    #[serde(default = "defaults::interpolation")]
    pub interpolation: Interpolation,
    /// Eval transform: resize the shorter side to floor(image_size / crop_pct), then center crop.
    #[serde(default = "defaults::crop_pct")]
    pub crop_pct: f64,
    /// Optional text file with one class name per line (line i = class i), relative to the config.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// The class names themselves (line i = class i), instead of a label file: what a model
    /// from the Hub brings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_names: Vec<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            mean: defaults::mean(),
            std: defaults::std(),
            interpolation: defaults::interpolation(),
            crop_pct: defaults::crop_pct(),
            labels: None,
            label_names: Vec::new(),
        }
    }
}

impl DataConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        // The eval resize makes the shorter side image_size / crop_pct: 20x at most.
        check::number("data.crop_pct", self.crop_pct, 0.05..=1.0)?;
        if self.labels.is_some() && !self.label_names.is_empty() {
            return Err("give data.labels (a file) or data.label_names, not both".into());
        }
        for (c, (&mean, &std)) in self.mean.iter().zip(&self.std).enumerate() {
            check::number(&format!("data.mean[{c}]"), mean.into(), ..)?;
            check::number(&format!("data.std[{c}]"), std.into(), (Bound::Excluded(0.0), Bound::Unbounded))?;
        }
        Ok(())
    }

    /// Class names from `label_names`, or from `labels` if a label file is named.
    pub fn labels(&self) -> std::io::Result<Option<Vec<String>>> {
        if !self.label_names.is_empty() {
            return Ok(Some(self.label_names.clone()));
        }
        let Some(path) = &self.labels else { return Ok(None) };
        let text = std::fs::read_to_string(path)?;
        Ok(Some(text.lines().map(|l| l.trim().to_string()).collect()))
    }
}

/// DETR's training augmentation (`[train.detection]`; its defaults are the paper's, for COCO).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetrAugmentConfig {
    /// Shorter sides of the multi-scale resize, one picked per image.
    #[serde(default = "defaults::detr_scales")]
    pub scales: Vec<usize>,
    /// The longer side never exceeds this after the multi-scale resize.
    #[serde(default = "defaults::detr_max_size")]
    pub max_size: usize,
    /// Half of the images are first resized to one of these shorter sides and randomly cropped;
    /// empty turns the crop off.
    #[serde(default = "defaults::detr_crop_scales")]
    pub crop_scales: Vec<usize>,
    /// Smallest and largest width and height of the random crop.
    #[serde(default = "defaults::detr_crop_size")]
    pub crop_size: [usize; 2],
}

impl Default for DetrAugmentConfig {
    fn default() -> Self {
        Self {
            scales: defaults::detr_scales(),
            max_size: defaults::detr_max_size(),
            crop_scales: defaults::detr_crop_scales(),
            crop_size: defaults::detr_crop_size(),
        }
    }
}

impl DetrAugmentConfig {
    /// Checks the sizes; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.scales.is_empty() {
            return Err("train.detection.scales must not be empty".into());
        }
        for (i, &scale) in self.scales.iter().enumerate() {
            check::count(&format!("train.detection.scales[{i}]"), scale, MAX_SIDE)?;
        }
        for (i, &scale) in self.crop_scales.iter().enumerate() {
            check::count(&format!("train.detection.crop_scales[{i}]"), scale, MAX_SIDE)?;
        }
        check::count("train.detection.max_size", self.max_size, MAX_SIDE)?;
        if self.crop_size[0] == 0 || self.crop_size[0] > self.crop_size[1] || self.crop_size[1] > MAX_SIDE {
            return Err(format!(
                "train.detection.crop_size = {:?} must be [min, max] with 0 < min <= max <= {MAX_SIDE}",
                self.crop_size
            ));
        }
        Ok(())
    }
}

/// Defaults of the fields above (serde needs them as functions).
mod defaults {
    use super::Interpolation;

    /// timm's ViTs (augreg) normalise with mean 0.5 and std 0.5 per channel.
    pub fn mean() -> [f32; 3] {
        [0.5, 0.5, 0.5]
    }
    pub fn std() -> [f32; 3] {
        [0.5, 0.5, 0.5]
    }
    pub fn interpolation() -> Interpolation {
        Interpolation::Bicubic
    }
    /// timm's default eval crop: 224 out of a 248-pixel shorter side.
    pub fn crop_pct() -> f64 {
        0.9
    }
    /// DETR's multi-scale training sizes: 480 to 800 in steps of 32.
    pub fn detr_scales() -> Vec<usize> {
        (480..=800).step_by(32).collect()
    }
    pub fn detr_max_size() -> usize {
        1333
    }
    pub fn detr_crop_scales() -> Vec<usize> {
        vec![400, 500, 600]
    }
    pub fn detr_crop_size() -> [usize; 2] {
        [384, 600]
    }
}
