//! The fused attention op and its gradients against the textbook formula
//! `softmax(q k^T / sqrt(d)) v`, with and without a key padding mask.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use zoo_models::ops::attention;

fn textbook(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<Tensor<2, Bool>>) -> Tensor<3> {
    let [b, nq, c] = q.dims();
    let nk = k.dims()[1];
    let d = c / heads;
    let split = |x: Tensor<3>, n: usize| x.reshape([b, n, heads, d]).swap_dims(1, 2);
    let mut scores = split(q, nq).matmul(split(k, nk).swap_dims(2, 3)) / (d as f64).sqrt();
    if let Some(m) = mask {
        let m = m.reshape([b, 1, 1, nk]).expand([b, heads, nq, nk]);
        scores = scores.mask_fill(m, -1e9);
    }
    softmax(scores, 3).matmul(split(v, nk)).swap_dims(1, 2).reshape([b, nq, c])
}

#[test]
fn fused_attention_matches_textbook_with_gradients() {
    let device = Device::flex().autodiff();
    let data = |seed: u64, n: usize| {
        let values: Vec<f32> =
            (0..2 * n * 8).map(|i| (((i as u64 * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0).collect();
        TensorData::new(values, [2, n, 8])
    };
    for masked in [false, true] {
        let mut results = Vec::new();
        for fused in [true, false] {
            let q = Tensor::<3>::from_data(data(1, 5), &device).require_grad();
            let k = Tensor::<3>::from_data(data(2, 6), &device).require_grad();
            let v = Tensor::<3>::from_data(data(3, 6), &device).require_grad();
            let mask = masked.then(|| {
                Tensor::<2, Bool>::from_data(
                    TensorData::new(
                        vec![false, false, false, false, true, true, false, false, false, false, false, true],
                        [2, 6],
                    ),
                    &device,
                )
            });
            let out = if fused {
                attention(q.clone(), k.clone(), v.clone(), 2, mask)
            } else {
                textbook(q.clone(), k.clone(), v.clone(), 2, mask)
            };
            let weights = Tensor::<3>::from_data(data(4, 5), &device);
            let grads = (out.clone() * weights).sum().backward();
            let read = |t: Tensor<3>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
            results.push((
                read(out),
                read(q.grad(&grads).unwrap()),
                read(k.grad(&grads).unwrap()),
                read(v.grad(&grads).unwrap()),
            ));
        }
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let (f, t) = (&results[0], &results[1]);
        for (name, a, b) in [("output", &f.0, &t.0), ("dq", &f.1, &t.1), ("dk", &f.2, &t.2), ("dv", &f.3, &t.3)] {
            let d = max_diff(a, b);
            assert!(d < 1e-5, "masked={masked}: {name} differs by {d:e}");
        }
    }
}
