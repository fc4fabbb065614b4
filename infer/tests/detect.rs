//! `zoo detect`'s pipeline on a real photo with the tiny reference DETR: every query becomes a
//! detection, boxes lie inside the image, and the drawn picture is written.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use zoo_infer::Inputs;
use zoo_infer::detect::{detect, draw_detections, load_detr};
use zoo_train::ZooConfig;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn detects_and_draws_on_a_photo() {
    let device = Device::flex();
    let config_path = repo("models/tests/fixtures/detr_tiny/config.toml");
    let config = ZooConfig::from_file(&config_path).unwrap();
    let model =
        load_detr(&config, &config_path, &repo("models/tests/fixtures/detr_tiny/model.safetensors"), &device).unwrap();
    let photo = repo("datasets/tests/data/chelsea.png");
    let (out, pictures) = detect(&model, &config, &config_path, &Inputs::Images(vec![photo]), 0.0, &device).unwrap();
    assert_eq!(out.pred_logits[0].len(), 10, "one row per query");
    assert_eq!(out.pred_logits[0][0].len(), 6, "classes + no-object");
    assert_eq!(out.detections[0].len(), 10, "threshold 0 keeps every query");
    for d in &out.detections[0] {
        let [x, y, w, h] = d.bbox;
        assert!(x >= -1.0 && y >= -1.0 && x + w <= 452.0 && y + h <= 301.0 && w >= 0.0 && h >= 0.0, "{:?}", d.bbox);
        assert!(d.category.starts_with("class "), "{}", d.category);
    }
    let dir = tempfile::tempdir().unwrap();
    let written = draw_detections(&out, pictures, dir.path()).unwrap();
    let drawn = image::open(&written[0]).unwrap().to_rgb8();
    let original = image::open(repo("datasets/tests/data/chelsea.png")).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    assert_ne!(drawn.as_raw(), original.as_raw(), "boxes were drawn");
}

#[test]
fn detr_config_is_required() {
    let device = Device::flex();
    let vit = repo("configs/vit_b16.toml");
    let config = ZooConfig::from_file(&vit).unwrap();
    let err = load_detr(&config, &vit, Path::new("w.pth"), &device).unwrap_err().to_string();
    assert!(err.contains("vit_b16.toml") && err.contains("not a detector"), "{err}");
}
