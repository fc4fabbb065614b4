//! Data for the zoo: image decoding, the models' transforms, batching.

pub mod coco;
pub mod coco_eval;
pub mod config;
pub mod detection;
pub mod folder;
pub mod generate;
pub mod generate_detection;
pub mod image_io;
pub mod transforms;

pub use coco::CocoDetection;
pub use config::{DataConfig, DetrAugmentConfig, Interpolation};
pub use detection::{DetrImage, DetrTarget, DetrTrainTransform, DetrTransform, PixelBoxes, pad_batch};
pub use folder::ImageFolder;
pub use image_io::{DataError, load_rgb};
pub use transforms::{EvalTransform, TrainTransform};
