//! `zoo attention`: where the models look. Every layer's attention probabilities (as `.npy`
//! files), and heat maps over the photo: for ViT and TNT the class token's attention in the last
//! layer, per head, and attention rollout through every layer (Abnar & Zuidema 2020); for TNT
//! also the inner (pixel-level) attention inside one patch; for DETR each detected object's
//! cross-attention in the last decoder layer, and the encoder's self-attention from a few
//! reference points (the DETR paper's figures).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::{Rgb, RgbImage};
use zoo_datasets::EvalTransform;
use zoo_datasets::detection::{DetrTransform, load_batch};
use zoo_datasets::image_io::load_rgb;
use zoo_models::Classifier;
use zoo_models::detr::{Detr, postprocess};
use zoo_train::ZooConfig;

use crate::detect::{class_names, detr_config};
use crate::{Inputs, draw, npy};

/// What to draw and where.
pub struct AttentionOptions {
    /// Heat maps go here (image inputs only).
    pub out: Option<PathBuf>,
    /// Every layer's probabilities as `.npy` files go here.
    pub npy_out: Option<PathBuf>,
    /// DETR: detections scoring at least this get a picture.
    pub threshold: f32,
    /// DETR: reference points `(x, y)` in image pixels for the encoder's self-attention; empty:
    /// the centres of the detections (at most four), else the image centre.
    pub points: Vec<(f32, f32)>,
    /// TNT: the patch (row-major, from 0) whose inner attention is drawn; default the centre one.
    pub patch: Option<usize>,
}

/// One layer's probabilities on the host: `[B, heads, Nq, Nk]` and its values.
struct Probs {
    dims: [usize; 4],
    values: Vec<f32>,
}

impl Probs {
    fn read(t: Tensor<4>) -> Result<Self> {
        let dims = t.dims();
        let values = t.into_data().convert::<f32>().try_into_vec().context("reading attention probabilities")?;
        Ok(Probs { dims, values })
    }

    /// Row `q` of image `b`, the mean over the heads: `Nk` values.
    fn head_mean(&self, b: usize, q: usize) -> Vec<f32> {
        let [_, heads, _, nk] = self.dims;
        let mut mean = vec![0.0; nk];
        for h in 0..heads {
            for (m, v) in mean.iter_mut().zip(self.row(b, h, q)) {
                *m += v / heads as f32;
            }
        }
        mean
    }

    fn row(&self, b: usize, h: usize, q: usize) -> &[f32] {
        let [_, heads, nq, nk] = self.dims;
        &self.values[((b * heads + h) * nq + q) * nk..][..nk]
    }

    /// Image `b`'s `[Nq, Nk]` matrix, the mean over the heads.
    fn head_mean_matrix(&self, b: usize) -> Vec<f32> {
        (0..self.dims[2]).flat_map(|q| self.head_mean(b, q)).collect()
    }
}

/// Attention rollout (Abnar & Zuidema 2020) of one image: per layer the head-mean attention `A`
/// plus the identity (the residual path), rows renormalised, multiplied from the first layer to
/// the last; returns the rollout's `[N, N]` matrix.
pub fn rollout(layers: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut rolled: Vec<f32> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for a in layers {
        let mut layer = a.clone();
        for (i, row) in layer.chunks_mut(n).enumerate() {
            row[i] += 1.0;
            let sum: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
        // rolled = layer @ rolled: the later layer on the left.
        let mut next = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                let a = layer[i * n + k];
                for j in 0..n {
                    next[i * n + j] += a * rolled[k * n + j];
                }
            }
        }
        rolled = next;
    }
    rolled
}

/// A heat map: values on a `rows x cols` grid whose cell `(r, c)` covers the photo pixels
/// `(x, y)` with `x = x0 + (c + u) * cell_w`, `y = y0 + (r + v) * cell_h` for u, v in [0, 1).
#[derive(Debug, Clone)]
pub struct HeatMap {
    pub values: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// The grid's top-left corner and cell size in photo pixels.
    pub origin: (f32, f32),
    pub cell: (f32, f32),
}

