//! The fused differentiable ops of `zoo_models::ops::fused` (linear, GELU, scaled softmax, layer norm, ...)
//! against Burn's own ops on the same inputs, forward values and every gradient, under autodiff
//! on flex and without it. Sizes span several kernel tasks, and some inputs are transposed views,
//! so that the strided paths run too.

use burn::nn::LayerNormConfig;
use burn::prelude::*;
use burn::tensor::activation;
use zoo_models::ops::{fused, layer_norm_epsilon};

/// Deterministic values in [-spread, spread].
fn data(seed: u64, shape: [usize; 3], spread: f32) -> TensorData {
    let n = shape.iter().product::<usize>();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
        })
        .collect();
    TensorData::new(values, shape)
}

fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Asserts `|a - b| <= 1e-4 (|b| + mean |b|)` element-wise, and that every value is finite.
fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().map(|v| v.abs()).sum::<f32>() / b.len() as f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite() && y.is_finite(), "{what}[{i}]: {x} vs {y}");
        assert!((x - y).abs() <= 1e-4 * (y.abs() + scale), "{what}[{i}]: {x} vs {y}");
    }
}

/// `y = op(x)` and `dx` of `sum(y * w)` for random `w`, by the fused op and by the reference.
fn compare_unary(
    what: &str,
    x: TensorData,
    fused: impl Fn(Tensor<3>) -> Tensor<3>,
    reference: impl Fn(Tensor<3>) -> Tensor<3>,
    transposed: bool,
) {
    let device = Device::flex().autodiff();
    let run = |op: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let leaf = Tensor::<3>::from_data(x.clone(), &device).require_grad();
        let input = if transposed { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
        let y = op(input);
        let w = Tensor::<3>::from_data(data(99, y.dims(), 1.0), &device);
        let grads = (y.clone() * w).sum().backward();
        (read(y), read(leaf.grad(&grads).unwrap()))
    };
    let (y, dx) = run(&fused);
    let (y_ref, dx_ref) = run(&reference);
    assert_close(&format!("{what} forward"), &y, &y_ref);
    assert_close(&format!("{what} dx"), &dx, &dx_ref);
    // Outside autodiff the same op gives the same values.
    let plain = read(fused(Tensor::<3>::from_data(x.clone(), &Device::flex())));
    if !transposed {
        assert_close(&format!("{what} forward without autodiff"), &plain, &y_ref);
    }
}

#[test]
fn gelu_and_its_gradient_match_burns() {
    for (shape, transposed) in [([2, 3, 5], false), ([4, 96, 200], false), ([3, 40, 70], true)] {
        compare_unary("gelu", data(1, shape, 6.0), fused::gelu, activation::gelu, transposed);
    }
}

#[test]
fn scaled_softmax_and_its_gradient_match_burns() {
    for (shape, transposed) in [([2, 3, 5], false), ([6, 197, 197], false), ([3, 40, 70], true)] {
        compare_unary(
            "softmax",
            data(2, shape, 8.0),
            |x| fused::softmax(x, 0.125),
            |x| activation::softmax(x * 0.125, 2),
            transposed,
        );
    }
}

