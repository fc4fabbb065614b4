//! The transforms of timm's classifiers. Evaluation: resize the shorter side to
//! `floor(size / crop_pct)` (PIL resampling), center crop `size`, scale to [0, 1], normalise.
//! Training: random resized crop, horizontal flip, normalise.

use crate::config::{DataConfig, Interpolation};
use burn::prelude::*;
use image::RgbImage;
use rand::Rng;
use rand::rngs::StdRng;
use zoo_models::resample::{Filter, resize_rgb8};

#[derive(Debug, Clone)]
pub struct EvalTransform {
    pub size: usize,
    pub crop_pct: f64,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    pub fn new(size: usize, data: &DataConfig) -> Self {
        Self {
            size,
            crop_pct: data.crop_pct,
            filter: match data.interpolation {
                Interpolation::Bicubic => Filter::Bicubic,
                Interpolation::Bilinear => Filter::Bilinear,
            },
            mean: data.mean,
            std: data.std,
        }
    }

    /// The resize target: the shorter side becomes `floor(size / crop_pct)`, the longer side
    /// keeps the aspect ratio, truncated (torchvision's `Resize(int)`).
    pub fn resized_dims(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let short_target = (self.size as f64 / self.crop_pct).floor() as usize;
        let long_of = |short: usize, long: usize| (short_target as f64 * long as f64 / short as f64) as usize;
        if w <= h { (long_of(w, h), short_target) } else { (short_target, long_of(h, w)) }
    }

    /// The image as a normalised `[3, size, size]` tensor's values, channel-major.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (rh, rw) = self.resized_dims((h, w));
        let resized = resize_rgb8(img.as_raw(), (h, w), (rh, rw), self.filter);
        // torchvision's CenterCrop offsets: int(round((in - out) / 2)), Python rounding half to even.
        let top = ((rh as f64 - self.size as f64) / 2.0).round_ties_even().max(0.0) as usize;
        let left = ((rw as f64 - self.size as f64) / 2.0).round_ties_even().max(0.0) as usize;
        let s = self.size;
        normalise_crop(&resized, rw, (top, left), (s, s), false, self.mean, self.std)
    }

    /// A batch `[B, 3, size, size]` from already transformed images.
    pub fn batch(&self, images: Vec<Vec<f32>>, device: &Device) -> Tensor<4> {
        let b = images.len();
        let values: Vec<f32> = images.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(values, [b, 3, self.size, self.size]), device)
    }
}

/// The `(h, w)` window at `(top, left)` of an interleaved RGB buffer `width` pixels wide, as
/// normalised channel-major values (`(v / 255 - mean) / std`), optionally mirrored left-right.
fn normalise_crop(
    rgb: &[u8],
    width: usize,
    (top, left): (usize, usize),
    (h, w): (usize, usize),
    mirror: bool,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let mut out = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let sx = if mirror { w - 1 - x } else { x };
                let v = rgb[((top + y) * width + left + sx) * 3 + c] as f32 / 255.0;
                out[(c * h + y) * w + x] = (v - mean[c]) / std[c];
            }
        }
    }
    out
}

/// timm's training transform for ViT and TNT: `RandomResizedCrop(size, scale, ratio=(3/4, 4/3))`
/// with PIL resampling, `RandomHorizontalFlip(hflip)`, normalise.
#[derive(Debug, Clone)]
pub struct TrainTransform {
    pub size: usize,
    pub scale: (f64, f64),
    pub hflip: f64,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TrainTransform {
    pub fn new(size: usize, scale_min: f64, hflip: f64, data: &DataConfig) -> Self {
        let eval = EvalTransform::new(size, data);
        Self { size, scale: (scale_min, 1.0), hflip, filter: eval.filter, mean: data.mean, std: data.std }
    }

    /// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)` of the crop.
    pub fn crop_window(&self, (h, w): (usize, usize), rng: &mut StdRng) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let ratio = rng.random_range(lo..=hi).exp();
            let cw = (target * ratio).sqrt().round() as usize;
            let ch = (target / ratio).sqrt().round() as usize;
            if cw > 0 && cw <= w && ch > 0 && ch <= h {
                return (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw), ch, cw);
            }
        }
        // Fall back to the largest central crop within the ratio range.
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < 3.0 / 4.0 {
            (((w as f64) / (3.0 / 4.0)).round() as usize, w)
        } else if in_ratio > 4.0 / 3.0 {
            (h, ((h as f64) * (4.0 / 3.0)).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }

    /// The augmented image as normalised `[3, size, size]` values.
    pub fn apply(&self, img: &RgbImage, rng: &mut StdRng) -> Vec<f32> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (top, left, ch, cw) = self.crop_window((h, w), rng);
        let raw = img.as_raw();
        let mut crop = Vec::with_capacity(ch * cw * 3);
        for y in top..top + ch {
            crop.extend_from_slice(&raw[(y * w + left) * 3..(y * w + left + cw) * 3]);
        }
        let s = self.size;
        let resized = resize_rgb8(&crop, (ch, cw), (s, s), self.filter);
        let mirror = rng.random_bool(self.hflip);
        normalise_crop(&resized, s, (0, 0), (s, s), mirror, self.mean, self.std)
    }
}
