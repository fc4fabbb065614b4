//! Training on the generated textures dataset: a tiny ViT and a tiny TNT learn it, a resumed run
//! continues exactly where the interrupted one stopped, and bad data gives clear errors.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use zoo_datasets::generate::generate_shapes;
use zoo_models::Classifier;
use zoo_train::ZooConfig;
use zoo_train::engine::Interrupted;
use zoo_train::{TrainOptions, train_classifier};

const CLASSES: usize = 4;

fn config(model: &str, data: &Path, out: &Path, epochs: usize) -> ZooConfig {
    config_with_mix(model, data, out, epochs, true)
}

/// `mix` turns on mixup (half the batches), which slows learning but must resume exactly.
fn config_with_mix(model: &str, data: &Path, out: &Path, epochs: usize, mix: bool) -> ZooConfig {
    let text = format!(
        r#"
{model}
[data]
interpolation = "bilinear"
crop_pct = 1.0
[eval]
batch_size = 64
[train]
train_dir = "{train}"
val_dir = "{val}"
output_dir = "{out}"
epochs = {epochs}
batch_size = 16
lr = 1e-3
min_lr = 1e-5
warmup_epochs = {warmup}
label_smoothing = 0.1
grad_clip = 1.0
mixup_alpha = {mixup}
cutmix_alpha = 0.0
mix_prob = 0.5
scale_min = 0.6
seed = 3
"#,
        train = data.join("train").display(),
        val = data.join("val").display(),
        out = out.display(),
        warmup = usize::from(epochs > 1),
        mixup = if mix { 0.2 } else { 0.0 },
    );
    ZooConfig::from_toml_str(&text).unwrap()
}

const VIT: &str = r#"[model]
arch = "vit"
image_size = 32
patch_size = 4
num_classes = 4
embed_dim = 64
depth = 2
num_heads = 4
mlp_ratio = 2.0
global_pool = "avg""#;

const TNT: &str = r#"[model]
arch = "tnt"
image_size = 32
patch_size = 8
num_classes = 4
embed_dim = 64
inner_dim = 16
depth = 2
num_heads_inner = 2
num_heads_outer = 4
first_stride = 2"#;

fn dataset(dir: &Path, per_class: usize) {
    generate_shapes(dir, CLASSES, per_class, per_class / 4, 32, 11).unwrap();
}

/// Chance is 25%; both models must reach 50% on held-out validation images.
#[test]
fn tiny_vit_and_tnt_learn_the_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(&tmp.path().join("data"), 128);
    for (name, model, epochs) in [("vit", VIT, 16), ("tnt", TNT, 16)] {
        let cfg = config_with_mix(model, &tmp.path().join("data"), &tmp.path().join(name), epochs, false);
        let report =
            train_classifier(&cfg, &Device::flex(), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
        let first = &report.epochs[0];
        let last = report.epochs.last().unwrap();
        println!(
            "{name}: top-1 {:.3} -> best {:.3}; train loss {:.3} -> {:.3}",
            first.val_top1, report.best_top1, first.train_loss, last.train_loss
        );
        assert!(report.best_top1 >= 0.5, "{name}: best top-1 {:.3} is not well above chance", report.best_top1);
        assert!(last.train_loss < first.train_loss, "{name}: training loss did not fall");
        assert!(report.best_model.is_file() && report.last_model.is_file());
        // The curves are drawn every epoch beside metrics.jsonl.
        let curves = report.output_dir.join("curves.png");
        assert_eq!(
            image::image_dimensions(&curves).unwrap_or_else(|e| panic!("{}: {e}", curves.display())),
            (1500, 460)
        );
    }
}

