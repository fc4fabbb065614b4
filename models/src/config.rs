//! The `[model]` section of the zoo's TOML config files: its `arch` picks the architecture, whose
//! config lives beside the model ([`VitConfig`], [`TntConfig`], [`DetrConfig`]). The other
//! sections belong to the crates that use them (`[data]` to the datasets, `[train]` and `[eval]`
//! to training), and the whole file is read by `zoo_train::ZooConfig`.

use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use crate::detr::DetrConfig;
use crate::tnt::TntConfig;
use crate::vit::VitConfig;

/// The architecture and its hyper-parameters; `arch = "vit"` selects [`VitConfig`], `"tnt"`
/// [`TntConfig`], `"detr"` [`DetrConfig`].
#[derive(Debug, Clone, Serialize)]
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

/// The section is read as a table, then as the config of its `arch`, so that an error names its
/// field (`model.embed_dim: invalid type ...`): serde's tagged enums lose the field's name.
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let arch = match table.remove("arch") {
            Some(toml::Value::String(arch)) => arch,
            Some(other) => return Err(D::Error::custom(format!("model.arch = {other} must be a string"))),
            None => return Err(D::Error::custom("model.arch is missing: give \"vit\", \"tnt\" or \"detr\"")),
        };
        fn section<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| match e.path().to_string() {
                root if root == "." => format!("model: {}", e.inner()),
                field => format!("model.{field}: {}", e.inner()),
            })
        }
        match arch.as_str() {
            "vit" => section(table).map(ModelConfig::Vit),
            "tnt" => section(table).map(ModelConfig::Tnt),
            "detr" => section(table).map(ModelConfig::Detr),
            other => Err(format!("model.arch = \"{other}\" is not one of \"vit\", \"tnt\", \"detr\"")),
        }
        .map_err(D::Error::custom)
    }
}

/// The floating-point type a device computes and keeps tensors in (`--precision`,
/// `train.precision`). Weights of any float type are converted to it when loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> burn::tensor::FloatDType {
        use burn::tensor::FloatDType;
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("`{other}` is not a precision: f32, f16 or bf16")),
        }
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
