//! `zoo eval` end to end: DETR over a small COCO-format set of real photos (results file and the
//! 12 stats), and a classifier over a class-folder set, whose top-1 must equal what the training
//! loop's own validation measured on the same images.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use zoo_datasets::generate::generate_shapes;
use zoo_infer::detect::load_detr;
use zoo_infer::eval::{eval_classifier, eval_detr};
use zoo_train::ZooConfig;
use zoo_train::{TrainOptions, train_classifier};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn detr_eval_runs_over_a_coco_set() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(repo("datasets/tests/data/chelsea.png"), images.join("chelsea.png")).unwrap();
    std::fs::copy(repo("datasets/tests/data/grace_hopper.jpg"), images.join("grace_hopper.jpg")).unwrap();
    let annotations = tmp.path().join("instances.json");
    std::fs::write(
        &annotations,
        r#"{"images": [{"id": 1, "file_name": "chelsea.png", "width": 451, "height": 300},
                       {"id": 2, "file_name": "grace_hopper.jpg", "width": 512, "height": 600}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [100, 20, 250, 260], "area": 65000, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [150, 100, 250, 400], "area": 100000, "iscrowd": 0}]}"#,
    )
    .unwrap();
    let device = Device::flex();
    let config_path = repo("models/tests/fixtures/detr_tiny/config.toml");
    let config = ZooConfig::from_file(&config_path).unwrap();
    let model =
        load_detr(&config, &config_path, &repo("models/tests/fixtures/detr_tiny/model.safetensors"), &device).unwrap();
    let results = tmp.path().join("results.json");
    let r = eval_detr(&model, &config, &config_path, &annotations, &images, Some(&results), &device).unwrap();
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(written.as_array().unwrap().len(), 2 * 10, "every query of every image is a result");
    assert!(r.stats.iter().all(|s| (-1.0..=1.0).contains(s)), "{:?}", r.stats);
    assert_eq!(r.summary().lines().count(), 12);

    // A missing image is named.
    std::fs::remove_file(images.join("chelsea.png")).unwrap();
    let err = eval_detr(&model, &config, &config_path, &annotations, &images, None, &device).unwrap_err().to_string();
    assert!(err.contains("chelsea.png"), "{err}");
}

#[test]
fn classifier_eval_agrees_with_training_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate_shapes(&data, 3, 16, 8, 32, 5).unwrap();
    let text = format!(
        r#"[model]
arch = "vit"
image_size = 32
patch_size = 8
num_classes = 3
embed_dim = 32
depth = 1
num_heads = 2
[data]
crop_pct = 1.0
interpolation = "bilinear"
[train]
train_dir = "{}"
val_dir = "{}"
output_dir = "{}"
epochs = 2
batch_size = 8
lr = 1e-3
warmup_epochs = 1
"#,
        data.join("train").display(),
        data.join("val").display(),
        tmp.path().join("run").display()
    );
    let config_path = tmp.path().join("config.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = ZooConfig::from_file(&config_path).unwrap();
    let device = Device::flex();
    let report = train_classifier(&config, &device, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let eval = eval_classifier(&config, &config_path, &report.last_model, &data.join("val"), &device).unwrap();
    let last = report.epochs.last().unwrap();
    assert_eq!(eval.images, 3 * 8);
    assert_eq!((eval.top1, eval.top5), (last.val_top1, last.val_top5));
    assert!((eval.loss - last.val_loss).abs() < 1e-9);
}
