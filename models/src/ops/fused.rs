//! Fused ops with hand-written backward passes, as a Burn backend extension: real ops of the
//! flex backend, inside autodiff (training) and outside it. Each element-wise one replaces a
//! chain of Burn ops that, under autodiff, each make a pass over memory (most of them on one
//! thread) and keep their own intermediate for the backward pass; here the forward and the
//! backward pass are one multi-threaded, vectorised pass each, and only what the backward pass
//! needs is kept. Attention and convolution replace Burn's decomposition of their gradients.
//!
//! - [`FusedOps::fused_linear`] (and `_without_bias`): `x W + b`, the bias written into the output before the product
//!   accumulates onto it. Keeps `x` and `W`; `dx = dy W^T` and `dW = x^T dy` read the
//!   transposes in place, `db` sums the rows of `dy` in one threaded pass.
//! - [`FusedOps::fused_gelu`]: the erf GELU. Keeps its input; the gradient is
//!   `dy (Φ(x) + x φ(x))`.
//! - [`FusedOps::fused_softmax`]: `softmax(scale x)` over the last dimension (attention scores).
//!   Keeps its output `y`; the gradient is `scale y (dy - Σ dy y)` per row.
//! - [`FusedOps::fused_layer_norm`]: layer normalisation over the last dimension. Keeps its input
//!   and recomputes each row's mean and variance in the backward pass (one pass, cheaper than
//!   storing them as tensors); the gradients are those of the layer norm paper.
//! - [`FusedOps::fused_attention`]: attention without a mask, forward by the inference kernel.
//!   Keeps queries, keys and values (not the probabilities, recomputed per head in the backward
//!   pass as flash attention does); the gradients by six matrix products per head.
//! - [`FusedOps::fused_conv2d`]: a convolution without bias, forward by the inference kernels;
//!   backward as one large matrix product per block of the im2col matrix for each gradient
//!   (a 3x3 stride-1 convolution's input gradient, where the forward pass runs Winograd's
//!   F(2x2, 3x3), as a convolution by the same kernels).
//! - [`FusedOps::fused_channel_affine`]: ResNet's frozen batch norm, residual sum and ReLU. Keeps
//!   the output (the ReLU's mask) and the scale; the gradient is `dy scale[c]` where the output
//!   is positive, and `dy` there for the residual.
//!
//! Only float32 flex tensors take these ops ([`applies`]); the callers in [`super`] use Burn's
//! ops everywhere else.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::{Flex, FlexTensor};

use super::flex::kernels;

