//! Every compiled-in backend runs the same tiny ViT and TNT on the same input; each must agree
//! with the timm reference (and so with flex) to 1e-4. In the build that enables every backend,
//! `ZOO_REQUIRE_BACKENDS=flex,ndarray,wgpu,tch` makes a missing one a failure.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use zoo_infer::device::{compiled_backends, select_device};
use zoo_models::Classifier;
use zoo_train::ZooConfig;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(case)
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

/// Logits of a fixture's model on `backend`.
fn run(case: &str, backend: &str) -> Vec<f32> {
    let device = select_device(Some(backend)).unwrap();
    let dir = fixture(case);
    let config = ZooConfig::from_file(dir.join("config.toml")).unwrap();
    let model = Classifier::init(&config.model, &device).unwrap().load(&dir.join("model.safetensors")).unwrap();
    let (shape, x) = read_npy(&dir.join("input.npy"));
    let x = Tensor::<4>::from_data(TensorData::new(x, shape), &device);
    model.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn required_backends_are_compiled_in() {
    let required = std::env::var("ZOO_REQUIRE_BACKENDS").unwrap_or_else(|_| "flex".into());
    let compiled = compiled_backends();
    for name in required.split(',').filter(|s| !s.is_empty()) {
        assert!(compiled.contains(&name), "backend {name} required but not compiled in ({compiled:?})");
    }
}

#[test]
fn every_backend_agrees_with_timm() {
    for case in ["vit_tiny", "tnt_tiny"] {
        let (_, reference) = read_npy(&fixture(case).join("output.npy"));
        for backend in compiled_backends() {
            let logits = run(case, backend);
            assert_eq!(logits.len(), reference.len());
            let diff = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            println!("{case} on {backend}: max |ours - timm| = {diff:e}");
            assert!(diff < 1e-4, "{case} on {backend}: max |ours - timm| = {diff:e}");
        }
    }
}
