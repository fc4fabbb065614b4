//! The `zoo` command's building blocks: device selection, classification, conversion.

pub mod classify;
pub mod coco_eval;
pub mod device;
pub mod npy;
