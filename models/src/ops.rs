//! The models' one seam to the tensor ops, with fused kernels for the `flex` CPU backend.
//!
//! Every linear layer, convolution, pooling, normalisation, GELU and attention of the models
//! goes through this module: [`linear`], [`gelu`], [`layer_norm`], [`conv2d`], [`max_pool2d`],
//! [`adaptive_avg_pool2d`], [`channel_affine`] and [`attend`] (which records attention
//! probabilities when asked, else calls [`attention`]). Training and inference share them. On a flex
//! tensor outside autodiff (inference, validation) they run the kernels below. Under autodiff on
//! flex (training) linear layers, GELU, layer norm, attention, ResNet's bias-free
//! convolutions and its frozen batch norm run as the fused, differentiable ops of [`fused`] (a
//! Burn backend extension with hand-written backward passes), and [`adamw_update`] steps a
//! parameter in one pass. Anywhere else (GPU, libtorch, ndarray) they fall back to Burn's ops, so
//! every backend computes the same function. On x86-64 CPUs without AVX-512 (or with
//! `ZOO_ISA=avx2`) the kernels' matrix products are the zoo's own ([`sgemm`]), elsewhere the gemm
//! crate's.
//!
//! What the kernels save over the op-by-op path:
//! - `linear`: the bias is written into the output first and the matrix product accumulates
//!   onto it (no second pass over the output), and products too small for Burn's threading
//!   threshold still use both cores.
//! - `gelu`: the exact (erf) GELU, its Φ from one branch-free erfc (a Chebyshev fit times an
//!   exponential) that the compiler vectorises, instead of a scalar `erff` per element.
//! - `conv2d`: a 3x3 convolution as nine matrix products over shifted views of the padded
//!   image, accumulating into one output, instead of building the im2col matrix, in column
//!   blocks that stay in cache, the first product writing the output (no zero fill); the
//!   weights are packed for the zoo's kernel once per call, not once per block. Where the
//!   products are the zoo's AVX2 kernel, 3x3 stride-1 convolutions go by Winograd's F(2x2, 3x3)
//!   instead ([`flex::winograd`]): 16 products over transformed tiles in place of 36
//!   multiply-adds per 2x2 output tile and channel pair (`ZOO_WINOGRAD=0`: the nine products).
//!   Strided ones (ResNet's stem and stage entries) unfold the input in blocks of output rows
//!   that stay in cache.
//! - `max_pool2d`: the window maximum over a plane in one pass (rows first, then columns).
//! - `channel_affine`: frozen batch norm, residual sum and ReLU in one pass over the feature
//!   map instead of four.
//! - `attention`: queries, keys and values are read in place from the projections' outputs
//!   (no head split or merge copies), one (batch, head) pair per task.
//!
//! The kernels, like flex itself, run on rayon's global pool. A program that calls the models
//! from its own thread hands every operation to the pool and sleeps until it is done; at small
//! batches (TNT-S at batch 1: thousands of sub-millisecond operations per image) the wake-ups
//! cost a fifth of the time. Make the calling thread a pool thread first, as `zoo` does:
//! `rayon::ThreadPoolBuilder::new().use_current_thread().build_global()`.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, MaxPool2d};
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod fused;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod sgemm;

/// The widest vector instructions the zoo's own CPU kernels may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the CPU has (AVX-512, AVX2, NEON), picked at run time.
    Native,
    /// At most AVX2 and FMA on x86-64, as on CPUs without AVX-512 (to measure such CPUs on one
    /// that has it). The matrix kernels come from the gemm crate, which picks AVX-512 at run time
    /// whenever it was compiled in: a zoo built without the `avx512` feature of `zoo-infer` has
    /// only its AVX2 kernels.
    Avx2,
}