/// Two epochs in one go, and one epoch + a resumed second: the second epoch's metrics must be
/// identical (same batches, same augmentations, same optimizer state).
#[test]
fn resumed_run_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(&tmp.path().join("data"), 24);
    let quiet = TrainOptions { quiet: true, record_batches: true, ..Default::default() };
    // Both runs start from the same weights (tests share the backend's random generator).
    let init = tmp.path().join("init.bpk");
    let with_init = |out: &str| {
        let mut cfg = config(VIT, &tmp.path().join("data"), &tmp.path().join(out), 2);
        cfg.train.as_mut().unwrap().init_from = Some(init.clone());
        cfg
    };
    Classifier::init(&with_init("a").model, &Device::flex()).unwrap().save(&init).unwrap();
    let straight = train_classifier(&with_init("a"), &Device::flex(), &quiet).unwrap();

    let cfg = with_init("b");
    let first =
        train_classifier(&cfg, &Device::flex(), &TrainOptions { stop_after: Some(1), ..quiet.clone() }).unwrap();
    assert_eq!(first.epochs.len(), 1);
    let resumed = train_classifier(&cfg, &Device::flex(), &TrainOptions { resume: true, ..quiet.clone() }).unwrap();
    assert_eq!(resumed.epochs.len(), 1, "the resumed run trains only the remaining epoch");
    let (a, b) = (&straight.epochs[1], &resumed.epochs[0]);
    assert_eq!(a.epoch, b.epoch);
    assert_eq!((a.train_loss, a.val_loss, a.val_top1, a.lr), (b.train_loss, b.val_loss, b.val_top1, b.lr));

    // Ctrl-C: the stop flag is seen after the first optimizer step, a checkpoint of the epoch so
    // far is written, and the resumed run goes on from the next batch: both epochs as the
    // uninterrupted run has them, the first one's training loss over all its batches.
    let interrupted_cfg = with_init("c");
    let stop = Some(Arc::new(AtomicBool::new(true)));
    let err = train_classifier(&interrupted_cfg, &Device::flex(), &TrainOptions { stop, ..quiet.clone() }).unwrap_err();
    let interrupted = err.downcast_ref::<Interrupted>().unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!((interrupted.epoch, interrupted.batch), (1, 1));
    assert!(interrupted.checkpoint.ends_with("epoch-0000-batch-000001"), "{}", interrupted.checkpoint.display());
    let resumed =
        train_classifier(&interrupted_cfg, &Device::flex(), &TrainOptions { resume: true, ..quiet.clone() }).unwrap();
    assert_eq!(resumed.epochs.len(), 2);
    for (a, b) in straight.epochs.iter().zip(&resumed.epochs) {
        assert_eq!((a.epoch, a.train_loss, a.val_loss, a.lr), (b.epoch, b.train_loss, b.val_loss, b.lr));
    }

    // A run stopped after writing epoch 2's metrics but before its checkpoint resumes from epoch
    // 1: metrics.jsonl lists every epoch once, epoch 2 as the resumed run measured it.
    let out = tmp.path().join("b");
    std::fs::remove_dir_all(out.join("checkpoints/epoch-0002")).unwrap();
    let again = train_classifier(&cfg, &Device::flex(), &TrainOptions { resume: true, ..quiet }).unwrap();
    assert_eq!(again.epochs.len(), 1);
    let epochs: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 2]);

    // batches.jsonl: each epoch once, every training image once per epoch, in another order each
    // epoch, and the same files in the same order however the run was interrupted and resumed.
    let batches = |run: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(tmp.path().join(run).join("batches.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let straight = batches("a");
    assert_eq!(straight.iter().map(|e| e["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    let files = |epoch: &serde_json::Value| -> Vec<String> {
        epoch["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect()
    };
    let mut training_images: Vec<String> = walk(&tmp.path().join("data/train"));
    training_images.sort();
    for epoch in &straight {
        let mut listed = files(epoch);
        listed.sort();
        assert_eq!(listed, training_images);
    }
    assert_ne!(files(&straight[0]), files(&straight[1]), "each epoch is shuffled anew");
    assert_eq!(batches("b"), straight);
    assert_eq!(batches("c"), straight);

    // A fresh run in an old run's folder: the old run's later checkpoint goes, so that a
    // --resume afterwards continues this run, not the old one.
    train_classifier(
        &with_init("a"),
        &Device::flex(),
        &TrainOptions { stop_after: Some(1), quiet: true, ..Default::default() },
    )
    .unwrap();
    let left: Vec<_> =
        zoo_train::checkpoint::list(&tmp.path().join("a")).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, [(1, 0)]);
}

/// Every file under `dir`, as strings.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out
}

/// Data-parallel over two devices (here both the CPU) trains the same model as one device: the
/// batch is split, each half's gradient weighted by its size, the sum stepped once.
#[test]
fn data_parallel_matches_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(&tmp.path().join("data"), 24);
    let init = tmp.path().join("init.bpk");
    let with_init = |out: &str| {
        let mut cfg = config(VIT, &tmp.path().join("data"), &tmp.path().join(out), 2);
        cfg.train.as_mut().unwrap().init_from = Some(init.clone());
        cfg
    };
    Classifier::init(&with_init("one").model, &Device::flex()).unwrap().save(&init).unwrap();
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let one = train_classifier(&with_init("one"), &Device::flex(), &quiet).unwrap();
    let devices = vec![Device::flex(), Device::flex()];
    let two = train_classifier(&with_init("two"), &Device::flex(), &TrainOptions { devices, ..quiet }).unwrap();
    for (a, b) in one.epochs.iter().zip(&two.epochs) {
        eprintln!(
            "epoch {}: train loss {} vs {}, val loss {} vs {}",
            a.epoch, a.train_loss, b.train_loss, a.val_loss, b.val_loss
        );
        assert!((a.train_loss - b.train_loss).abs() < 1e-3 * a.train_loss, "{} vs {}", a.train_loss, b.train_loss);
        assert!((a.val_loss - b.val_loss).abs() < 1e-3 * a.val_loss, "{} vs {}", a.val_loss, b.val_loss);
    }
}

#[test]
fn bad_data_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 8);
    let quiet = TrainOptions { quiet: true, ..Default::default() };

    // A corrupt image stops training with its path...
    let bad = data.join("train/checker/zz_corrupt.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let err = format!(
        "{:#}",
        train_classifier(&config(VIT, &data, &tmp.path().join("r1"), 1), &Device::flex(), &quiet).unwrap_err()
    );
    assert!(err.contains("zz_corrupt.png"), "{err}");
    // ... or is skipped and counted when the config says so.
    let mut cfg = config(VIT, &data, &tmp.path().join("r2"), 1);
    cfg.train.as_mut().unwrap().skip_bad_images = true;
    train_classifier(&cfg, &Device::flex(), &quiet).unwrap();
    std::fs::remove_file(&bad).unwrap();

    // An empty class folder is an error naming it.
    std::fs::create_dir_all(data.join("val/zz_empty")).unwrap();
    let err = format!(
        "{:#}",
        train_classifier(&config(VIT, &data, &tmp.path().join("r3"), 1), &Device::flex(), &quiet).unwrap_err()
    );
    assert!(err.contains("zz_empty") && err.contains("no images"), "{err}");
}

