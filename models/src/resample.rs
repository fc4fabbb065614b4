//! Separable resampling with the convolution scheme of PIL's `Image.resize` and of PyTorch's
//! `interpolate(..., antialias=True)`: each output sample is a normalised weighted sum of input
//! samples under a filter stretched by the scale factor when shrinking (so shrinking averages,
//! "antialias"), pixel centres at `i + 0.5` (`align_corners=False`).
//!
//! The same coefficients serve two callers: timm's `resample_abs_pos_embed` (float, PyTorch) and
//! timm's eval `Resize` on 8-bit images (PIL's fixed-point arithmetic, rounded after each pass).

use std::collections::BTreeMap;

use burn::tensor::TensorData;

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle filter, support 1.
    Bilinear,
    /// Keys cubic with a = -0.5 (PIL's and PyTorch's antialiased bicubic), support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// For each output sample: the first input index and the normalised weights from there on.
#[derive(Debug, Clone)]
pub struct Coefficients {
    pub spans: Vec<(usize, Vec<f64>)>,
}

/// Coefficients mapping `in_size` samples onto `out_size` samples.
pub fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let spans = (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // Truncation toward zero, as the C implementations' casts do.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| filter.weight((j as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|x| *x /= total);
            }
            (lo, w)
        })
        .collect();
    Coefficients { spans }
}

/// Resamples a float image `[channels, height, width]` (row-major) to `[channels, out_h, out_w]`,
/// horizontal pass first, in f64 accumulation like PyTorch's CPU kernel.
pub fn resize_f32(
    input: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    filter: Filter,
) -> Vec<f32> {
    assert_eq!(input.len(), channels * h * w, "resize_f32: input length does not match its shape");
    let cx = coefficients(w, out_w, filter);
    let cy = coefficients(h, out_h, filter);
    let mut tmp = vec![0f32; channels * h * out_w];
    for c in 0..channels {
        for y in 0..h {
            let row = &input[(c * h + y) * w..][..w];
            for (x, (lo, ws)) in cx.spans.iter().enumerate() {
                let s: f64 = ws.iter().zip(&row[*lo..]).map(|(k, v)| k * *v as f64).sum();
                tmp[(c * h + y) * out_w + x] = s as f32;
            }
        }
    }
    let mut out = vec![0f32; channels * out_h * out_w];
    for c in 0..channels {
        for (y, (lo, ws)) in cy.spans.iter().enumerate() {
            for x in 0..out_w {
                let s: f64 = ws.iter().enumerate().map(|(k, wk)| wk * tmp[(c * h + lo + k) * out_w + x] as f64).sum();
                out[(c * out_h + y) * out_w + x] = s as f32;
            }
        }
    }
    out
}

/// PIL's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(c: &Coefficients) -> Vec<(usize, Vec<i32>)> {
    let one = (1i64 << PRECISION_BITS) as f64;
    c.spans
        .iter()
        .map(|(lo, ws)| {
            let k = ws.iter().map(|w| (w * one + if *w < 0.0 { -0.5 } else { 0.5 }) as i32).collect();
            (*lo, k)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved 8-bit RGB image `[height, width, 3]` exactly as PIL's `Image.resize`
/// does: fixed-point weights, horizontal pass then vertical, each rounded and clipped to 8 bits.
/// A pass whose size does not change is skipped, as PIL skips it.
pub fn resize_rgb8(input: &[u8], (h, w): (usize, usize), (out_h, out_w): (usize, usize), filter: Filter) -> Vec<u8> {
    assert_eq!(input.len(), h * w * 3, "resize_rgb8: input length does not match its shape");
    let horizontal = if out_w != w {
        let kx = fixed_point(&coefficients(w, out_w, filter));
        let mut tmp = vec![0u8; h * out_w * 3];
        for y in 0..h {
            for (x, (lo, ks)) in kx.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (k, kv) in ks.iter().enumerate() {
                        acc += input[(y * w + lo + k) * 3 + c] as i64 * *kv as i64;
                    }
                    tmp[(y * out_w + x) * 3 + c] = clip8(acc);
                }
            }
        }
        tmp
    } else {
        input.to_vec()
    };
    if out_h == h {
        return horizontal;
    }
    let ky = fixed_point(&coefficients(h, out_h, filter));
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, (lo, ks)) in ky.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (k, kv) in ks.iter().enumerate() {
                    acc += horizontal[((lo + k) * out_w + x) * 3 + c] as i64 * *kv as i64;
                }
                out[(y * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Resamples an absolute position embedding `[1, prefix + g*g, C]` to `[1, prefix + n, C]`
/// (n a square), as timm's `resample_abs_pos_embed`: the prefix tokens are kept, the grid is
/// resized with antialiased bicubic interpolation, `align_corners=False`.
pub fn resample_pos_embed(pos: &TensorData, prefix: usize, n: usize) -> Result<TensorData, String> {
    let dims = pos.shape().as_slice();
    let [1, tokens, c] = *dims else {
        return Err(format!("pos_embed has shape {dims:?}, expected [1, tokens, dim]"));
    };
    let square = |n: usize| {
        let g = (n as f64).sqrt().round() as usize;
        (g * g == n).then_some(g)
    };
    let (Some(old), Some(new)) = (square(tokens.saturating_sub(prefix)), square(n)) else {
        return Err(format!("pos_embed with {tokens} tokens cannot be resampled to {n} patches: grids must be square"));
    };
    let values: Vec<f32> = pos.try_to_vec().map_err(|e| format!("pos_embed: {e:?}"))?;
    // [tokens, C] -> grid [C, old, old]
    let grid: Vec<f32> = (0..c)
        .flat_map(|ch| (0..old * old).map(move |p| (ch, p)))
        .map(|(ch, p)| values[(prefix + p) * c + ch])
        .collect();
    let resized = resize_f32(&grid, c, (old, old), (new, new), Filter::Bicubic);
    let mut out = values[..prefix * c].to_vec();
    out.extend((0..new * new).flat_map(|p| (0..c).map(move |ch| (p, ch))).map(|(p, ch)| resized[ch * new * new + p]));
    Ok(TensorData::new(out, [1, prefix + new * new, c]))
}

/// Fits a checkpoint's position embedding `key` (one class token, then a square grid) to the
/// model's `[1, 1 + n, C]` by [`resample_pos_embed`], when the grid sizes differ.
pub fn fit_pos_embed(tensors: &mut BTreeMap<String, TensorData>, key: &str, target: [usize; 3]) -> Result<(), String> {
    if let Some(pos) = tensors.get(key)
        && pos.shape().as_slice() != target.as_slice()
    {
        let resampled = resample_pos_embed(pos, 1, target[1] - 1)?;
        tensors.insert(key.into(), resampled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised_and_identity_is_exact() {
        for (i, o) in [(10, 4), (4, 10), (7, 7), (248, 224)] {
            for f in [Filter::Bilinear, Filter::Bicubic] {
                for (_, w) in coefficients(i, o, f).spans {
                    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                }
            }
        }
        let img: Vec<u8> = (0..5 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&img, (5, 6), (5, 6), Filter::Bicubic), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![0.25f32; 2 * 3 * 5];
        let out = resize_f32(&img, 2, (3, 5), (7, 2), Filter::Bicubic);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