/// The environment's `ZOO_ISA`: unset or `native`, or `avx2`; anything else is an error that
/// names the variable and the value.
pub fn isa_from_env() -> Result<Isa, String> {
    match std::env::var("ZOO_ISA") {
        Err(std::env::VarError::NotPresent) => Ok(Isa::Native),
        Ok(v) if v == "native" || v.is_empty() => Ok(Isa::Native),
        Ok(v) if v == "avx2" => Ok(Isa::Avx2),
        Ok(v) => Err(format!("ZOO_ISA={v:?}: expected `native` or `avx2`")),
        Err(e) => Err(format!("ZOO_ISA: {e}")),
    }
}

/// The environment's `ZOO_WINOGRAD`: unset, empty or `1` (3x3 stride-1 convolutions by
/// Winograd's F(2x2, 3x3) where the zoo's AVX2 kernel runs the products), or `0` (by nine matrix
/// products over shifted views); anything else is an error that names the variable and the value.
pub fn winograd_from_env() -> Result<bool, String> {
    match std::env::var("ZOO_WINOGRAD") {
        Err(std::env::VarError::NotPresent) => Ok(true),
        Ok(v) if v == "1" || v.is_empty() => Ok(true),
        Ok(v) if v == "0" => Ok(false),
        Ok(v) => Err(format!("ZOO_WINOGRAD={v:?}: expected `0` or `1`")),
        Err(e) => Err(format!("ZOO_WINOGRAD: {e}")),
    }
}

/// `x @ weight + bias` over the last dimension of `x`, `weight` `[d_in, d_out]`, as [`linear`].
pub fn linear_with<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match flex::linear(x, weight, bias) {
        Ok(y) => return y,
        Err((x, weight, bias)) if fused::applies(&x) => return fused::linear(x, weight, bias),
        Err(args) => args,
    };
    let out = x.matmul(weight.unsqueeze());
    match bias {
        Some(bias) => out + bias.unsqueeze(),
        None => out,
    }
}

/// A linear layer's forward pass: the kernel on flex, [`fused::linear`] under autodiff on flex,
/// Burn's `Linear` (its backend's linear op) everywhere else.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let x = match flex::linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val())) {
        Ok(y) => return y,
        Err((x, weight, bias)) if fused::applies(&x) => return fused::linear(x, weight, bias),
        Err((x, _, _)) => x,
    };
    layer.forward(x)
}

/// Layer normalisation over the last dimension: under autodiff on flex the fused op with its
/// backward pass ([`fused`]); elsewhere Burn's `layer_norm` op (flex specialises it), which is
/// what `LayerNorm::forward` calls on every backend.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if x.device().is_autodiff()
        && fused::applies(&x)
        && let (Some(beta), Some(epsilon)) = (&norm.beta, layer_norm_epsilon(norm))
    {
        return fused::layer_norm(x, norm.gamma.val(), beta.val(), epsilon as f32);
    }
    norm.forward(x)
}

/// The epsilon of a Burn `LayerNorm`, which has no getter for it: read from what the module
/// displays (`d_model`, `epsilon`, `bias`), where Rust's float formatting prints it exactly
/// (shortest round trip). `None` if that display ever changes: the caller then uses Burn's op.
pub fn layer_norm_epsilon(norm: &LayerNorm) -> Option<f64> {
    use burn::module::{Content, DisplaySettings, ModuleDisplay};
    let content = norm.custom_content(Content::new(DisplaySettings::new()))?;
    let attribute = content.attributes.iter().find(|a| a.name == "epsilon")?;
    attribute.value.parse().ok()
}

/// Global average pooling (ResNet's head): Burn's op on every backend; it runs once per image
/// on a small feature map, no kernel of its own is worth it.
pub fn adaptive_avg_pool2d(pool: &AdaptiveAvgPool2d, x: Tensor<4>) -> Tensor<4> {
    pool.forward(x)
}