/// A checkpoint cannot disagree with itself: damaged or swapped files, another batch size, a
/// missing `best.bpk`, a second run on the same folder and a diverging run are each found.
#[test]
fn checkpoints_are_checked_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 8);
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let resume = TrainOptions { resume: true, ..quiet.clone() };
    let out = tmp.path().join("run");
    let cfg = config(VIT, &data, &out, 3);
    let err_of = |cfg: &ZooConfig, opts: &TrainOptions| {
        format!("{:#}", train_classifier(cfg, &Device::flex(), opts).unwrap_err())
    };
    // One epoch: it is the best so far.
    let first =
        train_classifier(&cfg, &Device::flex(), &TrainOptions { stop_after: Some(1), ..quiet.clone() }).unwrap();
    assert_eq!(first.best_epoch, 1);
    let last = out.join("checkpoints/epoch-0001");

    // A flipped byte in the optimizer state (as another epoch's optimizer file would be).
    let optimizer = last.join("optimizer.bpk");
    let original = std::fs::read(&optimizer).unwrap();
    let mut flipped = original.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&optimizer, &flipped).unwrap();
    let err = err_of(&cfg, &resume);
    assert!(err.contains("optimizer.bpk") && err.contains("damaged"), "{err}");
    std::fs::write(&optimizer, &original).unwrap();

    // A progress file claiming 1e11 optimizer steps (the schedule would be replayed for hours).
    let progress_path = last.join("progress.json");
    let text = std::fs::read_to_string(&progress_path).unwrap();
    let mut progress: serde_json::Value = serde_json::from_str(&text).unwrap();
    progress["step"] = serde_json::json!(100_000_000_000u64);
    std::fs::write(&progress_path, progress.to_string()).unwrap();
    let err = err_of(&cfg, &resume);
    assert!(err.contains("progress.json") && err.contains("100000000000 optimizer steps"), "{err}");
    std::fs::write(&progress_path, text).unwrap();

    // Another batch size would follow another schedule.
    let mut other = cfg.clone();
    other.train.as_mut().unwrap().batch_size = 8;
    let err = err_of(&other, &resume);
    assert!(err.contains("train.batch_size") && err.contains("schedule"), "{err}");

    // A run stopped while writing best.bpk (after the checkpoint that names it) gets it back.
    let best = out.join("best.bpk");
    let best_bytes = std::fs::read(&best).unwrap();
    std::fs::remove_file(&best).unwrap();
    std::fs::write(out.join(".best.bpk.tmp-1"), b"half written").unwrap();
    let lock = zoo_train::checkpoint::lock_output(&out).unwrap();
    let err = err_of(&cfg, &resume);
    assert!(err.contains("in use by another training run"), "{err}");
    drop(lock);
    train_classifier(&cfg, &Device::flex(), &TrainOptions { stop_after: Some(1), ..resume.clone() }).unwrap();
    assert_eq!(std::fs::read(&best).unwrap(), best_bytes, "best.bpk written again from epoch 1");
    assert!(!out.join(".best.bpk.tmp-1").exists(), "temporary files are removed");

    // Inputs scaled beyond what float32 holds (infinite) make the loss NaN: the run stops and
    // says so.
    let mut wild = config(VIT, &data, &tmp.path().join("wild"), 1);
    (wild.data.mean, wild.data.std) = ([-1e30; 3], [1e-30; 3]);
    let err = err_of(&wild, &quiet);
    assert!(err.contains("training diverged in epoch 1") && err.contains("no checkpoint yet"), "{err}");
}
