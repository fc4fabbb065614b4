//! `zoo demo`: the whole path on a fresh machine with nothing downloaded. Generates the shapes
//! dataset, trains a small ViT on it for a few minutes with progress, evaluates the best
//! checkpoint and classifies held-out images it has never seen.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use zoo_datasets::generate::{SHAPES, generate_shapes, shape_image};
use zoo_models::{Classifier, ZooConfig};
use zoo_train::{TrainOptions, train_classifier};

use crate::Inputs;
use crate::classify::classify;

/// The demo's config (also at `configs/demo_vit.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo_vit.toml");

pub struct DemoOptions {
    pub out: PathBuf,
    pub epochs: Option<usize>,
    pub train_per_class: usize,
    pub quiet: bool,
}

/// Runs the demo; returns the best validation top-1 (a fraction).
pub fn run_demo(opts: &DemoOptions, device: &Device) -> Result<f64> {
    let data = opts.out.join("data");
    let mut config = ZooConfig::from_toml_str(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let train = config.train.as_mut().context("demo config has a [train] section")?;
    train.train_dir = data.join("train");
    train.val_dir = data.join("val");
    train.output_dir = opts.out.join("run");
    if let Some(e) = opts.epochs {
        train.epochs = e;
        train.warmup_epochs = train.warmup_epochs.min(e - 1);
    }
    let size = config.model.image_size().expect("the demo model is a classifier") as u32;
    if opts.out.join("run").exists() {
        std::fs::remove_dir_all(opts.out.join("run"))?;
    }
    eprintln!("generating the shapes dataset ({} classes) in {}", SHAPES.len(), data.display());
    generate_shapes(&data, SHAPES.len(), opts.train_per_class, opts.train_per_class / 4, size, 7)?;

    eprintln!("training a small ViT on {} ({:?})", data.display(), device);
    let report = train_classifier(&config, device, &TrainOptions { quiet: opts.quiet, ..Default::default() })?;
    eprintln!(
        "best validation top-1 {:.1}% at epoch {} (chance {:.1}%)",
        100.0 * report.best_top1,
        report.best_epoch,
        100.0 / SHAPES.len() as f64
    );

    // Held-out images from another seed, one per class.
    let held_out = opts.out.join("held_out");
    std::fs::create_dir_all(&held_out)?;
    let mut rng = StdRng::seed_from_u64(2024);
    let images: Vec<PathBuf> = SHAPES
        .iter()
        .enumerate()
        .map(|(label, name)| {
            let path = held_out.join(format!("{name}.png"));
            shape_image(label, size, &mut rng).save(&path).map(|_| path)
        })
        .collect::<Result<_, _>>()?;
    let labels = report.output_dir.join("classes.txt");
    config.data.labels = Some(labels);
    let model = Classifier::init(&config.model, device).expect("classifier").load(&report.best_model)?;
    let result = classify(&model, &config, &Inputs::Images(images), 1, device)?;
    let correct = result.top_k.iter().zip(SHAPES).filter(|(top, name)| top[0].label.as_deref() == Some(*name)).count();
    println!("held-out images classified by the best checkpoint ({correct}/{} right):", SHAPES.len());
    print!("{}", result.to_text());
    print_locations(&opts.out, &report.output_dir, &held_out);
    Ok(report.best_top1)
}

fn print_locations(out: &Path, run: &Path, held_out: &Path) {
    println!("written:");
    println!("  dataset      {}", out.join("data").display());
    println!("  metrics      {}", run.join("metrics.jsonl").display());
    println!("  checkpoints  {}", run.join("checkpoints").display());
    println!("  best model   {}", run.join("best.bpk").display());
    println!("  held-out     {}", held_out.display());
}
