//! DETR's evaluation transform and padded batches: resize the shorter side to 800 unless the
//! longer would pass 1333 (PIL bilinear), normalise, zero-pad bottom/right to the batch maximum
//! with a mask that is true on the padding.

use burn::prelude::*;
use image::RgbImage;
use zoo_models::config::DataConfig;
use zoo_models::resample::{Filter, resize_rgb8};

#[derive(Debug, Clone)]
pub struct DetrTransform {
    pub short_side: usize,
    pub max_side: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One transformed image: `[3, height, width]` values, channel-major.
#[derive(Debug, Clone)]
pub struct DetrImage {
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl DetrTransform {
    pub fn new(short_side: usize, max_side: usize, data: &DataConfig) -> Self {
        Self { short_side, max_side, mean: data.mean, std: data.std }
    }

    /// facebookresearch/detr's `get_size_with_aspect_ratio`: `(height, width)` after resizing.
    pub fn resized_dims(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let (min_side, max_side) = (h.min(w) as f64, h.max(w) as f64);
        let mut size = self.short_side;
        if max_side / min_side * size as f64 > self.max_side as f64 {
            // Python's round() rounds half to even.
            size = (self.max_side as f64 * min_side / max_side).round_ties_even() as usize;
        }
        if (w <= h && w == size) || (h <= w && h == size) {
            return (h, w);
        }
        if w < h {
            ((size as f64 * h as f64 / w as f64) as usize, size)
        } else {
            (size, (size as f64 * w as f64 / h as f64) as usize)
        }
    }

    pub fn apply(&self, img: &RgbImage) -> DetrImage {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (height, width) = self.resized_dims((h, w));
        let resized = resize_rgb8(img.as_raw(), (h, w), (height, width), Filter::Bilinear);
        let mut values = vec![0f32; 3 * height * width];
        for (i, px) in resized.chunks_exact(3).enumerate() {
            for c in 0..3 {
                values[c * height * width + i] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        DetrImage { values, height, width }
    }
}

/// Zero-pads images bottom/right to the largest height and width among them: the batch
/// `[B, 3, H, W]` and its padding mask `[B, H, W]` (true on padding).
pub fn pad_batch(images: &[DetrImage], device: &Device) -> (Tensor<4>, Tensor<3, Bool>) {
    let h = images.iter().map(|i| i.height).max().unwrap_or(0);
    let w = images.iter().map(|i| i.width).max().unwrap_or(0);
    let b = images.len();
    let mut values = vec![0f32; b * 3 * h * w];
    let mut mask = vec![true; b * h * w];
    for (bi, img) in images.iter().enumerate() {
        for c in 0..3 {
            for y in 0..img.height {
                let src = &img.values[(c * img.height + y) * img.width..][..img.width];
                values[((bi * 3 + c) * h + y) * w..][..img.width].copy_from_slice(src);
            }
        }
        for y in 0..img.height {
            mask[(bi * h + y) * w..][..img.width].fill(false);
        }
    }
    (
        Tensor::from_data(TensorData::new(values, [b, 3, h, w]), device),
        Tensor::from_data(TensorData::new(mask, [b, h, w]), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_detr() {
        let t = DetrTransform::new(800, 1333, &DataConfig::default());
        assert_eq!(t.resized_dims((480, 640)), (800, 1066));
        // A very wide image is limited by the longer side: round(1333 * 300 / 1000) = 400.
        assert_eq!(t.resized_dims((300, 1000)), (400, 1333));
        assert_eq!(t.resized_dims((800, 600)), (1066, 800));
    }

    #[test]
    fn padding_is_bottom_right_and_masked() {
        let a = DetrImage { values: vec![1.0; 3 * 2 * 3], height: 2, width: 3 };
        let b = DetrImage { values: vec![2.0; 3 * 3 * 2], height: 3, width: 2 };
        let device = Device::flex();
        let (x, mask) = pad_batch(&[a, b], &device);
        assert_eq!(x.dims(), [2, 3, 3, 3]);
        let m: Vec<bool> = mask.into_data().try_into_vec().unwrap();
        assert_eq!(&m[..9], &[false, false, false, false, false, false, true, true, true]);
        assert_eq!(&m[9..], &[false, false, true, false, false, true, false, false, true]);
        let v: Vec<f32> = x.into_data().try_into_vec().unwrap();
        assert_eq!(&v[..9], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    }
}