/// GELU with erf, as `torch.nn.GELU()`, with its exact gradient on every backend.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let x = match flex::gelu(x) {
        Ok(y) => return y,
        Err(x) if fused::applies(&x) => return fused::gelu(x),
        Err(x) => x,
    };
    let device = x.device();
    if device.is_autodiff() && !exact_gelu_backward(device) {
        // Burn 0.22.1's default `gelu_backward`, which ndarray and the CubeCL backends (wgpu)
        // use, is the derivative of GELU's tanh approximation while the forward pass is the erf
        // GELU: gradients 2e-4 off (relative) through a two-block ViT. Written with erf, whose
        // derivative autodiff computes exactly, GELU trains as PyTorch's does.
        return x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    }
    burn::tensor::activation::gelu(x)
}

/// Whether the backend under an autodiff `device` overrides Burn's approximate GELU gradient
/// with the exact one (flex does; libtorch too, but it cannot be named without its feature).
fn exact_gelu_backward(device: Device) -> bool {
    #[cfg(feature = "flex")]
    return device.inner() == Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// A convolution's forward pass; 3x3 convolutions with stride 1 and padding 1 (ResNet's) run
/// by Winograd's F(2x2, 3x3) where the zoo's AVX2 kernel runs the products ([`flex::winograd`]),
/// elsewhere as matrix products on shifted views of the padded image, without im2col, strided ones by
/// im2col in blocks that stay in cache. 1x1 ones run as one such view where the products are
/// the zoo's own kernel (x86-64 without AVX-512); with the gemm crate's they stay with flex,
/// whose matrix product measured faster on them than column blocks. Under autodiff on flex, bias-free convolutions over
/// planes of 64 positions and more (ResNet's) are [`fused::conv2d`], whose backward pass is one
/// large matrix product per block where Burn's weight gradient is many one-column ones (the input
/// gradient of a 3x3 stride-1 convolution taken by Winograd's F(2x2, 3x3): a convolution again).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    {
        use burn::nn::PaddingConfig2d::Explicit;
        let padding = match conv.padding {
            Explicit(top, left, bottom, right) if top == bottom && left == right => Some([top, left]),
            _ => None,
        };
        if let (Some(padding), [1, 1], 1) = (padding, conv.dilation, conv.groups) {
            let bias = conv.bias.as_ref().map(|b| b.val());
            if !x.device().is_autodiff() {
                return conv2d_with(x, conv.weight.val(), bias, conv.stride, padding);
            }
            let [_, _, h, w] = x.dims();
            let geometry = || flex::ConvGeometry::new([h, w], conv.kernel_size, conv.stride, padding);
            if bias.is_none() && fused::applies(&x) && geometry().positions() >= 64 {
                return fused::conv2d(x, conv.weight.val(), conv.stride, padding);
            }
        }
    }
    conv.forward(x)
}

/// [`conv2d`] on plain flex tensors, groups 1 and dilation 1, `padding` on both sides.
#[cfg(feature = "flex")]
fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    let by_burn = |x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>| {
        let options = burn::tensor::ops::ConvOptions::new(stride, padding, [1, 1], 1);
        burn::tensor::module::conv2d(x, weight, bias, options)
    };
    let result = match (stride, [kh, kw], padding) {
        _ if flex::winograd::takes(stride, [kh, kw], padding) => {
            flex::winograd::conv3x3(x, weight.clone(), bias.clone())
        }
        ([1, 1], [3, 3], [1, 1]) => flex::conv_taps(x, weight.clone(), bias.clone(), 3),
        ([1, 1], [1, 1], [0, 0]) if flex::own_matmul() => flex::conv_taps(x, weight.clone(), bias.clone(), 1),
        ([1, 1], _, _) => Err(x),
        _ => flex::conv_unfold(x, weight.clone(), bias.clone(), stride, padding),
    };
    result.unwrap_or_else(|x| by_burn(x, weight, bias))
}