impl HeatMap {
    /// The grid's value at photo pixel centre `(x, y)`, bilinear between cell centres (clamped at
    /// the edges); `None` outside the grid.
    pub fn at(&self, x: f32, y: f32) -> Option<f32> {
        let gx = (x + 0.5 - self.origin.0) / self.cell.0;
        let gy = (y + 0.5 - self.origin.1) / self.cell.1;
        if gx < 0.0 || gy < 0.0 || gx >= self.cols as f32 || gy >= self.rows as f32 {
            return None;
        }
        let (fx, fy) = ((gx - 0.5).clamp(0.0, (self.cols - 1) as f32), (gy - 0.5).clamp(0.0, (self.rows - 1) as f32));
        let (c0, r0) = (fx.floor() as usize, fy.floor() as usize);
        let (c1, r1) = ((c0 + 1).min(self.cols - 1), (r0 + 1).min(self.rows - 1));
        let (tx, ty) = (fx - c0 as f32, fy - r0 as f32);
        let v = |r: usize, c: usize| self.values[r * self.cols + c];
        let top = v(r0, c0) * (1.0 - tx) + v(r0, c1) * tx;
        let bottom = v(r1, c0) * (1.0 - tx) + v(r1, c1) * tx;
        Some(top * (1.0 - ty) + bottom * ty)
    }

    /// The grid cell holding the largest value `(row, col)`.
    pub fn argmax(&self) -> (usize, usize) {
        let i = (0..self.values.len()).max_by(|&a, &b| self.values[a].total_cmp(&self.values[b])).unwrap_or(0);
        (i / self.cols, i % self.cols)
    }
}

/// The heat map over `photo` (the photo darkened outside the grid), with a colour scale in the
/// bottom-right corner; also returns the interpolated value at every pixel (`NaN` outside).
pub fn render(photo: &RgbImage, heat: &HeatMap) -> (RgbImage, Vec<f32>) {
    let (w, h) = photo.dimensions();
    let max = heat.values.iter().copied().fold(f32::MIN, f32::max);
    let min = heat.values.iter().copied().fold(f32::MAX, f32::min);
    let span = if max > min { max - min } else { 1.0 };
    let mut out = RgbImage::new(w, h);
    let mut field = vec![f32::NAN; (w * h) as usize];
    for (x, y, px) in out.enumerate_pixels_mut() {
        let photo_px = photo.get_pixel(x, y).0;
        *px = match heat.at(x as f32, y as f32) {
            Some(v) => {
                field[(y * w + x) as usize] = v;
                blend(photo_px, colour((v - min) / span), 0.55)
            }
            None => Rgb(photo_px.map(|c| (c as f32 * 0.35) as u8)),
        };
    }
    colour_scale(&mut out, min, max);
    (out, field)
}

fn colour(t: f32) -> [u8; 3] {
    let c = colorous::TURBO.eval_continuous(t.clamp(0.0, 1.0) as f64);
    [c.r, c.g, c.b]
}

fn blend(under: [u8; 3], over: [u8; 3], alpha: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|i| (under[i] as f32 * (1.0 - alpha) + over[i] as f32 * alpha).round() as u8))
}

/// A horizontal bar from the smallest value's colour to the largest's, labelled with both.
fn colour_scale(img: &mut RgbImage, min: f32, max: f32) {
    let (w, h) = img.dimensions();
    let scale = (w.max(h) / 400).max(1) as i64;
    let (bar_w, bar_h) = ((w / 4).max(16) as i64, 6 * scale);
    let text_h = 8 * scale + 2;
    let (x0, y0) = (w as i64 - bar_w - 4 * scale, h as i64 - bar_h - text_h - 4 * scale);
    if x0 < 0 || y0 < 0 {
        return;
    }
    for dx in 0..bar_w {
        let c = Rgb(colour(dx as f32 / (bar_w - 1).max(1) as f32));
        for dy in 0..bar_h {
            img.put_pixel((x0 + dx) as u32, (y0 + dy) as u32, c);
        }
    }
    let show = |v: f32| if v.abs() >= 0.01 || v == 0.0 { format!("{v:.3}") } else { format!("{v:.1e}") };
    let text = format!("{} to {}", show(min), show(max));
    let text_w = text.len() as i64 * 8 * scale + 2;
    draw::label(img, &text, (x0 + bar_w - text_w).max(0), y0 + bar_h, scale, Rgb([40, 40, 40]));
}

