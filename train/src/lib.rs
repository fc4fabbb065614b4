//! Training loops for the zoo's models.

pub mod checkpoint;
pub mod classification;
pub mod clip;
pub mod config;
pub mod detection;
pub mod detr_loss;
pub mod loader;
pub mod matcher;
pub mod mix;

pub use classification::{EpochMetrics, TrainOptions, TrainReport, train_classifier};
pub use config::{EvalConfig, TrainConfig, ZooConfig};
