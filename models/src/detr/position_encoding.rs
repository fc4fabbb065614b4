//! DETR's position encoding (facebookresearch/detr `models/position_encoding.py`,
//! `PositionEmbeddingSine` with `normalize=True`) and the padding mask at the feature map's size.

use burn::prelude::*;

/// Nearest-neighbour resize of the padding mask to the feature map, as
/// `F.interpolate(mask[None].float(), size=(h, w))`: source index `floor(i * in / out)`.
pub(crate) fn downsample_mask(mask: Tensor<3, Bool>, h: usize, w: usize) -> Tensor<3, Bool> {
    let [_, in_h, in_w] = mask.dims();
    let device = mask.device();
    let index = |out: usize, inp: usize| {
        let scale = inp as f32 / out as f32;
        let idx: Vec<i64> = (0..out).map(|i| ((i as f32 * scale).floor() as i64).min(inp as i64 - 1)).collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [out]), &device)
    };
    mask.int().select(1, index(h, in_h)).select(2, index(w, in_w)).bool()
}

/// DETR's sine position embedding with `d/2` features per axis, temperature 10000, normalised
/// to `[0, 2*pi]` over the unpadded extent: `[B, d, h, w]`, the y half first. Computed on the
/// host from the (small) mask, in f32 as the reference does.
pub fn sine_position_embedding(mask: &Tensor<3, Bool>, d: usize, device: &Device) -> Tensor<4> {
    let [b, h, w] = mask.dims();
    let padded: Vec<bool> = mask.to_data().try_to_vec().expect("mask is boolean");
    let feats = d / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..feats).map(|k| 10000f32.powf((2 * (k / 2)) as f32 / feats as f32)).collect();
    let mut out = vec![0f32; b * d * h * w];
    for bi in 0..b {
        let valid = |y: usize, x: usize| !padded[(bi * h + y) * w + x] as u8 as f32;
        // Cumulative counts of valid cells down each column and along each row.
        let mut y_embed = vec![0f32; h * w];
        let mut x_embed = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let v = valid(y, x);
                y_embed[y * w + x] = v + if y > 0 { y_embed[(y - 1) * w + x] } else { 0.0 };
                x_embed[y * w + x] = v + if x > 0 { x_embed[y * w + x - 1] } else { 0.0 };
            }
        }
        for y in 0..h {
            for x in 0..w {
                let ye = y_embed[y * w + x] / (y_embed[(h - 1) * w + x] + 1e-6) * scale;
                let xe = x_embed[y * w + x] / (x_embed[y * w + w - 1] + 1e-6) * scale;
                for (k, dt) in dim_t.iter().enumerate() {
                    // Even feature indices take the sine, odd ones the cosine.
                    let f = |e: f32| if k % 2 == 0 { (e / dt).sin() } else { (e / dt).cos() };
                    out[((bi * d + k) * h + y) * w + x] = f(ye);
                    out[((bi * d + feats + k) * h + y) * w + x] = f(xe);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, d, h, w]), device)
}
