//! Data for the zoo: image decoding, the models' transforms, batching.

pub mod coco;
pub mod detection;
pub mod folder;
pub mod generate;
pub mod image_io;
pub mod transforms;

pub use detection::{DetrImage, DetrTransform, pad_batch};
pub use folder::ImageFolder;
pub use image_io::{DataError, load_rgb};
pub use transforms::{EvalTransform, TrainTransform};
