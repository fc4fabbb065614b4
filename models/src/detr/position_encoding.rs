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
/// to `[0, 2*pi]` over the unpadded extent: `[B, d, h, w]`, the y half first, each half
/// interleaving sine (even features) and cosine (odd ones). Computed with tensor ops on the
/// mask's device, in f32 as the reference does (no copy of the mask to the host, whose boolean
/// storage differs between backends: wgpu keeps masks as u32).
pub fn sine_position_embedding(mask: &Tensor<3, Bool>, d: usize) -> Tensor<4> {
    let [_, h, w] = mask.dims();
    let device = mask.device();
    let feats = d / 2;
    let scale = 2.0 * std::f64::consts::PI;
    // Cumulative counts of valid cells down each column and along each row, over their totals.
    let valid = mask.clone().bool_not().float();
    let y_embed = valid.clone().cumsum(1);
    let x_embed = valid.cumsum(2);
    let y_embed = (y_embed.clone() / (y_embed.slice(s![.., h - 1..h, ..]) + 1e-6)) * scale;
    let x_embed = (x_embed.clone() / (x_embed.slice(s![.., .., w - 1..w]) + 1e-6)) * scale;
    let per_feature = |f: &dyn Fn(usize) -> f32| {
        let values: Vec<f32> = (0..feats).map(f).collect();
        Tensor::<1>::from_data(TensorData::new(values, [feats]), &device).reshape([1, feats, 1, 1])
    };
    let dim_t = per_feature(&|k| 10000f32.powf((2 * (k / 2)) as f32 / feats as f32));
    let even = per_feature(&|k| (k % 2 == 0) as u8 as f32);
    // `[B, h, w]` -> `[B, feats, h, w]`; multiplying by 1 or 0 picks sine or cosine exactly.
    let encode = |embed: Tensor<3>| {
        let t = embed.unsqueeze_dim::<4>(1) / dim_t.clone();
        t.clone().sin() * even.clone() + t.cos() * (even.clone().neg() + 1.0)
    };
    Tensor::cat(vec![encode(y_embed), encode(x_embed)], 1)
}