/// The fused ops; implemented for flex and for autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `x @ weight + bias` over the last dimension of `x`, `weight` `[d_in, d_out]`.
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x @ weight` over the last dimension of `x`, `weight` `[d_in, d_out]`.
    fn fused_linear_without_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
    /// GELU with erf, as `torch.nn.GELU()`.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `softmax(scale * x)` over the last dimension.
    fn fused_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
    /// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last dimension.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
    /// `relu?(x * scale[c] + shift[c])` per channel `c` of `x` `[B, C, H, W]`; `scale` and
    /// `shift` are constants (a frozen batch norm): no gradient reaches them.
    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;
    /// Scaled dot-product attention of `q` `[B, Nq, C]` and `k`, `v` `[B, Nk, C]` in
    /// `num_heads` heads, scale `(C / num_heads)^-1/2`, no mask.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        num_heads: usize,
    ) -> FloatTensor<Self>;
    /// A convolution without bias (groups 1, dilation 1), `padding` zeros on both sides of
    /// each dimension.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
    /// [`FusedOps::fused_channel_affine`] with `residual` added before the activation.
    fn fused_channel_affine_residual(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// Whether `x` takes the fused ops: a float32 tensor on flex, with or without autodiff.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.device().inner() == Device::flex() && x.dtype() == DType::F32
}

/// [`FusedOps::fused_linear`] (or its form without bias) on tensors [`applies`] accepts.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as FusedOps>::fused_linear(x, weight, bias.into_dispatch()),
        None => <Dispatch as FusedOps>::fused_linear_without_bias(x, weight),
    })
}

/// [`FusedOps::fused_gelu`] on a tensor [`applies`] accepts.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
}

/// [`FusedOps::fused_softmax`] on a tensor [`applies`] accepts.
pub fn softmax<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(x.into_dispatch(), scale))
}

/// [`FusedOps::fused_layer_norm`] on tensors [`applies`] accepts.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f32) -> Tensor<D> {
    let (x, gamma, beta) = (x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch());
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(x, gamma, beta, epsilon))
}

/// [`FusedOps::fused_channel_affine`] (or its residual form) on tensors [`applies`] accepts;
/// `scale` and `shift` must not require gradients.
pub fn channel_affine(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    residual: Option<Tensor<4>>,
    relu: bool,
) -> Tensor<4> {
    let (x, scale, shift) = (x.into_dispatch(), scale.into_dispatch(), shift.into_dispatch());
    Tensor::from_dispatch(match residual {
        Some(r) => <Dispatch as FusedOps>::fused_channel_affine_residual(x, scale, shift, r.into_dispatch(), relu),
        None => <Dispatch as FusedOps>::fused_channel_affine(x, scale, shift, relu),
    })
}

/// [`FusedOps::fused_attention`] on tensors [`applies`] accepts.
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, num_heads: usize) -> Tensor<3> {
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(q, k, v, num_heads))
}

/// [`FusedOps::fused_conv2d`] on tensors [`applies`] accepts.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: [usize; 2], padding: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
    ))
}

impl FusedOps for Flex {
    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        kernels::linear(&x, &weight, Some(&bias))
    }

    fn fused_linear_without_bias(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        kernels::linear(&x, &weight, None)
    }

    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        kernels::gelu(&x)
    }

    fn fused_softmax(x: FlexTensor, scale: f32) -> FlexTensor {
        kernels::softmax(&x, scale)
    }

    fn fused_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f32) -> FlexTensor {
        kernels::layer_norm(&x, &gamma, &beta, epsilon)
    }

    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, num_heads: usize) -> FlexTensor {
        kernels::attention(&q, &k, &v, num_heads)
    }

    fn fused_conv2d(x: FlexTensor, weight: FlexTensor, stride: [usize; 2], padding: [usize; 2]) -> FlexTensor {
        kernels::conv2d(&x, &weight, stride, padding)
    }

    fn fused_channel_affine(x: FlexTensor, scale: FlexTensor, shift: FlexTensor, relu: bool) -> FlexTensor {
        kernels::channel_affine(&x, &scale, &shift, None, relu)
    }

    fn fused_channel_affine_residual(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        residual: FlexTensor,
        relu: bool,
    ) -> FlexTensor {
        kernels::channel_affine(&x, &scale, &shift, Some(&residual), relu)
    }
}

/// What [`FusedOps::fused_channel_affine`]'s backward pass keeps: the output where there is a
/// ReLU (its sign is the mask), and the scale.
type ChannelAffineState = (Option<FlexTensor>, FlexTensor);

#[derive(Debug)]
struct ChannelAffineBackward;

impl<const N: usize> Backward<Flex, N> for ChannelAffineBackward {
    type State = ChannelAffineState;

    fn backward(self, ops: Ops<ChannelAffineState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, scale) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        // The parents are `[x]` or `[x, residual]`.
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let wants_residual = parents.get(1).is_some_and(Option::is_some);
        let (dx, dresidual) = kernels::channel_affine_backward(y.as_ref(), &dy, &scale, wants_residual);
        let mut gradients = [Some(dx), dresidual].into_iter();
        register(grads, parents, std::array::from_fn(|_| gradients.next().flatten()));
    }
}

#[derive(Debug)]
struct LinearBackward;

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, weight) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        // The parents are `[x, weight]` or `[x, weight, bias]`.
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let wanted = std::array::from_fn(|i| parents.get(i).is_some_and(Option::is_some));
        let mut gradients = kernels::linear_backward(&x, &weight, &dy, wanted).into_iter();
        register(grads, parents, std::array::from_fn(|_| gradients.next().flatten()));
    }
}

/// The autodiff output of a fused op over the inputs `nodes`: `output` computed by its forward
/// pass, `state` what its backward step `B` keeps, taken only when a gradient is wanted.
fn record<C, B, const N: usize>(
    step: B,
    nodes: [NodeGuard; N],
    output: FlexTensor,
    state: impl FnOnce() -> B::State,
) -> FloatTensor<Autodiff<Flex, C>>
where
    C: CheckpointStrategy,
    B: Backward<Flex, N>,
{
    match step.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Hands each input that wants a gradient (its node id present) the one computed for it.
fn register<const N: usize>(grads: &mut Gradients, parents: [Option<NodeId>; N], gradients: [Option<FlexTensor>; N]) {
    for (parent, gradient) in parents.into_iter().zip(gradients) {
        if let (Some(id), Some(gradient)) = (parent, gradient) {
            grads.register::<Flex>(id, gradient);
        }
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let (xp, wp) = (x.primitive(), weight.primitive());
        let y = kernels::linear(xp, wp, Some(bias.primitive()));
        let state = || (xp.clone(), wp.clone());
        record::<C, _, 3>(LinearBackward, [x.node(), weight.node(), bias.node()], y, state)
    }

    fn fused_linear_without_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (xp, wp) = (x.primitive(), weight.primitive());
        let y = kernels::linear(xp, wp, None);
        let state = || (xp.clone(), wp.clone());
        record::<C, _, 2>(LinearBackward, [x.node(), weight.node()], y, state)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl Backward<Flex, 1> for GeluBackward {
            /// The input.
            type State = FlexTensor;

            fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let x = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |dy| kernels::gelu_backward(&x, &dy));
            }
        }

        record::<C, _, 1>(GeluBackward, [x.node()], kernels::gelu(x.primitive()), || x.primitive().clone())
    }

    fn fused_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SoftmaxBackward;

        impl Backward<Flex, 1> for SoftmaxBackward {
            /// The output and the scale.
            type State = (FlexTensor, f32);

            fn backward(self, ops: Ops<(FlexTensor, f32), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (y, scale) = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |dy| kernels::softmax_backward(&y, &dy, scale));
            }
        }

        let y = kernels::softmax(x.primitive(), scale);
        record::<C, _, 1>(SoftmaxBackward, [x.node()], y.clone(), || (y, scale))
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl Backward<Flex, 3> for LayerNormBackward {
            /// The input, gamma and epsilon.
            type State = (FlexTensor, FlexTensor, f32);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (x, gamma, epsilon) = ops.state;
                let dy = grads.consume::<Flex>(&ops.node);
                let parents = ops.parents.map(|p| p.map(|node| node.id));
                let wanted = parents.map(|id| id.is_some());
                register(grads, parents, kernels::layer_norm_backward(&x, &gamma, &dy, epsilon, wanted));
            }
        }

        let y = kernels::layer_norm(x.primitive(), gamma.primitive(), beta.primitive(), epsilon);
        let state = || (x.primitive().clone(), gamma.primitive().clone(), epsilon);
        record::<C, _, 3>(LayerNormBackward, [x.node(), gamma.node(), beta.node()], y, state)
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        num_heads: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl Backward<Flex, 3> for AttentionBackward {
            /// Queries, keys, values and the number of heads.
            type State = (FlexTensor, FlexTensor, FlexTensor, usize);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (q, k, v, num_heads) = ops.state;
                let dout = grads.consume::<Flex>(&ops.node);
                let gradients = kernels::attention_backward(&q, &k, &v, &dout, num_heads);
                register(grads, ops.parents.map(|p| p.map(|node| node.id)), gradients.map(Some));
            }
        }

        let (qp, kp, vp) = (q.primitive(), k.primitive(), v.primitive());
        let out = kernels::attention(qp, kp, vp, num_heads);
        let state = || (qp.clone(), kp.clone(), vp.clone(), num_heads);
        record::<C, _, 3>(AttentionBackward, [q.node(), k.node(), v.node()], out, state)
    }

    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dBackward;

        impl Backward<Flex, 2> for Conv2dBackward {
            /// The input, the weight, the stride and the padding.
            type State = (FlexTensor, FlexTensor, [usize; 2], [usize; 2]);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (x, weight, stride, padding) = ops.state;
                let dy = grads.consume::<Flex>(&ops.node);
                let parents = ops.parents.map(|p| p.map(|node| node.id));
                let wanted = parents.map(|id| id.is_some());
                register(grads, parents, kernels::conv2d_backward(&x, &weight, &dy, stride, padding, wanted));
            }
        }

        let y = kernels::conv2d(x.primitive(), weight.primitive(), stride, padding);
        let state = || (x.primitive().clone(), weight.primitive().clone(), stride, padding);
        record::<C, _, 2>(Conv2dBackward, [x.node(), weight.node()], y, state)
    }

    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let y = kernels::channel_affine(x.primitive(), scale.primitive(), shift.primitive(), None, relu);
        let state = || (relu.then(|| y.clone()), scale.primitive().clone());
        record::<C, _, 1>(ChannelAffineBackward, [x.node()], y.clone(), state)
    }

    fn fused_channel_affine_residual(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let (xp, rp) = (x.primitive(), residual.primitive());
        let y = kernels::channel_affine(xp, scale.primitive(), shift.primitive(), Some(rp), relu);
        let state = || (relu.then(|| y.clone()), scale.primitive().clone());
        record::<C, _, 2>(ChannelAffineBackward, [x.node(), residual.node()], y.clone(), state)
    }
}