/// A max pooling's forward pass; square windows with symmetric padding (ResNet's 3x3, stride 2,
/// padding 1) run as one pass per channel plane.
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    {
        let [k, _] = pool.kernel_size;
        let [s, _] = pool.stride;
        let simple = pool.kernel_size == [k, k] && pool.stride == [s, s] && pool.dilation == [1, 1] && !pool.ceil_mode;
        let padding = match pool.padding {
            burn::nn::PaddingConfig2d::Valid => Some(0),
            burn::nn::PaddingConfig2d::Explicit(a, b, c, d) if a == b && b == c && c == d && a < k => Some(a),
            _ => None,
        };
        if let (true, Some(p)) = (simple, padding) {
            match flex::max_pool(x, k, s, p) {
                Ok(y) => return y,
                Err(x) => return pool.forward(x),
            }
        }
    }
    pool.forward(x)
}

/// The hyper-parameters of one [`adamw_update`]: Burn's and PyTorch's AdamW (decoupled weight
/// decay, bias-corrected moments, no AMSGrad); `time` counts this step, from 1.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub time: usize,
}

/// [`adamw_update`]'s tensors: the parameter, its gradient and the first and second moments
/// (none before the first step).
pub type AdamWArgs<const D: usize> = (Tensor<D>, Tensor<D>, Option<(Tensor<D>, Tensor<D>)>);

/// One AdamW step of a float32 flex parameter in one multi-threaded pass, with the operations of
/// Burn's `AdamW` in its order: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`. Returns the new
/// parameter and moments, or hands the tensors back (`Err`) on other backends, where the caller
/// uses Burn's optimizer.
#[allow(clippy::result_large_err)]
pub fn adamw_update<const D: usize>(
    args: AdamWArgs<D>,
    step: &AdamWStep,
) -> Result<(Tensor<D>, Tensor<D>, Tensor<D>), AdamWArgs<D>> {
    #[cfg(feature = "flex")]
    return flex::adamw_update(args, step);
    #[cfg(not(feature = "flex"))]
    {
        let _ = step;
        Err(args)
    }
}

/// [`channel_affine`]'s tensors: `x`, `scale`, `shift` and the residual.
pub type AffineArgs = (Tensor<4>, Tensor<1>, Tensor<1>, Option<Tensor<4>>);

/// `relu?(x * scale[c] + shift[c] (+ residual))` per channel `c` of `x` `[B, C, H, W]`: a frozen
/// batch norm, the shortcut of a residual block and the activation in one pass.
pub fn channel_affine(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    residual: Option<Tensor<4>>,
    relu: bool,
) -> Tensor<4> {
    let args = (x, scale, shift, residual);
    #[cfg(feature = "flex")]
    let args = match flex::channel_affine(args, relu) {
        Ok(y) => return y,
        Err((x, scale, shift, residual))
            if fused::applies(&x) && !scale.is_require_grad() && !shift.is_require_grad() =>
        {
            return fused::channel_affine(x, scale, shift, residual, relu);
        }
        Err(args) => args,
    };
    let (x, scale, shift, residual) = args;
    let c = x.dims()[1];
    let y = x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1]);
    let y = match residual {
        Some(r) => y + r,
        None => y,
    };
    if relu { burn::tensor::activation::relu(y) } else { y }
}

/// [`attention`]'s tensors: queries, keys, values and the key padding mask.
pub type AttentionArgs = (Tensor<3>, Tensor<3>, Tensor<3>, Option<Tensor<2, Bool>>);

/// Scaled dot-product attention of projected queries `[B, Nq, C]` and keys and values
/// `[B, Nk, C]`, split into `num_heads` heads, scale `(C / num_heads)^-1/2`;
/// `key_padding_mask` `[B, Nk]` is true where a key must be ignored. Returns `[B, Nq, C]`.
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    num_heads: usize,
    key_padding_mask: Option<Tensor<2, Bool>>,
) -> Tensor<3> {
    let args = (q, k, v, key_padding_mask);
    #[cfg(feature = "flex")]
    let args = match flex::attention(args, num_heads) {
        Ok(y) => return y,
        Err((q, k, v, None)) if fused::applies(&q) => return fused::attention(q, k, v, num_heads),
        Err(args) if fused::applies(&args.0) => return attention_with_fused_softmax(args, num_heads),
        Err(args) => args,
    };
    attention_by_ops(args, num_heads)
}

