//! ViT against timm: the same checkpoint and input must give timm's logits.

mod common;

use burn::prelude::*;
use common::{fixture, max_abs_diff, npy_tensor};
use zoo_models::vit::Vit;
use zoo_models::{ModelConfig, load_weights};

const TOLERANCE: f32 = 1e-4;

fn vit_for(case: &str, device: &Device) -> Vit {
    let config = ModelConfig::from_file(fixture(case).join("config.toml")).unwrap();
    let ModelConfig::Vit(vit) = config else { panic!("{case} is not a ViT config") };
    vit.init(device)
}

fn check(case: &str, weights: &str) {
    let device = Device::flex();
    let dir = fixture(case);
    let model = load_weights(vit_for(case, &device), &dir.join(weights)).unwrap();
    let logits = model.forward(npy_tensor(&dir.join("input.npy"), &device));
    let diff = max_abs_diff(logits, &dir.join("output.npy"));
    assert!(diff < TOLERANCE, "{case}/{weights}: max |ours - timm| = {diff:e}");
}

#[test]
fn vit_tiny_matches_timm_from_safetensors() {
    check("vit_tiny", "model.safetensors");
}

#[test]
fn vit_tiny_matches_timm_from_nested_pth() {
    check("vit_tiny", "model.pth");
}

#[test]
fn vit_avg_pool_matches_timm() {
    check("vit_tiny_avg", "model.safetensors");
}

#[test]
fn vit_resamples_pos_embed_like_timm() {
    check("vit_tiny_resampled", "model.safetensors");
}

#[test]
fn burnpack_round_trip_gives_the_same_logits() {
    let device = Device::flex();
    let dir = fixture("vit_tiny");
    let model = load_weights(vit_for("vit_tiny", &device), &dir.join("model.safetensors")).unwrap();
    let tmp = std::env::temp_dir().join(format!("vit_tiny_{}.bpk", std::process::id()));
    zoo_models::save_burnpack(&model, &tmp).unwrap();
    let reloaded = load_weights(vit_for("vit_tiny", &device), &tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    let diff = max_abs_diff(reloaded.forward(npy_tensor(&dir.join("input.npy"), &device)), &dir.join("output.npy"));
    assert!(diff < TOLERANCE, "burnpack: max |ours - timm| = {diff:e}");
}

#[test]
fn checkpoint_of_another_shape_is_a_clear_error() {
    let device = Device::flex();
    // The avg-pool model has fc_norm and no norm: loading the token-pool weights must fail and say so.
    let err = load_weights(vit_for("vit_tiny_avg", &device), &fixture("vit_tiny").join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("missing") && err.contains("fc_norm"), "{err}");
    assert!(err.contains("unexpected") && err.contains("norm.weight"), "{err}");
}

#[test]
fn missing_weights_file_is_named() {
    let device = Device::flex();
    let err = load_weights(vit_for("vit_tiny", &device), std::path::Path::new("/nonexistent/w.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/w.safetensors") && err.contains("does not exist"), "{err}");
}
