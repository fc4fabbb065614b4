//! The evaluation transform of timm's classifiers: resize the shorter side to
//! `floor(size / crop_pct)` (PIL resampling), center crop `size`, scale to [0, 1], normalise.

use burn::prelude::*;
use image::RgbImage;
use zoo_models::config::{DataConfig, Interpolation};
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
        let mut out = vec![0f32; 3 * s * s];
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let v = resized[((top + y) * rw + left + x) * 3 + c] as f32 / 255.0;
                    out[(c * s + y) * s + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }

    /// A batch `[B, 3, size, size]` from already transformed images.
    pub fn batch(&self, images: Vec<Vec<f32>>, device: &Device) -> Tensor<4> {
        let b = images.len();
        let values: Vec<f32> = images.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(values, [b, 3, self.size, self.size]), device)
    }
}
