//! Helpers for the parity tests: fixture paths, `.npy` reading, comparison.

use std::path::{Path, PathBuf};

use burn::prelude::*;

pub fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

/// Reads a little-endian f32 C-order `.npy` file.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

pub fn npy_tensor<const D: usize>(path: &Path, device: &Device) -> Tensor<D> {
    let (shape, values) = read_npy(path);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Largest absolute difference between `actual` and the reference in `expected_npy`.
pub fn max_abs_diff<const D: usize>(actual: Tensor<D>, expected_npy: &Path) -> f32 {
    let (shape, expected) = read_npy(expected_npy);
    assert_eq!(actual.dims().to_vec(), shape, "output shape differs from the reference");
    let actual: Vec<f32> = actual.into_data().try_into_vec().unwrap();
    actual.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}