#[test]
fn layer_norm_and_its_gradients_match_burns() {
    let device = Device::flex().autodiff();
    for (shape, transposed) in [([2, 3, 8], false), ([4, 197, 768], false), ([3, 64, 40], true)] {
        let d = if transposed { shape[1] } else { shape[2] };
        let run = |use_fused: bool| {
            let leaf = Tensor::<3>::from_data(data(3, shape, 3.0), &device).require_grad();
            let x = if transposed { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
            let gamma = Tensor::<3>::from_data(data(4, [1, 1, d], 1.5), &device).reshape([d]);
            let beta = Tensor::<3>::from_data(data(5, [1, 1, d], 1.0), &device).reshape([d]);
            let (gamma, beta) = (gamma.require_grad(), beta.require_grad());
            let y = if use_fused {
                fused::layer_norm(x, gamma.clone(), beta.clone(), 1e-6)
            } else {
                let mean = x.clone().mean_dim(2);
                let centred = x - mean;
                let var = centred.clone().square().mean_dim(2);
                centred / (var + 1e-6).sqrt() * gamma.clone().reshape([1, 1, d]) + beta.clone().reshape([1, 1, d])
            };
            let w = Tensor::<3>::from_data(data(6, y.dims(), 1.0), &device);
            let grads = (y.clone() * w).sum().backward();
            [
                read(y),
                read(leaf.grad(&grads).unwrap()),
                read(gamma.grad(&grads).unwrap()),
                read(beta.grad(&grads).unwrap()),
            ]
        };
        let (got, want) = (run(true), run(false));
        for (name, a, b) in
            ["forward", "dx", "dgamma", "dbeta"].iter().zip(&got).zip(&want).map(|((n, a), b)| (n, a, b))
        {
            assert_close(&format!("layer norm {shape:?} {name}"), a, b);
        }
    }
}

#[test]
fn linear_and_its_gradients_match_burns() {
    let device = Device::flex().autodiff();
    // [B, N, k] x [k, n]: a tiny one, ViT-like rows over several tasks, and DETR's projection
    // (a transposed slice of a larger weight) on a transposed input.
    for ([b, rows, k, n], views) in [([2, 3, 5, 7], false), ([2, 197, 96, 200], false), ([3, 40, 33, 17], true)] {
        let run = |use_fused: bool| {
            let x_leaf = if views { [b, k, rows] } else { [b, rows, k] };
            let leaf = Tensor::<3>::from_data(data(11, x_leaf, 2.0), &device).require_grad();
            let x = if views { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
            let w_dims = if views { [2 * n, k] } else { [k, n] };
            let w_leaf = Tensor::<3>::from_data(data(12, [1, w_dims[0], w_dims[1]], 0.5), &device);
            let w_leaf = w_leaf.reshape(w_dims).require_grad();
            let weight = if views { w_leaf.clone().slice(s![n..2 * n, ..]).transpose() } else { w_leaf.clone() };
            let bias = Tensor::<3>::from_data(data(13, [1, 1, n], 1.0), &device).reshape([n]).require_grad();
            let y = if use_fused {
                fused::linear(x, weight, Some(bias.clone()))
            } else {
                x.matmul(weight.unsqueeze()) + bias.clone().unsqueeze()
            };
            let w = Tensor::<3>::from_data(data(14, y.dims(), 1.0), &device);
            let grads = (y.clone() * w).sum().backward();
            [
                read(y),
                read(leaf.grad(&grads).unwrap()),
                read(w_leaf.grad(&grads).unwrap()),
                read(bias.grad(&grads).unwrap()),
            ]
        };
        let (got, want) = (run(true), run(false));
        // Without a bias: the same product and gradients of x and the weight.
        let x = Tensor::<3>::from_data(data(15, [b, rows, k], 2.0), &device).require_grad();
        let weight = Tensor::<3>::from_data(data(16, [1, k, n], 0.5), &device).reshape([k, n]).require_grad();
        let y = fused::linear(x.clone(), weight.clone(), None);
        let y_ref = x.clone().matmul(weight.clone().unsqueeze());
        assert_close("linear without bias forward", &read(y.clone()), &read(y_ref.clone()));
        let (grads, grads_ref) = (y.sum().backward(), y_ref.sum().backward());
        assert_close("linear without bias dx", &read(x.grad(&grads).unwrap()), &read(x.grad(&grads_ref).unwrap()));
        let (dw, dw_ref) = (weight.grad(&grads).unwrap(), weight.grad(&grads_ref).unwrap());
        assert_close("linear without bias dweight", &read(dw), &read(dw_ref));
        for (name, a, b) in
            ["forward", "dx", "dweight", "dbias"].iter().zip(&got).zip(&want).map(|((n, a), b)| (n, a, b))
        {
            assert_close(&format!("linear {rows}x{k}x{n} {name}"), a, b);
        }
    }
}

#[test]
fn zoo_layer_norm_takes_the_fused_op_with_the_modules_epsilon() {
    for epsilon in [1e-6, 1e-5, 1e-12, 0.1] {
        let norm = LayerNormConfig::new(16).with_epsilon(epsilon).init(&Device::flex());
        assert_eq!(layer_norm_epsilon(&norm), Some(epsilon));
    }
    // Through `ops::layer_norm` under autodiff (the fused op) and Burn's module: same values.
    let device = Device::flex().autodiff();
    let norm = LayerNormConfig::new(40).with_epsilon(0.5).init(&device);
    let x = Tensor::<3>::from_data(data(7, [2, 5, 40], 2.0), &device);
    let ours = read(zoo_models::ops::layer_norm(&norm, x.clone()));
    assert_close("ops::layer_norm", &ours, &read(norm.forward(x)));
}

#[test]
fn channel_affine_and_its_gradients_match_burns() {
    let device = Device::flex().autodiff();
    let shape = [2, 5, 9, 11];
    let four = |seed: u64, spread: f32| {
        let d = data(seed, [shape[0], shape[1], shape[2] * shape[3]], spread);
        Tensor::<3>::from_data(d, &device).reshape(shape)
    };
    for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
        let run = |use_fused: bool| {
            let x = four(8, 2.0).require_grad();
            let residual = four(9, 1.0).require_grad();
            let scale = Tensor::<3>::from_data(data(10, [1, 1, 5], 1.5), &device).reshape([5]);
            let shift = Tensor::<3>::from_data(data(11, [1, 1, 5], 0.5), &device).reshape([5]);
            let r = with_residual.then(|| residual.clone());
            let y = if use_fused {
                zoo_models::ops::channel_affine(x.clone(), scale, shift, r, relu)
            } else {
                let y = x.clone() * scale.reshape([1, 5, 1, 1]) + shift.reshape([1, 5, 1, 1]);
                let y = match r {
                    Some(r) => y + r,
                    None => y,
                };
                if relu { activation::relu(y) } else { y }
            };
            let w = four(12, 1.0);
            let grads = (y.clone() * w).sum().backward();
            let dres = if with_residual { read(residual.grad(&grads).unwrap()) } else { Vec::new() };
            [read(y), read(x.grad(&grads).unwrap()), dres]
        };
        let (got, want) = (run(true), run(false));
        for ((name, a), b) in ["forward", "dx", "dresidual"].iter().zip(&got).zip(&want) {
            assert_close(&format!("channel affine residual={with_residual} relu={relu} {name}"), a, b);
        }
    }
}

/// A convolution to test: (batch, channels in, channels out, height, width, kernel, stride,
/// padding).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// ResNet's pointwise, 3x3 and strided convolutions and its stem.
const RESNET_CONVS: [ConvCase; 5] = [
    (2, 6, 5, 9, 11, 1, 1, 0),
    (2, 6, 5, 9, 11, 1, 2, 0),
    (2, 4, 3, 10, 9, 3, 1, 1),
    (2, 4, 3, 10, 9, 3, 2, 1),
    (1, 3, 4, 20, 18, 7, 2, 3),
];

#[test]
fn conv2d_and_its_gradients_match_burns() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    let device = Device::flex().autodiff();
    // The last one spans two blocks of the im2col matrix.
    for (b, ci, co, h, w, k, s, p) in RESNET_CONVS.into_iter().chain([(1, 64, 8, 50, 40, 3, 1, 1)]) {
        let run = |use_fused: bool| {
            let x =
                Tensor::<3>::from_data(data(13, [b, ci, h * w], 2.0), &device).reshape([b, ci, h, w]).require_grad();
            let weight =
                Tensor::<3>::from_data(data(14, [co, ci, k * k], 0.5), &device).reshape([co, ci, k, k]).require_grad();
            let y = if use_fused {
                fused::conv2d(x.clone(), weight.clone(), [s, s], [p, p])
            } else {
                conv2d(x.clone(), weight.clone(), None, ConvOptions::new([s, s], [p, p], [1, 1], 1))
            };
            let [_, _, oh, ow] = y.dims();
            let w_out = Tensor::<3>::from_data(data(15, [b, co, oh * ow], 1.0), &device).reshape([b, co, oh, ow]);
            let grads = (y.clone() * w_out).sum().backward();
            [read(y), read(x.grad(&grads).unwrap()), read(weight.grad(&grads).unwrap())]
        };
        let (got, want) = (run(true), run(false));
        for ((name, a), b) in ["forward", "dx", "dweight"].iter().zip(&got).zip(&want) {
            assert_close(&format!("conv {k}x{k} stride {s} padding {p}, {ci}->{co} {h}x{w}: {name}"), a, b);
        }
    }
}

