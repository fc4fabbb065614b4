//! Data for the zoo: image decoding, the models' transforms, batching.

pub mod image_io;
pub mod transforms;

pub use image_io::{DataError, load_rgb};
pub use transforms::EvalTransform;
