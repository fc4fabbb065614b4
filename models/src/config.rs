//! The `[model]` section of the zoo's TOML config files: its `arch` picks the architecture, whose
//! config lives beside the model ([`VitConfig`], [`TntConfig`], [`DetrConfig`]). The other
//! sections belong to the crates that use them (`[data]` to the datasets, `[train]` and `[eval]`
//! to training), and the whole file is read by `zoo_train::ZooConfig`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detr::DetrConfig;
use crate::tnt::TntConfig;
use crate::vit::VitConfig;

/// The architecture and its hyper-parameters; `arch = "vit"` selects [`VitConfig`], `"tnt"`
/// [`TntConfig`], `"detr"` [`DetrConfig`].
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

    /// Checks the hyper-parameters; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Vit(c) => c.validate(),
            ModelConfig::Tnt(c) => c.validate(),
            ModelConfig::Detr(c) => c.validate(),
        }
    }

    /// Reads and validates the `[model]` section of a TOML config file (other sections are not
    /// looked at).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct ModelSection {
            model: ModelConfig,
        }
        let path = path.as_ref();
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let section: ModelSection = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        section.model.validate().map_err(invalid)?;
        Ok(section.model)
    }
}

/// A config file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}