/// Inference (no autodiff): `ops::conv2d` runs the flex kernels (shifted views for 3x3 and 1x1,
/// im2col blocks for strided ones), with and without a bias, against Burn's convolution.
#[test]
fn inference_convolutions_match_burns() {
    use burn::module::Param;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::ops::ConvOptions;
    let device = Device::flex();
    // The last two span several column blocks and row tiles.
    let larger = [(2, 64, 70, 30, 31, 3, 1, 1), (2, 300, 40, 21, 33, 1, 1, 0)];
    for (b, ci, co, h, w, k, s, p) in RESNET_CONVS.into_iter().chain(larger) {
        for with_bias in [false, true] {
            let mut conv = Conv2dConfig::new([ci, co], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(with_bias)
                .init(&device);
            conv.weight = Param::from_tensor(
                Tensor::<3>::from_data(data(21, [co, ci, k * k], 0.5), &device).reshape([co, ci, k, k]),
            );
            if with_bias {
                conv.bias =
                    Some(Param::from_tensor(Tensor::<3>::from_data(data(22, [1, 1, co], 1.0), &device).reshape([co])));
            }
            let x = Tensor::<3>::from_data(data(23, [b, ci, h * w], 2.0), &device).reshape([b, ci, h, w]);
            let got = zoo_models::ops::conv2d(&conv, x.clone());
            let bias = conv.bias.as_ref().map(|b| b.val());
            let want =
                burn::tensor::module::conv2d(x, conv.weight.val(), bias, ConvOptions::new([s, s], [p, p], [1, 1], 1));
            assert_eq!(got.dims(), want.dims());
            assert_close(
                &format!("conv {k}x{k} stride {s} padding {p}, {ci}->{co} {h}x{w}, bias {with_bias}"),
                &read(got),
                &read(want),
            );
        }
    }
}

#[test]
fn attention_and_its_gradients_match_burns() {
    let device = Device::flex().autodiff();
    // (batch, tokens, channels, heads): TNT's inner heads (6 wide), ViT's (64 wide); queries,
    // keys and values are slices of one projection, as in the models.
    for (b, n, c, heads) in [(3, 16, 24, 4), (2, 50, 128, 2)] {
        let run = |use_fused: bool| {
            let qkv = Tensor::<3>::from_data(data(16, [b, n, 3 * c], 1.5), &device).require_grad();
            let part = |i: usize| qkv.clone().slice([0..b, 0..n, i * c..(i + 1) * c]);
            let (q, k, v) = (part(0), part(1), part(2));
            let y = if use_fused {
                fused::attention(q, k, v, heads)
            } else {
                let d = c / heads;
                let split = |x: Tensor<3>| x.reshape([b, n, heads, d]).swap_dims(1, 2);
                let scores = split(q).matmul(split(k).swap_dims(2, 3)) / (d as f64).sqrt();
                activation::softmax(scores, 3).matmul(split(v)).swap_dims(1, 2).reshape([b, n, c])
            };
            let w = Tensor::<3>::from_data(data(17, [b, n, c], 1.0), &device);
            let grads = (y.clone() * w).sum().backward();
            [read(y), read(qkv.grad(&grads).unwrap())]
        };
        let (got, want) = (run(true), run(false));
        for ((name, a), b) in ["forward", "dqkv"].iter().zip(&got).zip(&want) {
            assert_close(&format!("attention {c} channels in {heads} heads: {name}"), a, b);
        }
    }
}
