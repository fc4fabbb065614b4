//! `zoo demo`: the whole path on a fresh machine with nothing downloaded. Generates the textures
//! dataset, trains a small ViT on it for a few minutes with progress, evaluates the best
//! checkpoint and classifies held-out images it has never seen; then generates the objects
//! dataset (COCO layout), trains a tiny DETR on it, scores it with COCO AP and draws its
//! detections on validation images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use zoo_datasets::generate::{SHAPES, generate_shapes, shape_image};
use zoo_datasets::generate_detection::{OBJECTS, generate_objects_square};
use zoo_models::Classifier;
use zoo_train::ZooConfig;
use zoo_train::detection::train_detr;
use zoo_train::{TrainOptions, train_classifier};

use crate::Inputs;
use crate::classify::classify;
use crate::detect::{detect, draw_detections, load_detr};

/// The demo's configs (also at `configs/demo_vit.toml` and `configs/demo_detr.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo_vit.toml");
pub const DEMO_DETR_CONFIG: &str = include_str!("../../configs/demo_detr.toml");

pub struct DemoOptions {
    pub out: PathBuf,
    pub epochs: Option<usize>,
    pub train_per_class: usize,
    /// DETR epochs (the config's when not given); 0 skips the detector.
    pub detr_epochs: Option<usize>,
    pub quiet: bool,
}

/// The demo's datasets.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DemoDataset {
    /// Six texture classes in class folders (`train/`, `val/`), at the demo ViT's input size.
    Textures,
    /// Squares, discs and triangles with their boxes, in COCO's layout.
    Objects,
}

/// Generated training images per texture class by default (a quarter as many for validation).
pub const TEXTURES_PER_CLASS: usize = 200;
/// Generated training images of the objects dataset (a quarter as many for validation), all
/// `OBJECT_IMAGE_SIDE` pixels square.
pub const OBJECT_IMAGES: usize = 600;
pub const OBJECT_IMAGE_SIDE: u32 = 128;

