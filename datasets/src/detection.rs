//! DETR's transforms and padded batches. Evaluation: resize the shorter side to 800 unless the
//! longer would pass 1333 (PIL bilinear), normalise. Training (facebookresearch/detr's
//! `make_coco_transforms("train")`): horizontal flip, then with even odds either a multi-scale
//! resize, or a resize to 400/500/600, a random crop of 384-600 pixels and the multi-scale resize;
//! the boxes follow the image through each step. Batches are zero-padded bottom/right to the
//! largest image, with a mask that is true on the padding.

use crate::config::{DataConfig, DetrAugmentConfig};
use burn::prelude::*;
use image::RgbImage;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use zoo_models::box_ops::{box_has_area, box_xywh_to_xyxy, box_xyxy_to_cxcywh, clip_box, scale_box};
use zoo_models::resample::{Filter, resize_rgb8};

use std::path::PathBuf;

use rayon::prelude::*;

use crate::coco::CocoBox;
use crate::{DataError, load_rgb};

/// One image's targets as DETR's loss takes them: class indices (COCO category ids) and
/// (cx, cy, w, h) boxes normalised by the transformed image's size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetrTarget {
    pub labels: Vec<usize>,
    pub boxes: Vec<[f32; 4]>,
}

/// Boxes in pixels, `[x0, y0, x1, y1]`, with their labels, while the image is being transformed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PixelBoxes {
    pub labels: Vec<usize>,
    pub boxes: Vec<[f32; 4]>,
}

impl PixelBoxes {
    /// DETR's `ConvertCocoPolysToMask` for boxes: crowd regions left out, `[x, y, w, h]` to
    /// corners clamped to the image, boxes without area dropped.
    pub fn from_coco(annotations: &[CocoBox], (height, width): (usize, usize)) -> Self {
        let (w, h) = (width as f32, height as f32);
        let mut out = Self::default();
        for a in annotations.iter().filter(|a| !a.crowd) {
            let b = clip_box(box_xywh_to_xyxy(a.bbox.map(|v| v as f32)), w, h);
            if box_has_area(b) {
                out.labels.push(a.category_id as usize);
                out.boxes.push(b);
            }
        }
        out
    }

    fn scale(&mut self, sx: f32, sy: f32) {
        for b in &mut self.boxes {
            *b = scale_box(*b, sx, sy);
        }
    }

    /// Normalised (cx, cy, w, h) for an image of `(height, width)`.
    pub fn to_target(&self, (height, width): (usize, usize)) -> DetrTarget {
        let (w, h) = (width as f32, height as f32);
        let boxes = self
            .boxes
            .iter()
            .map(|&b| {
                let [cx, cy, bw, bh] = box_xyxy_to_cxcywh(b);
                [cx / w, cy / h, bw / w, bh / h]
            })
            .collect();
        DetrTarget { labels: self.labels.clone(), boxes }
    }
}

