//! Preprocessed input batches from `.npy` files (float32, C order).

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use npyz::WriterBuilder;

/// Reads a float32 `[B, C, H, W]` batch.
pub fn read_batch(path: &Path, device: &Device) -> Result<Tensor<4>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| format!("input {} is not a .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        bail!("input {}: Fortran-ordered arrays are not supported, save it in C order", path.display());
    }
    let descr = npy.dtype().descr();
    let dtype = descr.trim_matches('\'');
    if dtype != "<f4" {
        bail!("input {}: dtype {dtype} given, float32 (<f4) expected", path.display());
    }
    let [_, _, _, _] = shape[..] else {
        bail!("input {}: shape {shape:?} given, [batch, channels, height, width] expected", path.display());
    };
    if shape.contains(&0) {
        bail!("input {}: shape {shape:?} is empty, every dimension must be at least 1", path.display());
    }
    // The header alone says how much to allocate: it must describe the bytes the file holds.
    let values_bytes = shape.iter().try_fold(4usize, |n, &d| n.checked_mul(d));
    if values_bytes.is_none_or(|n| n > bytes.len()) {
        bail!(
            "input {}: its header declares shape {shape:?}, more values than the file's {} bytes hold",
            path.display(),
            bytes.len()
        );
    }
    let values: Vec<f32> =
        npy.into_vec().with_context(|| format!("input {}: cannot read its values", path.display()))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        let (w, h, c) = (shape[3], shape[2], shape[1]);
        let at = [i / (c * h * w), i / (h * w) % c, i / w % h, i % w];
        bail!("input {}: {count} values are not finite (NaN or infinite), the first at {at:?}", path.display());
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Writes `values` as a float32 `.npy` array of `shape` (C order).
pub fn write(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let write_err = || format!("cannot write {}", path.display());
    let file = std::io::BufWriter::new(std::fs::File::create(path).with_context(write_err)?);
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(file)
        .begin_nd()
        .with_context(write_err)?;
    writer.extend(values.iter().copied()).with_context(write_err)?;
    writer.finish().with_context(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numpy_float32_and_names_bad_files() {
        let device = Device::flex();
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vit_tiny/input.npy");
        assert_eq!(read_batch(&fixture, &device).unwrap().dims(), [2, 3, 32, 32]);

        let labels =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/detr_tiny/valid_mask.npy");
        let err = read_batch(&labels, &device).unwrap_err().to_string();
        assert!(err.contains("valid_mask.npy") && err.contains("float32"), "{err}");

        let err = read_batch(std::path::Path::new("Cargo.toml"), &device).unwrap_err().to_string();
        assert!(err.contains("Cargo.toml") && err.contains("not a .npy"), "{err}");
    }
}
