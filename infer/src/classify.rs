//! `zoo classify`: top-k classes for images or a preprocessed batch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use zoo_datasets::{EvalTransform, load_rgb};
use zoo_models::Classifier;
use zoo_train::ZooConfig;

use crate::{Inputs, npy};

/// Builds the classifier of a config and loads its weights.
pub fn load_classifier(config: &ZooConfig, config_path: &Path, weights: &Path, device: &Device) -> Result<Classifier> {
    let Some(model) = Classifier::init(&config.model, device) else {
        bail!("{}: model arch `{}` is not a classifier", config_path.display(), config.model.arch());
    };
    model.load(weights).map_err(|e| crate::weights_error(e, config_path))
}

#[derive(Debug, Serialize)]
pub struct TopK {
    pub class: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub probability: f32,
}

#[derive(Debug, Serialize)]
pub struct Classification {
    pub inputs: Vec<String>,
    pub logits: Vec<Vec<f32>>,
    pub top_k: Vec<Vec<TopK>>,
}

/// Decodes and transforms images on all cores, in the given order.
pub fn transform_images(paths: &[PathBuf], transform: &EvalTransform) -> Result<Vec<Vec<f32>>> {
    paths.par_iter().map(|p| Ok(transform.apply(&load_rgb(p)?))).collect()
}

pub fn classify(
    model: &Classifier,
    config: &ZooConfig,
    inputs: &Inputs,
    k: usize,
    device: &Device,
) -> Result<Classification> {
    let Some(size) = config.model.image_size() else {
        bail!("model arch `{}` is not a classifier", config.model.arch());
    };
    let labels = config.labels()?;
    let mut logits = Vec::new();
    let names: Vec<String> = match inputs {
        Inputs::Npy(path) => {
            let x = npy::read_batch(path, device)?;
            let [b, c, h, w] = x.dims();
            if c != 3 || h != size || w != size {
                bail!(
                    "input {}: shape [{b}, {c}, {h}, {w}] given, [batch, 3, {size}, {size}] expected by the config",
                    path.display()
                );
            }
            logits.push(model.forward(x));
            (0..b).map(|i| format!("{}[{i}]", path.display())).collect()
        }
        Inputs::Images(paths) => {
            let transform = EvalTransform::new(size, &config.data);
            for chunk in paths.chunks(config.eval.batch_size) {
                let batch = transform_images(chunk, &transform)?;
                logits.push(model.forward(transform.batch(batch, device)));
            }
            paths.iter().map(|p| p.display().to_string()).collect()
        }
    };
    let logits = Tensor::cat(logits, 0);
    let [b, classes] = logits.dims();
    let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().context("reading logits")?;
    // Probabilities in float32 on the host, whatever the device computes in.
    let probs: Vec<f32> = logits.chunks(classes).flat_map(softmax_row).collect();
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        bail!("the model's logits for {} hold NaN or infinite values: the computation overflowed", names[i / classes]);
    }
    let top_k = probs
        .chunks(classes)
        .map(|p| {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            order
                .into_iter()
                .take(k)
                .map(|class| TopK { class, label: labels.as_ref().map(|l| l[class].clone()), probability: p[class] })
                .collect()
        })
        .collect();
    debug_assert_eq!(logits.len(), b * classes);
    Ok(Classification { inputs: names, logits: logits.chunks(classes).map(<[f32]>::to_vec).collect(), top_k })
}

/// `exp(x - max) / sum`, in float64.
fn softmax_row(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

impl Classification {
    /// One block per input: its name, then `rank. class (label) probability`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (name, top) in self.inputs.iter().zip(&self.top_k) {
            s.push_str(&format!("{name}\n"));
            for (rank, t) in top.iter().enumerate() {
                let label = t.label.as_deref().map(|l| format!(" {l}")).unwrap_or_default();
                s.push_str(&format!("  {}. class {}{label}: {:.4}\n", rank + 1, t.class, t.probability));
            }
        }
        s
    }
}
