//! A small, learnable image-classification dataset made on the spot: each image holds a patch
//! of one texture (the class: stripes of three orientations, a checkerboard, dots, a ring
//! pattern) in random colours, size and place, on a noisy background of another colour. The
//! texture is visible in every patch it covers, which suits patch-based models; whole-shape
//! classes (disc vs square, say) take a ViT far longer to learn from a few hundred images, in
//! PyTorch as here. The ImageNet folder layout (`train/<class>/*.png`, `val/<class>/*.png`) makes
//! it a stand-in for a real dataset in the tests and in `zoo demo`.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::DataError;

/// The classes, in label order (folder names sort the same way).
pub const SHAPES: [&str; 6] = ["checker", "diagonal", "dots", "hstripes", "rings", "vstripes"];

/// Whether texture `class` is "on" at pixel offset `(x, y)` for a pattern period `p`.
fn texture(class: usize, x: f32, y: f32, p: f32) -> bool {
    let band = |v: f32| (v / p).rem_euclid(2.0) < 1.0;
    match SHAPES[class] {
        "checker" => band(x) ^ band(y),
        "diagonal" => band((x + y) / std::f32::consts::SQRT_2),
        "dots" => {
            let (dx, dy) = ((x / (2.0 * p)).fract() - 0.5, (y / (2.0 * p)).fract() - 0.5);
            dx * dx + dy * dy < 0.09
        }
        "hstripes" => band(y),
        "rings" => band((x * x + y * y).sqrt()),
        _ => band(x),
    }
}

fn colour(rng: &mut StdRng) -> [f32; 3] {
    [rng.random_range(0.0..255.0), rng.random_range(0.0..255.0), rng.random_range(0.0..255.0)]
}

/// A colour at least `min` away (sum of channel differences) from `other`.
fn contrasting(other: [f32; 3], min: f32, rng: &mut StdRng) -> [f32; 3] {
    let c = colour(rng);
    let distance: f32 = c.iter().zip(&other).map(|(a, b)| (a - b).abs()).sum();
    if distance < min { other.map(|v| 255.0 - v) } else { c }
}

/// One `size`x`size` image of class `class`.
pub fn shape_image(class: usize, size: u32, rng: &mut StdRng) -> RgbImage {
    let background = colour(rng);
    let ink = contrasting(background, 150.0, rng);
    let paper = contrasting(ink, 150.0, rng);
    let s = size as f32;
    let (w, h) = (rng.random_range(0.5..0.9) * s, rng.random_range(0.5..0.9) * s);
    let (x0, y0) = (rng.random_range(0.0..s - w), rng.random_range(0.0..s - h));
    let period = rng.random_range(0.09..0.15) * s;
    // The pattern's origin: anywhere for the periodic ones; inside the patch for the rings, whose
    // curvature is what sets them apart (far from their centre they look like straight stripes).
    let (ox, oy) = match SHAPES[class] {
        "rings" => (-rng.random_range(0.2..0.8) * w, -rng.random_range(0.2..0.8) * h),
        _ => (rng.random_range(0.0..s), rng.random_range(0.0..s)),
    };
    RgbImage::from_fn(size, size, |px, py| {
        let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
        let inside = x >= x0 && x < x0 + w && y >= y0 && y < y0 + h;
        let base = match (inside, inside && texture(class, x - x0 + ox, y - y0 + oy, period)) {
            (false, _) => background,
            (true, true) => ink,
            (true, false) => paper,
        };
        let noise: f32 = rng.random_range(-20.0..20.0);
        Rgb(base.map(|c| (c + noise).clamp(0.0, 255.0) as u8))
    })
}

/// Writes `train_per_class` + `val_per_class` images of each of the first `classes` shapes under
/// `root`. The same seed gives the same files.
pub fn generate_shapes(
    root: &Path,
    classes: usize,
    train_per_class: usize,
    val_per_class: usize,
    size: u32,
    seed: u64,
) -> Result<(), DataError> {
    if classes == 0 || classes > SHAPES.len() {
        return Err(DataError::Invalid(format!(
            "the textures dataset has 1 to {} classes, {classes} asked",
            SHAPES.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for (split, count) in [("train", train_per_class), ("val", val_per_class)] {
        for (label, name) in SHAPES.iter().enumerate().take(classes) {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| DataError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
            for i in 0..count {
                let path = dir.join(format!("{i:05}.png"));
                shape_image(label, size, &mut rng)
                    .save(&path)
                    .map_err(|e| DataError::Invalid(format!("cannot write {}: {e}", path.display())))?;
            }
        }
    }
    Ok(())
}
