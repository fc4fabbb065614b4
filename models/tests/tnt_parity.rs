//! TNT against timm: the same checkpoint and input must give timm's logits.

mod common;

use burn::prelude::*;
use common::{fixture, max_abs_diff, npy_tensor};
use zoo_models::{ModelConfig, load_weights};

fn check(weights: &str) {
    let device = Device::flex();
    let dir = fixture("tnt_tiny");
    let config = ModelConfig::from_file(dir.join("config.toml")).unwrap();
    let ModelConfig::Tnt(tnt) = config else { panic!("not a TNT config") };
    let model = load_weights(tnt.init(&device), &dir.join(weights)).unwrap();
    let logits = model.forward(npy_tensor(&dir.join("input.npy"), &device));
    let diff = max_abs_diff(logits, &dir.join("output.npy"));
    assert!(diff < 1e-4, "tnt_tiny/{weights}: max |ours - timm| = {diff:e}");
}

#[test]
fn tnt_tiny_matches_timm_from_safetensors() {
    check("model.safetensors");
}

#[test]
fn tnt_tiny_matches_timm_from_nested_pth() {
    check("model.pth");
}
