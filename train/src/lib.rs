//! Training for the zoo's models: one engine (`engine`) and a task per kind of model
//! (`classification`, `detection`).

pub mod checkpoint;
pub mod classification;
pub mod clip;
pub mod config;
pub mod detection;
pub mod detr_loss;
pub mod engine;
pub mod loader;
pub mod matcher;
pub mod mix;
pub mod optimizer;
pub mod plot;

pub use classification::{EpochMetrics, TrainReport, train_classifier};
pub use config::{EvalConfig, TrainConfig, ZooConfig};
pub use detection::{DetrEpochMetrics, DetrTrainReport, train_detr};
pub use engine::TrainOptions;
