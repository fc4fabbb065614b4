//! The `zoo` command's building blocks: device selection, classification, conversion.

pub mod bench;
pub mod classify;
pub mod demo;
pub mod detect;
pub mod device;
pub mod draw;
pub mod eval;
pub mod npy;

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