/// Writes the textures dataset under `dir`, `per_class` training images per class.
fn generate_textures(dir: &Path, per_class: usize) -> Result<()> {
    let config = ZooConfig::from_toml_str(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let size = config.model.image_size().expect("the demo model is a classifier") as u32;
    eprintln!("generating the textures dataset ({} classes) in {}", SHAPES.len(), dir.display());
    Ok(generate_shapes(dir, SHAPES.len(), per_class, per_class / 4, size, 7)?)
}

/// Writes the objects dataset under `dir`, `images` training images; returns its training and
/// validation annotations.
fn generate_object_set(dir: &Path, images: usize) -> Result<[PathBuf; 2]> {
    eprintln!("generating the objects dataset ({}) in {}", OBJECTS.join(", "), dir.display());
    Ok(generate_objects_square(dir, images, images / 4, 5, OBJECT_IMAGE_SIDE)?)
}

/// `zoo generate`: one of the demo's datasets under `dir`, as the demo makes it (`train`
/// training images, per class for the textures; the demo's number by default); returns `dir`.
pub fn generate_demo_dataset(dataset: DemoDataset, dir: &Path, train: Option<usize>) -> Result<PathBuf> {
    match dataset {
        DemoDataset::Textures => generate_textures(dir, train.unwrap_or(TEXTURES_PER_CLASS))?,
        DemoDataset::Objects => drop(generate_object_set(dir, train.unwrap_or(OBJECT_IMAGES))?),
    }
    Ok(dir.to_path_buf())
}

/// What the demo reached.
pub struct DemoReport {
    /// The ViT's best validation top-1 (a fraction).
    pub top1: f64,
    /// The DETR's best validation AP and AP50, when it was trained.
    pub detr_ap: Option<(f64, f64)>,
}

/// Runs the demo.
pub fn run_demo(opts: &DemoOptions, device: &Device) -> Result<DemoReport> {
    let top1 = run_classifier_demo(opts, device)?;
    let detr_ap = match opts.detr_epochs {
        Some(0) => None,
        epochs => Some(run_detector_demo(&opts.out, epochs, opts.quiet, device)?),
    };
    Ok(DemoReport { top1, detr_ap })
}

/// The classifier half: returns the best validation top-1.
fn run_classifier_demo(opts: &DemoOptions, device: &Device) -> Result<f64> {
    let data = opts.out.join("data").join("textures");
    let mut config = ZooConfig::from_toml_str(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let train = config.train.as_mut().context("demo config has a [train] section")?;
    train.train_dir = data.join("train");
    train.val_dir = data.join("val");
    train.output_dir = opts.out.join("run_vit");
    if let Some(e) = opts.epochs {
        train.epochs = e;
        train.warmup_epochs = train.warmup_epochs.min(e - 1);
    }
    let size = config.model.image_size().expect("the demo model is a classifier") as u32;
    if train.output_dir.exists() {
        std::fs::remove_dir_all(&train.output_dir)?;
    }
    generate_textures(&data, opts.train_per_class)?;

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
    print_locations(&data, &report.output_dir, "held-out", &held_out);
    Ok(report.best_top1)
}

/// The detector half: returns the best validation AP and the AP50 of that epoch.
fn run_detector_demo(out: &Path, epochs: Option<usize>, quiet: bool, device: &Device) -> Result<(f64, f64)> {
    let data = out.join("data").join("objects");
    let mut config =
        ZooConfig::from_toml_str(DEMO_DETR_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let train = config.train.as_mut().context("demo config has a [train] section")?;
    train.train_dir = data.join("train");
    train.val_dir = data.join("val");
    train.output_dir = out.join("run_detr");
    if let Some(e) = epochs {
        train.epochs = e;
        train.lr_drop = train.lr_drop.map(|d| d.min(e));
    }
    if train.output_dir.exists() {
        std::fs::remove_dir_all(&train.output_dir)?;
    }
    let [train_json, val_json] = generate_object_set(&data, OBJECT_IMAGES)?;
    (train.train_annotations, train.val_annotations) = (Some(train_json), Some(val_json.clone()));

    eprintln!("training a tiny DETR on {} ({:?})", data.display(), device);
    let report = train_detr(&config, device, &TrainOptions { quiet, ..Default::default() })?;
    let best = &report.epochs[report.best_epoch.max(1) - 1];
    eprintln!("best validation AP {:.3} (AP50 {:.3}) at epoch {}", report.best_ap, best.val_ap50, report.best_epoch);

    // Class names by category id: 0 is unused, as in COCO.
    let labels = report.output_dir.join("classes.txt");
    std::fs::write(&labels, std::iter::once("N/A").chain(OBJECTS).collect::<Vec<_>>().join("\n") + "\n")
        .with_context(|| format!("cannot write {}", labels.display()))?;
    config.data.labels = Some(labels);
    let model = load_detr(&config, Path::new(DEMO_DETR_CONFIG_NAME), &report.best_model, device)?;
    let images: Vec<PathBuf> = (1..=4).map(|i| data.join("val").join(format!("{i:06}.png"))).collect();
    let (mut result, pictures) =
        detect(&model, &config, Path::new(DEMO_DETR_CONFIG_NAME), &Inputs::Images(images), 0.5, device)?;
    // Small images: draw on a 3x enlargement so that the labels can be read.
    const ZOOM: u32 = 3;
    let pictures = pictures
        .into_iter()
        .map(|p| image::imageops::resize(&p, p.width() * ZOOM, p.height() * ZOOM, image::imageops::FilterType::Nearest))
        .collect();
    for d in result.detections.iter_mut().flatten() {
        d.bbox = d.bbox.map(|v| v * ZOOM as f32);
    }
    print!("{}", result.to_text());
    let drawn = draw_detections(&result, pictures, &report.output_dir.join("detections"))?;
    print_locations(&data, &report.output_dir, "detections", drawn[0].parent().expect("a folder"));
    Ok((report.best_ap, best.val_ap50))
}

const DEMO_DETR_CONFIG_NAME: &str = "configs/demo_detr.toml";

fn print_locations(data: &Path, run: &Path, what: &str, pictures: &Path) {
    println!("written:");
    println!("  dataset      {}", data.display());
    println!("  metrics      {}", run.join("metrics.jsonl").display());
    println!("  checkpoints  {}", run.join("checkpoints").display());
    println!("  best model   {}", run.join("best.bpk").display());
    println!("  {what:<12} {}", pictures.display());
}