/// [`attention`] with a key padding mask as two matrix products around [`fused::softmax`]
/// (which scales the scores): under autodiff on flex, where Burn's attention op falls back to
/// one op per step of the softmax, each with its own backward pass. (Without a mask, training
/// takes [`fused::attention`].)
#[cfg(feature = "flex")]
fn attention_with_fused_softmax((q, k, v, key_padding_mask): AttentionArgs, num_heads: usize) -> Tensor<3> {
    let [b, nq, c] = q.dims();
    let scale = ((c / num_heads) as f32).powf(-0.5);
    let (q, k, v) = (split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads));
    let scores = q.matmul(k.swap_dims(2, 3));
    let scores = match key_padding_mask {
        Some(mask) => scores + padding_bias(mask, num_heads, nq),
        None => scores,
    };
    let out = fused::softmax(scores, scale).matmul(v);
    out.swap_dims(1, 2).reshape([b, nq, c])
}

/// [`attention`] with Burn's fused attention op (every backend, autodiff included).
pub fn attention_by_ops((q, k, v, key_padding_mask): AttentionArgs, num_heads: usize) -> Tensor<3> {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let [b, nq, c] = q.dims();
    let bias = key_padding_mask.map(|mask| padding_bias(mask, num_heads, nq));
    let (q, k, v) = (split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads));
    let out = attention(q, k, v, None, bias, AttentionModuleOptions::default());
    out.swap_dims(1, 2).reshape([b, nq, c])
}

/// `[B, N, heads * d]` -> `[B, heads, N, d]`.
fn split_heads(x: Tensor<3>, num_heads: usize) -> Tensor<4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, num_heads, c / num_heads]).swap_dims(1, 2)
}

/// The key padding mask `[B, Nk]` as an additive bias `[B, heads, Nq, Nk]`: -inf on ignored
/// keys, 0 elsewhere. Not the attention op's boolean mask: burn-tch 0.22.1 hands that mask
/// straight to libtorch's `scaled_dot_product_attention`, where `true` means "attend" (Burn's
/// means "ignore"), so every mask came out inverted on libtorch. Burn's own attention adds the
/// bias right after its masking step, so the other backends compute the same numbers either way.
fn padding_bias(mask: Tensor<2, Bool>, num_heads: usize, nq: usize) -> Tensor<4> {
    let [b, nk] = mask.dims();
    let bias = Tensor::<2>::zeros([b, nk], &mask.device()).mask_fill(mask, f32::NEG_INFINITY);
    bias.reshape([b, 1, 1, nk]).expand([b, num_heads, nq, nk])
}

/// The attention probabilities of a forward pass, collected when the pass is given one: for each
/// kind of attention (`attn`, `inner_attn`, `encoder_attn`, `decoder_self_attn`,
/// `decoder_cross_attn`) one `[B, heads, Nq, Nk]` tensor per layer, in layer order. A forward pass
/// without one runs the fused kernels and computes no probabilities.
#[derive(Debug, Default)]
pub struct AttentionMaps {
    maps: std::cell::RefCell<std::collections::BTreeMap<&'static str, Vec<Tensor<4>>>>,
}

impl AttentionMaps {
    /// The recorded layers of `kind`, in order.
    pub fn layers(&self, kind: &str) -> Vec<Tensor<4>> {
        self.maps.borrow().get(kind).cloned().unwrap_or_default()
    }

    /// Every kind with its layers, kinds in alphabetical order.
    pub fn into_inner(self) -> std::collections::BTreeMap<&'static str, Vec<Tensor<4>>> {
        self.maps.into_inner()
    }
}

