//! The zoo's models as Burn modules: ViT, TNT and DETR, built from the shared TOML configs,
//! with weight import from the checkpoints their reference implementations write.

pub mod box_ops;
pub mod check;
pub mod classifier;
pub mod common;
pub mod config;
pub mod detr;
pub mod import;
pub mod layers;
pub mod ops;
pub mod resample;
pub mod resnet;
pub mod tnt;
pub mod vit;

pub use classifier::Classifier;
pub use config::{ConfigError, ModelConfig};
pub use import::{ImportError, load_weights, load_weights_for_finetuning, save_burnpack};
