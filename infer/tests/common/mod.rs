//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

use std::path::Path;

/// A class-folder dataset (`train/` and `val/`, classes `red` and `blue`, `per_class` 40x40
/// images each, the class colour with a little texture) and a config training the tiny ViT's
/// shape (32x32, patches of 8, width 48, depth 2) on it for `epochs`, with `extra` lines in
/// `[train]`. Returns the config's path.
pub fn tiny_classification_run(dir: &Path, per_class: u8, epochs: usize, extra: &str) -> std::path::PathBuf {
    for split in ["train", "val"] {
        for (class, colour) in [("red", [200u8, 30, 30]), ("blue", [30, 30, 200])] {
            let folder = dir.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(40, 40, |x, y| {
                    image::Rgb(colour.map(|c| c.wrapping_add(((x + y) as u8).wrapping_mul(i + 1) % 20)))
                });
                img.save(folder.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\narch = \"vit\"\nimage_size = 32\npatch_size = 8\nnum_classes = 2\nembed_dim = 48\ndepth = 2\n\
             num_heads = 3\n\n[train]\ntrain_dir = \"train\"\nval_dir = \"val\"\noutput_dir = \"{}\"\nepochs = {epochs}\n\
             batch_size = 2\nlr = 1e-4\nhflip = 0.0\n{extra}\n",
            dir.join("run").display()
        ),
    )
    .unwrap();
    config
}

/// A float32 `.npy` file's values.
pub fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

/// Nested JSON arrays of numbers, flattened.
pub fn flat(value: &serde_json::Value) -> Vec<f32> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(flat).collect(),
        v => vec![v.as_f64().unwrap() as f32],
    }
}

/// `max |a - b|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "different sizes");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `max |a - b|` over `max |b|`.
pub fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / b.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}