/// Where [`attend`] puts its probabilities: the maps and the kind of attention.
pub type Record<'a> = Option<(&'a AttentionMaps, &'static str)>;

/// [`attention`], the one entry point of the models' attention layers: with a `record`, computed
/// by explicit ops (scores, softmax, weighted sum) whose probabilities are added to it; without,
/// by [`attention`]'s kernels.
pub fn attend(args: AttentionArgs, num_heads: usize, record: Record) -> Tensor<3> {
    let Some((maps, kind)) = record else {
        let (q, k, v, mask) = args;
        return attention(q, k, v, num_heads, mask);
    };
    let (q, k, v, key_padding_mask) = args;
    let [b, nq, c] = q.dims();
    let head_dim = c / num_heads;
    let (q, k, v) = (split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads));
    let scores = q.matmul(k.swap_dims(2, 3)) * (head_dim as f64).powf(-0.5);
    let scores = match key_padding_mask {
        Some(mask) => scores + padding_bias(mask, num_heads, nq),
        None => scores,
    };
    let probs = burn::tensor::activation::softmax(scores, 3);
    maps.maps.borrow_mut().entry(kind).or_default().push(probs.clone());
    probs.matmul(v).swap_dims(1, 2).reshape([b, nq, c])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tolerance};

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn linear_matches_matmul_plus_bias() {
        let device = Device::flex();
        // Sizes on both sides of the threading threshold; a transposed (strided) weight too.
        for (m, k, n) in [(3, 5, 7), (196 * 16, 24, 96), (197, 64, 300)] {
            let x = random([2, m, k], &device);
            let w = random([k, n], &device);
            let bias = random([n], &device);
            let expected = x.clone().matmul(w.clone().unsqueeze()) + bias.clone().unsqueeze();
            linear_with(x.clone(), w.clone(), Some(bias))
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
            let wt = random([n, k], &device);
            let expected = x.clone().matmul(wt.clone().transpose().unsqueeze());
            linear_with(x, wt.transpose(), None)
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
        }
    }

    #[test]
    fn gelu_matches_erf_gelu() {
        let device = Device::flex();
        let x = random([3, 1000], &device) * 4.0;
        let expected = burn::tensor::activation::gelu(x.clone());
        // A view that is not contiguous and a shared input go through the copying path.
        let shared = x.clone();
        gelu(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::rel_abs(2e-6, 1e-6));
        gelu(shared.transpose())
            .into_data()
            .assert_approx_eq::<f32>(&expected.transpose().into_data(), Tolerance::rel_abs(2e-6, 1e-6));
        // Far tails: 0 and x.
        let tails = Tensor::<1>::from_floats([-30.0, -9.0, 9.0, 30.0, 0.0], &device);
        gelu(tails)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([0.0f32, 0.0, 9.0, 30.0, 0.0]), Tolerance::absolute(1e-6));
    }

    #[test]
    fn conv_matches_burn_conv() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        let cases = [
            (3, false, 5, 7, 9, 6),
            (3, true, 3, 16, 4, 11),
            (3, true, 2, 5, 40, 300),
            // Blocks of tiles that start and end inside tile rows; odd and even sizes.
            (3, false, 300, 260, 9, 37),
            (3, true, 70, 90, 12, 8),
            (1, true, 6, 4, 5, 7),
            (1, false, 3, 8, 30, 500),
        ];
        for (k, bias, cin, cout, h, w) in cases {
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(bias)
                .init(&device);
            let x = random([2, cin, h, w], &device);
            let expected = conv.forward(x.clone());
            let bias = conv.bias.as_ref().map(|b| b.val());
            flex::conv_taps(x.clone(), conv.weight.val(), bias.clone(), k)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::absolute(1e-5));
            if k == 3 && flex::winograd::runs_here() {
                flex::winograd::conv3x3(x.clone(), conv.weight.val(), bias.clone())
                    .unwrap()
                    .into_data()
                    .assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::absolute(1e-5));
            }
            flex::conv_unfold(x, conv.weight.val(), bias, [1, 1], [k / 2, k / 2])
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn strided_conv_matches_burn_conv() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        // ResNet's stem, a strided 3x3 and a strided 1x1 (odd and even sizes).
        for (k, s, p, bias, cin, cout, h, w) in
            [(7, 2, 3, false, 3, 8, 37, 50), (3, 2, 1, true, 5, 6, 9, 12), (1, 2, 0, false, 4, 3, 7, 8)]
        {
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(bias)
                .init(&device);
            let x = random([2, cin, h, w], &device);
            let expected = conv.forward(x.clone());
            conv2d(&conv, x).into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn max_pool_matches_burn_max_pool() {
        use burn::nn::pool::MaxPool2dConfig;
        let device = Device::flex();
        for (k, s, p, h, w) in [(3, 2, 1, 9, 12), (3, 2, 1, 8, 7), (2, 2, 0, 6, 5), (3, 1, 1, 4, 4)] {
            let pool = MaxPool2dConfig::new([k, k])
                .with_strides([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init();
            let x = random([2, 3, h, w], &device);
            let expected = pool.forward(x.clone());
            max_pool2d(&pool, x).into_data().assert_eq(&expected.into_data(), true);
        }
    }

    #[test]
    fn channel_affine_matches_ops() {
        let device = Device::flex();
        let x = random([2, 5, 7, 3], &device);
        let (scale, shift) = (random([5], &device), random([5], &device));
        let residual = random([2, 5, 7, 3], &device);
        let by_ops = |r: Option<Tensor<4>>, relu: bool| {
            let y = x.clone() * scale.clone().reshape([1, 5, 1, 1]) + shift.clone().reshape([1, 5, 1, 1]);
            let y = r.map_or(y.clone(), |r| y + r);
            if relu { burn::tensor::activation::relu(y) } else { y }
        };
        for (r, relu) in [
            (None, false),
            (None, true),
            (Some(residual.clone()), true),
            (Some(residual.swap_dims(2, 3).swap_dims(2, 3)), false),
        ] {
            let expected = by_ops(r.clone(), relu);
            // Shared input (the clone kept here) and a unique one.
            let kept = x.clone();
            channel_affine(kept, scale.clone(), shift.clone(), r.clone(), relu)
                .into_data()
                .assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::rel_abs(2e-6, 1e-6));
            channel_affine(x.clone() * 1.0, scale.clone(), shift.clone(), r, relu)
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn attention_matches_burn_attention() {
        let device = Device::flex();
        // (B, Nq, Nk, heads, d): TNT's inner attention, ViT-like, DETR's cross-attention, and
        // a masked narrow one (masks where Nq != Nk); narrow and wide heads take different paths.
        for (b, nq, nk, h, d) in [(5, 16, 16, 4, 6), (2, 197, 197, 3, 64), (2, 10, 37, 8, 32), (3, 7, 20, 2, 8)] {
            let c = h * d;
            // q and k as slices of one projection, as the models produce them.
            let qk = random([b, nq.max(nk), 2 * c], &device);
            let q = qk.clone().slice(s![.., 0..nq, 0..c]);
            let k = qk.slice(s![.., 0..nk, c..2 * c]);
            let v = random([b, nk, c], &device);
            let mask = (nq != nk).then(|| {
                let lens: Vec<bool> = (0..b).flat_map(|i| (0..nk).map(move |j| j >= nk - 3 * i)).collect();
                Tensor::<1, Bool>::from_data(TensorData::new(lens, [b * nk]), &device).reshape([b, nk])
            });
            let expected = attention_by_ops((q.clone(), k.clone(), v.clone(), mask.clone()), h);
            attention(q, k, v, h, mask)
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }
}
