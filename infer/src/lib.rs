//! The `zoo` command's building blocks: device selection, classification, conversion.

pub mod attention;
pub mod bench;
pub mod classify;
pub mod demo;
pub mod detect;
pub mod device;
pub mod draw;
pub mod eval;
pub mod hub;
pub mod npy;
pub mod pretrained;

/// COCO evaluation lives with the datasets (training scores with it too).
pub use zoo_datasets::coco_eval;

use std::path::PathBuf;

/// Where a command's inputs come from.
pub enum Inputs {
    /// Image files, transformed as the model's evaluation does.
    Images(Vec<PathBuf>),
    /// One preprocessed float32 `[B, 3, H, W]` batch.
    Npy(PathBuf),
}

/// A checkpoint that does not fit the model is also a question about the config that describes
/// the model: the error says which file that is.
pub fn weights_error(error: zoo_models::ImportError, config: &std::path::Path) -> anyhow::Error {
    match error {
        zoo_models::ImportError::Mismatch { .. } => anyhow::anyhow!(
            "{error}\n(the model is built from the [model] section of {}: do its sizes match the checkpoint's?)",
            config.display()
        ),
        error => error.into(),
    }
}
