//! `zoo bench`: images per second of inference (or of a full training step) after a warm-up,
//! and the process's peak resident memory.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::Serialize;
use zoo_models::{Classifier, ModelConfig};
use zoo_train::ZooConfig;
use zoo_train::classification::soft_cross_entropy;
use zoo_train::detr_loss::{DetrTarget, SetCriterion};
use zoo_train::optimizer::FusedAdamW;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
    pub train: bool,
    /// DETR's input size (height, width).
    pub detr_size: (usize, usize),
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub mode: String,
    pub device: String,
    pub batch: usize,
    pub iters: usize,
    pub input: [usize; 4],
    pub images_per_sec: f64,
    pub ms_per_batch: f64,
    pub peak_rss_mb: f64,
}

/// The process's peak resident set size (VmHWM) in MiB, where the OS reports it.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Seconds per call of `step`: the median over `iters` timed calls after `warmup` untimed ones
/// (the median, so that a call slowed by something else on the machine does not count);
/// `step` must wait for its result.
fn time(warmup: usize, iters: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        step();
    }
    let mut seconds: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let mid = seconds.len() / 2;
    if seconds.len() % 2 == 1 { seconds[mid] } else { (seconds[mid - 1] + seconds[mid]) / 2.0 }
}

pub fn bench(config: &ZooConfig, device: &Device, opts: &BenchOptions) -> Result<BenchResult> {
    let b = opts.batch;
    let (input, seconds) = match &config.model {
        ModelConfig::Detr(c) => {
            let (h, w) = opts.detr_size;
            let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
            let s = if opts.train {
                // Forward through every decoder layer, the set criterion (matching included),
                // backward, AdamW; five boxes per image.
                let device = device.clone().autodiff();
                let mut model = c.init(&device);
                let mut optim = ModuleOptimizer::from(FusedAdamW::new(1e-4, 1e-8));
                let x = Tensor::<4>::random([b, 3, h, w], dist, &device);
                let mask = Tensor::<3, Bool>::full([b, h, w], false, &device);
                let targets: Vec<DetrTarget> = (0..b)
                    .map(|i| DetrTarget {
                        labels: (0..5).map(|k| 1 + (7 * i + 13 * k) % (c.num_classes - 1)).collect(),
                        boxes: (0..5).map(|k| [0.1 + 0.15 * k as f32, 0.3 + 0.1 * i as f32, 0.1, 0.2]).collect(),
                    })
                    .collect();
                let criterion = SetCriterion::default();
                let mut failed = None;
                let s = time(opts.warmup, opts.iters, || {
                    match criterion.loss(&model.forward_all(x.clone(), mask.clone()), &targets) {
                        Ok((loss, _)) => {
                            let grads = GradientsParams::from_grads(loss.backward(), &model);
                            model = optim.step(1e-4, model.clone(), grads);
                            let _ = loss.into_data();
                        }
                        Err(e) => failed = Some(e),
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                s
            } else {
                let model = c.init(device);
                let x = Tensor::<4>::random([b, 3, h, w], dist, device);
                let mask = Tensor::<3, Bool>::full([b, h, w], false, device);
                time(opts.warmup, opts.iters, || {
                    let out = model.forward(x.clone(), mask.clone());
                    let _ = out.boxes.into_data();
                })
            };
            ([b, 3, h, w], s)
        }
        model_config => {
            let size = model_config.image_size().expect("classifiers have an input size");
            let classes = model_config.num_classes();
            let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
            let s = if opts.train {
                let device = device.clone().autodiff();
                let mut model = Classifier::init(model_config, &device).expect("classifier");
                let mut optim = ModuleOptimizer::from(FusedAdamW::new(1e-4, 1e-8));
                let x = Tensor::<4>::random([b, 3, size, size], dist, &device);
                let labels: Vec<usize> = (0..b).map(|i| i % classes).collect();
                let targets = Tensor::<2>::from_data(
                    TensorData::new(zoo_train::mix::smoothed_one_hot(&labels, classes, 0.1), [b, classes]),
                    &device,
                );
                time(opts.warmup, opts.iters, || {
                    let loss = soft_cross_entropy(model.forward(x.clone()), targets.clone());
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(1e-4, model.clone(), grads);
                    let _ = loss.into_data();
                })
            } else {
                let model = Classifier::init(model_config, device).expect("classifier");
                let x = Tensor::<4>::random([b, 3, size, size], dist, device);
                time(opts.warmup, opts.iters, || {
                    let _ = model.forward(x.clone()).into_data();
                })
            };
            ([b, 3, size, size], s)
        }
    };
    Ok(BenchResult {
        model: config.model.arch().to_string(),
        mode: if opts.train { "train step" } else { "inference" }.into(),
        device: format!("{device:?}"),
        batch: b,
        iters: opts.iters,
        input,
        images_per_sec: b as f64 / seconds,
        ms_per_batch: seconds * 1000.0,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Images per second of the training data loader alone (decode, random resized crop, flip,
/// mixup/CutMix, on every core) over one epoch of the class folders in `data`.
pub fn bench_loader(config: &ZooConfig, data: &std::path::Path, batch: usize) -> Result<f64> {
    let size = config.model.image_size().ok_or_else(|| anyhow::anyhow!("the loader benchmark is for classifiers"))?;
    let folder = zoo_datasets::ImageFolder::open(data, false)?;
    let augment = zoo_train::classification::train_augment(config, size);
    let loader = zoo_train::loader::Loader::new(&folder, batch, size, augment, 0, false);
    let start = Instant::now();
    let mut images = 0;
    for b in loader.epoch(0, 0) {
        images += b?.labels.len();
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}