/// Pictures side by side, each scaled to `width` pixels wide, four to a row, on white.
pub fn sheet(pictures: &[(String, RgbImage)], width: u32) -> RgbImage {
    let cols = pictures.len().clamp(1, 4) as u32;
    let thumbs: Vec<(String, RgbImage)> = pictures
        .iter()
        .map(|(title, p)| {
            let h = (p.height() as f32 * width as f32 / p.width() as f32).round().max(1.0) as u32;
            (title.clone(), image::imageops::resize(p, width, h, image::imageops::FilterType::Triangle))
        })
        .collect();
    let row_h = thumbs.iter().map(|(_, t)| t.height()).max().unwrap_or(1) + 14;
    let rows = (thumbs.len() as u32).div_ceil(cols).max(1);
    let mut out = RgbImage::from_pixel(cols * (width + 4) + 4, rows * (row_h + 4) + 4, Rgb([255, 255, 255]));
    for (i, (title, thumb)) in thumbs.iter().enumerate() {
        let (x, y) = (4 + (i as u32 % cols) * (width + 4), 4 + (i as u32 / cols) * (row_h + 4));
        draw::label(&mut out, title, x as i64, y as i64, 1, Rgb([40, 40, 40]));
        image::imageops::replace(&mut out, thumb, x as i64, (y + 14) as i64);
    }
    out
}