/// facebookresearch/detr's `get_size_with_aspect_ratio`: `(height, width)` once the shorter
/// side is `size`, or less when the longer side would pass `max_size`.
pub fn detr_resized_dims((h, w): (usize, usize), size: usize, max_size: Option<usize>) -> (usize, usize) {
    let mut size = size;
    if let Some(max_size) = max_size {
        let (min_side, max_side) = (h.min(w) as f64, h.max(w) as f64);
        if max_side / min_side * size as f64 > max_size as f64 {
            // Python's round() rounds half to even.
            // At least one pixel (load_rgb refuses images thin enough to need it).
            size = ((max_size as f64 * min_side / max_side).round_ties_even() as usize).max(1);
        }
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

/// Channel-major normalised values of an RGB image.
fn normalise(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> DetrImage {
    let (height, width) = (img.height() as usize, img.width() as usize);
    let mut values = vec![0f32; 3 * height * width];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * height * width + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    DetrImage { values, height, width }
}

fn resize(img: &RgbImage, (height, width): (usize, usize)) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    if (h, w) == (height, width) {
        return img.clone();
    }
    let resized = resize_rgb8(img.as_raw(), (h, w), (height, width), Filter::Bilinear);
    RgbImage::from_raw(width as u32, height as u32, resized).expect("resize returns height * width pixels")
}

/// DETR's training augmentation.
#[derive(Debug, Clone)]
pub struct DetrTrainTransform {
    pub augment: DetrAugmentConfig,
    pub hflip: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl DetrTrainTransform {
    pub fn new(augment: &DetrAugmentConfig, hflip: f64, data: &DataConfig) -> Self {
        Self { augment: augment.clone(), hflip, mean: data.mean, std: data.std }
    }

    /// `RandomResize(sizes, max_size)`: a random shorter side, the boxes scaled with the image.
    fn random_resize(
        img: &RgbImage,
        boxes: &mut PixelBoxes,
        sizes: &[usize],
        max_size: Option<usize>,
        rng: &mut StdRng,
    ) -> RgbImage {
        let size = *sizes.choose(rng).expect("validated: at least one size");
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (nh, nw) = detr_resized_dims((h, w), size, max_size);
        boxes.scale(nw as f32 / w as f32, nh as f32 / h as f32);
        resize(img, (nh, nw))
    }

    /// `RandomSizeCrop(min, max)`: a crop of random width and height in `[min, min(side, max)]`
    /// at a random place; boxes are cut to it and those left without area dropped.
    fn random_size_crop(&self, img: &RgbImage, boxes: &mut PixelBoxes, rng: &mut StdRng) -> RgbImage {
        let [lo, hi] = self.augment.crop_size;
        let (h, w) = (img.height() as usize, img.width() as usize);
        let pick = |side: usize, rng: &mut StdRng| {
            let top = side.min(hi);
            rng.random_range(lo.min(top)..=top)
        };
        let cw = pick(w, rng);
        let ch = pick(h, rng);
        let top = rng.random_range(0..=h - ch);
        let left = rng.random_range(0..=w - cw);
        let mut kept = PixelBoxes::default();
        for (&label, b) in boxes.labels.iter().zip(&boxes.boxes) {
            let (l, t) = (left as f32, top as f32);
            let c = clip_box([b[0] - l, b[1] - t, b[2] - l, b[3] - t], cw as f32, ch as f32);
            if box_has_area(c) {
                kept.labels.push(label);
                kept.boxes.push(c);
            }
        }
        *boxes = kept;
        image::imageops::crop_imm(img, left as u32, top as u32, cw as u32, ch as u32).to_image()
    }

    /// The augmented, normalised image and its targets.
    pub fn apply(&self, img: &RgbImage, boxes: &PixelBoxes, rng: &mut StdRng) -> (DetrImage, DetrTarget) {
        let a = &self.augment;
        let mut boxes = boxes.clone();
        let mut img = if rng.random_bool(self.hflip) {
            let w = img.width() as f32;
            for b in &mut boxes.boxes {
                *b = [w - b[2], b[1], w - b[0], b[3]];
            }
            image::imageops::flip_horizontal(img)
        } else {
            img.clone()
        };
        if !a.crop_scales.is_empty() && rng.random_bool(0.5) {
            img = Self::random_resize(&img, &mut boxes, &a.crop_scales, None, rng);
            img = self.random_size_crop(&img, &mut boxes, rng);
        }
        img = Self::random_resize(&img, &mut boxes, &a.scales, Some(a.max_size), rng);
        let out = normalise(&img, self.mean, self.std);
        let target = boxes.to_target((out.height, out.width));
        (out, target)
    }
}

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

    /// `(height, width)` after the resize.
    pub fn resized_dims(&self, dims: (usize, usize)) -> (usize, usize) {
        detr_resized_dims(dims, self.short_side, Some(self.max_side))
    }

    pub fn apply(&self, img: &RgbImage) -> DetrImage {
        let dims = self.resized_dims((img.height() as usize, img.width() as usize));
        normalise(&resize(img, dims), self.mean, self.std)
    }
}

/// A padded batch of images as DETR's evaluation prepares them.
pub struct DetrBatch {
    pub images: Tensor<4>,
    pub mask: Tensor<3, Bool>,
    /// Original `(height, width)` of each image.
    pub sizes: Vec<(usize, usize)>,
    pub decoded: Vec<RgbImage>,
}

/// Decodes and transforms image files on all cores and pads them into one batch.
pub fn load_batch(paths: &[PathBuf], transform: &DetrTransform, device: &Device) -> Result<DetrBatch, DataError> {
    let decoded = paths.par_iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>, _>>()?;
    let transformed: Vec<_> = decoded.par_iter().map(|img| transform.apply(img)).collect();
    let sizes = decoded.iter().map(|i| (i.height() as usize, i.width() as usize)).collect();
    let (images, mask) = pad_batch(&transformed, device);
    Ok(DetrBatch { images, mask, sizes, decoded })
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