/// Writes every layer's probabilities as `{kind}_{i}.npy`; returns the paths.
fn write_npy(dir: &Path, maps: &BTreeMap<&'static str, Vec<Probs>>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (kind, layers) in maps {
        for (i, probs) in layers.iter().enumerate() {
            let path = dir.join(format!("{kind}_{i}.npy"));
            npy::write(&path, &probs.dims, &probs.values)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn host_maps(maps: zoo_models::ops::AttentionMaps) -> Result<BTreeMap<&'static str, Vec<Probs>>> {
    maps.into_inner()
        .into_iter()
        .map(|(kind, layers)| Ok((kind, layers.into_iter().map(Probs::read).collect::<Result<Vec<_>>>()?)))
        .collect()
}

fn save(img: &RgbImage, path: PathBuf, written: &mut Vec<PathBuf>) -> Result<()> {
    img.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// The files written and a line per image of what the model saw.
pub struct AttentionReport {
    pub written: Vec<PathBuf>,
    pub summary: Vec<String>,
}

fn check_options(inputs: &Inputs, opts: &AttentionOptions) -> Result<()> {
    if opts.out.is_none() && opts.npy_out.is_none() {
        bail!("give --out (heat maps over the images) or --npy-out (the probabilities as .npy), or both");
    }
    if opts.out.is_some() && matches!(inputs, Inputs::Npy(_)) {
        bail!("--out draws over the photos: give --image; with --input-npy only --npy-out is written");
    }
    Ok(())
}

/// ViT and TNT: probabilities, then per image the last layer's class-token attention per head,
/// the rollout, and for TNT the inner attention of one patch.
pub fn classifier_attention(
    model: &Classifier,
    config: &ZooConfig,
    inputs: &Inputs,
    opts: &AttentionOptions,
    device: &Device,
) -> Result<AttentionReport> {
    check_options(inputs, opts)?;
    let size = config.model.image_size().context("not a classifier")?;
    let transform = EvalTransform::new(size, &config.data);
    let (images, photos) = match inputs {
        Inputs::Npy(path) => (npy::read_batch(path, device)?, vec![]),
        Inputs::Images(paths) => {
            let photos = paths.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>, _>>()?;
            let values = photos.iter().map(|p| transform.apply(p)).collect();
            (transform.batch(values, device), photos)
        }
    };
    let [_, c, h, w] = images.dims();
    if c != 3 || h != size || w != size {
        bail!("input batch [_, {c}, {h}, {w}] given, [batch, 3, {size}, {size}] expected by the config");
    }
    let (logits, maps) = model.forward_attention(images);
    let maps = host_maps(maps)?;
    let outer = &maps["attn"];
    let n = outer[0].dims[2];
    let grid = (n - 1).isqrt();
    if grid * grid + 1 != n {
        bail!("the model's {} tokens are not a class token and a square grid of patches", n);
    }
    let patch = opts.patch.unwrap_or(grid / 2 * grid + grid / 2);
    if maps.contains_key("inner_attn") && patch >= grid * grid {
        bail!("--patch {patch}: the model has {} patches (0 to {})", grid * grid, grid * grid - 1);
    }
    let mut written = match &opts.npy_out {
        Some(dir) => write_npy(dir, &maps)?,
        None => vec![],
    };
    let predicted: Vec<i64> =
        logits.argmax(1).into_data().convert::<i64>().try_into_vec().context("reading classes")?;
    let labels = config.labels()?;
    let name = |class: usize| labels.as_ref().map_or(format!("class {class}"), |l| l[class].clone());
    let mut summary = Vec::new();
    if let (Some(dir), Inputs::Images(paths)) = (&opts.out, inputs) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (b, (stem, photo)) in draw::unique_stems(paths.iter().map(PathBuf::as_path)).iter().zip(&photos).enumerate()
        {
            let heat = |values: Vec<f32>| crop_heat_map(&transform, photo, grid, values);
            let mut panels = Vec::new();
            let layers: Vec<Vec<f32>> = outer.iter().map(|p| p.head_mean_matrix(b)).collect();
            let rolled = rollout(&layers, n);
            let (rolled_img, _) = render(photo, &heat(rolled[1..n].to_vec()));
            panels.push(("rollout".to_string(), rolled_img));
            let last = outer.last().expect("at least one layer");
            for head in 0..last.dims[1] {
                let (img, _) = render(photo, &heat(last.row(b, head, 0)[1..].to_vec()));
                panels.push((format!("last layer head {head}"), img));
            }
            if let Some(inner) = maps.get("inner_attn") {
                panels.push((
                    format!("inner attention patch {patch}"),
                    inner_picture(&transform, photo, grid, inner, b, patch),
                ));
            }
            for (title, img) in &panels {
                save(img, dir.join(format!("{stem}.{}.png", title.replace(' ', "_"))), &mut written)?;
            }
            save(&sheet(&panels, 256), dir.join(format!("{stem}.sheet.png")), &mut written)?;
        }
    }
    for (b, class) in predicted.iter().enumerate() {
        let input = match inputs {
            Inputs::Npy(path) => format!("{}[{b}]", path.display()),
            Inputs::Images(paths) => paths[b].display().to_string(),
        };
        summary.push(format!("{input}: {}", name(*class as usize)));
    }
    Ok(AttentionReport { written, summary })
}

/// The photo region the evaluation transform's centre crop came from: `(x0, y0)` and the size of
/// one crop pixel, in photo pixels.
fn crop_region(transform: &EvalTransform, photo: &RgbImage) -> ((f32, f32), (f32, f32)) {
    let (h, w) = (photo.height() as usize, photo.width() as usize);
    let (rh, rw) = transform.resized_dims((h, w));
    let top = ((rh as f64 - transform.size as f64) / 2.0).round_ties_even().max(0.0) as f32;
    let left = ((rw as f64 - transform.size as f64) / 2.0).round_ties_even().max(0.0) as f32;
    let (sx, sy) = (w as f32 / rw as f32, h as f32 / rh as f32);
    ((left * sx, top * sy), (sx, sy))
}

/// Patch values on the `grid x grid` patches of the centre crop, placed over the photo.
fn crop_heat_map(transform: &EvalTransform, photo: &RgbImage, grid: usize, values: Vec<f32>) -> HeatMap {
    let (origin, (sx, sy)) = crop_region(transform, photo);
    let patch = transform.size as f32 / grid as f32;
    HeatMap { values, rows: grid, cols: grid, origin, cell: (patch * sx, patch * sy) }
}

/// TNT's inner attention in one patch, last layer: the attention each pixel token receives, the
/// mean over heads and queries, over that patch's area; the patch outlined.
fn inner_picture(
    transform: &EvalTransform,
    photo: &RgbImage,
    grid: usize,
    inner: &[Probs],
    b: usize,
    patch: usize,
) -> RgbImage {
    let last = inner.last().expect("at least one layer");
    let [_, heads, pixels, _] = last.dims;
    let side = pixels.isqrt();
    let row = b * grid * grid + patch;
    let mut received = vec![0.0; pixels];
    for h in 0..heads {
        for q in 0..pixels {
            for (r, v) in received.iter_mut().zip(last.row(row, h, q)) {
                *r += v / (heads * pixels) as f32;
            }
        }
    }
    let (origin, (sx, sy)) = crop_region(transform, photo);
    let patch_px = transform.size as f32 / grid as f32;
    let (pr, pc) = ((patch / grid) as f32, (patch % grid) as f32);
    let corner = (origin.0 + pc * patch_px * sx, origin.1 + pr * patch_px * sy);
    let cell = (patch_px * sx / side as f32, patch_px * sy / side as f32);
    let heat = HeatMap { values: received, rows: side, cols: side, origin: corner, cell };
    let (mut img, _) = render(photo, &heat);
    let outline = [corner.0, corner.1, corner.0 + patch_px * sx, corner.1 + patch_px * sy];
    draw::rectangle(&mut img, outline, 1, Rgb([255, 255, 255]));
    img
}

/// DETR: probabilities, then per image each detection's last-layer cross-attention with its box
/// (and a sheet of them all), and the encoder's self-attention from the reference points.
pub fn detr_attention(
    model: &Detr,
    config: &ZooConfig,
    config_path: &Path,
    inputs: &Inputs,
    opts: &AttentionOptions,
    device: &Device,
) -> Result<AttentionReport> {
    check_options(inputs, opts)?;
    let detr = detr_config(config, config_path)?;
    let names = class_names(config, detr.num_classes)?;
    // The images, their padding mask, their original sizes and their sizes inside the batch.
    let (images, mask, sizes, valid, photos) = match inputs {
        Inputs::Npy(path) => {
            let x = npy::read_batch(path, device)?;
            let [b, _, h, w] = x.dims();
            (x, Tensor::<3, Bool>::full([b, h, w], false, device), vec![(h, w); b], vec![(h, w); b], vec![])
        }
        Inputs::Images(paths) => {
            let transform = DetrTransform::new(detr.eval_short_side, detr.eval_max_side, &config.data);
            let batch = load_batch(paths, &transform, device)?;
            let valid = batch.sizes.iter().map(|&size| transform.resized_dims(size)).collect();
            (batch.images, batch.mask, batch.sizes, valid, batch.decoded)
        }
    };
    let [_, _, padded_h, padded_w] = images.dims();
    let result = model.forward_attention(images, mask);
    let detections = postprocess(&result.output, &sizes);
    let maps = host_maps(result.maps)?;
    let mut written = match &opts.npy_out {
        Some(dir) => write_npy(dir, &maps)?,
        None => vec![],
    };
    let [fh, fw] = result.feature_size;
    // Per image, the detections scoring at least the threshold, with their query.
    let kept: Vec<Vec<(usize, &zoo_models::detr::Detection)>> = detections
        .iter()
        .map(|dets| dets.iter().enumerate().filter(|(_, d)| d.score >= opts.threshold).collect())
        .collect();
    let mut summary = Vec::new();
    for (b, kept) in kept.iter().enumerate() {
        let listed: Vec<String> = kept.iter().map(|(_, d)| format!("{} {:.2}", names[d.label], d.score)).collect();
        summary.push(format!("image {b}: {} detections above {}: {}", kept.len(), opts.threshold, listed.join(", ")));
    }
    if let (Some(dir), Inputs::Images(paths)) = (&opts.out, inputs) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cross = maps["decoder_cross_attn"].last().expect("at least one decoder layer");
        let encoder = maps.get("encoder_attn").and_then(|l| l.last());
        for (b, stem) in draw::unique_stems(paths.iter().map(PathBuf::as_path)).iter().enumerate() {
            let photo = &photos[b];
            // Feature cell (r, c) covers resized pixels [r, r+1) * padded/feature; in photo pixels:
            let (sy, sx) = (sizes[b].0 as f32 / valid[b].0 as f32, sizes[b].1 as f32 / valid[b].1 as f32);
            let cell = (padded_w as f32 / fw as f32 * sx, padded_h as f32 / fh as f32 * sy);
            let heat = |values: Vec<f32>| HeatMap { values, rows: fh, cols: fw, origin: (0.0, 0.0), cell };
            let mut panels = Vec::new();
            let kept = &kept[b];
            for (k, (query, d)) in kept.iter().enumerate() {
                let (mut img, _) = render(photo, &heat(cross.head_mean(b, *query)));
                let text = format!("{} {:.2}", names[d.label], d.score);
                draw::labelled_box(&mut img, d.bbox_xyxy, &text, draw::class_colour(d.label));
                let title = format!("object {k} {}", names[d.label]);
                save(&img, dir.join(format!("{stem}.object{k}.png")), &mut written)?;
                panels.push((title, img));
            }
            if let Some(encoder) = encoder {
                let points = match (&opts.points[..], &kept[..]) {
                    ([], []) => vec![(photo.width() as f32 / 2.0, photo.height() as f32 / 2.0)],
                    ([], kept) => kept
                        .iter()
                        .take(4)
                        .map(|(_, d)| {
                            ((d.bbox_xyxy[0] + d.bbox_xyxy[2]) / 2.0, (d.bbox_xyxy[1] + d.bbox_xyxy[3]) / 2.0)
                        })
                        .collect(),
                    (points, _) => points.to_vec(),
                };
                for (k, &(x, y)) in points.iter().enumerate() {
                    if !(0.0..photo.width() as f32).contains(&x) || !(0.0..photo.height() as f32).contains(&y) {
                        bail!(
                            "--points {x},{y} is outside {} ({}x{} pixels)",
                            paths[b].display(),
                            photo.width(),
                            photo.height()
                        );
                    }
                    let (c, r) = ((x / cell.0) as usize, (y / cell.1) as usize);
                    let query = r.min(fh - 1) * fw + c.min(fw - 1);
                    let (mut img, _) = render(photo, &heat(encoder.head_mean(b, query)));
                    let scale = (img.width().max(img.height()) as f32 / 400.0).max(1.0);
                    let marker = [x - 4.0 * scale, y - 4.0 * scale, x + 4.0 * scale, y + 4.0 * scale];
                    draw::rectangle(&mut img, marker, 2 * scale as i64, Rgb([255, 255, 255]));
                    save(&img, dir.join(format!("{stem}.encoder_point{k}.png")), &mut written)?;
                    panels.push((format!("encoder at ({x:.0}, {y:.0})"), img));
                }
            }
            save(&sheet(&panels, 256), dir.join(format!("{stem}.sheet.png")), &mut written)?;
        }
    }
    Ok(AttentionReport { written, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_of_one_uniform_layer_mixes_half_identity() {
        // One layer attending uniformly: (A + I) / 2 with A = 1/n everywhere.
        let n = 4;
        let a = vec![1.0 / n as f32; n * n];
        let r = rollout(&[a], n);
        for i in 0..n {
            for j in 0..n {
                let expected = 0.5 / n as f32 + if i == j { 0.5 } else { 0.0 };
                assert!((r[i * n + j] - expected).abs() < 1e-6);
            }
        }
        // Rows of a rollout stay distributions.
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 5 + 1) as f32).collect();
        let b: Vec<f32> =
            b.chunks(n).flat_map(|row| row.iter().map(|v| v / row.iter().sum::<f32>()).collect::<Vec<_>>()).collect();
        let r = rollout(&[b.clone(), b], n);
        for row in r.chunks(n) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn heat_map_maximum_is_where_the_grid_maximum_is() {
        let photo = RgbImage::from_pixel(90, 60, Rgb([128, 128, 128]));
        let values: Vec<f32> = (0..12).map(|i| if i == 7 { 1.0 } else { 0.1 * i as f32 / 12.0 }).collect();
        let heat = HeatMap { values, rows: 3, cols: 4, origin: (5.0, 0.0), cell: (20.0, 20.0) };
        let (img, field) = render(&photo, &heat);
        assert_eq!(img.dimensions(), (90, 60));
        let best =
            (0..field.len()).filter(|&i| !field[i].is_nan()).max_by(|&a, &b| field[a].total_cmp(&field[b])).unwrap();
        let (x, y) = ((best % 90) as f32, (best / 90) as f32);
        // Cell 7 is row 1, column 3: x in [65, 85), y in [20, 40).
        assert_eq!(heat.argmax(), (1, 3));
        assert!((65.0..85.0).contains(&x) && (20.0..40.0).contains(&y), "({x}, {y})");
        assert!(field[2].is_nan(), "left of the grid is outside it");
    }
}
