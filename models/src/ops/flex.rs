//! The kernels behind [`super`] on flex tensors. Each entry point hands its arguments back
//! (`Err`) when they are not float32 flex tensors outside autodiff.

// Handing the arguments back makes large `Err` values (tensor handles, moved, never copied).
#![allow(clippy::result_large_err)]

use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{AdamWArgs, AdamWStep, AffineArgs, AttentionArgs};

#[cfg(target_arch = "x86_64")]
mod avx2_math;
pub mod winograd;

/// Products with fewer multiply-adds than this run on one thread.
const THREADED_MACS: usize = 1 << 19;
/// Floats of working set per task that stay in a core's L2 cache (512 KiB).
const CACHE_FLOATS: usize = 1 << 17;
/// Elements per task in element-wise kernels.
const CHUNK: usize = 1 << 14;

fn is_plain_flex(device: &Device) -> bool {
    *device == Device::flex() && !device.is_autodiff()
}

/// The flex primitive of a float32 tensor on the flex device outside autodiff.
fn float32<const D: usize>(x: &Tensor<D>) -> Option<FlexTensor> {
    if !is_plain_flex(&x.device()) {
        return None;
    }
    x.clone().try_into_primitive::<Flex>().ok().filter(|t| t.dtype() == DType::F32)
}

fn tensor<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

fn from_vec<const D: usize>(data: Vec<f32>, shape: Vec<usize>) -> Tensor<D> {
    tensor(FlexTensor::from_data(TensorData::new(data, shape)))
}

/// The elements of a float32 tensor in row-major order (a copy).
fn values(t: FlexTensor) -> Vec<f32> {
    t.to_contiguous().into_data().try_into_vec::<f32>().expect("float32")
}

/// Row-major strides of the last `N` dimensions of `t`, made contiguous in the last one.
fn strided<const N: usize>(t: FlexTensor) -> (FlexTensor, [usize; N]) {
    let t = if t.layout().strides().last() == Some(&1) && t.layout().has_positive_strides() {
        t
    } else {
        t.to_contiguous()
    };
    let s = t.layout().strides();
    let strides = core::array::from_fn(|i| s[s.len() - N + i] as usize);
    (t, strides)
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// SAFETY: `offset` is inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

type LinearArgs<const D: usize> = (Tensor<D>, Tensor<2>, Option<Tensor<1>>);

/// A strided f32 matrix for [`matmul`]: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(super) struct View<P> {
    pub(super) ptr: P,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

// A view only says where elements lie; the unsafe functions that read or write through it carry
// the obligations, whichever thread calls them.
unsafe impl<P> Send for View<P> {}
unsafe impl<P> Sync for View<P> {}

fn view<P>(ptr: P, rs: usize, cs: usize) -> View<P> {
    View { ptr, rs: rs as isize, cs: cs as isize }
}

/// Whether [`matmul`] runs the zoo's own kernel ([`super::sgemm`]) rather than the gemm crate's.
pub fn own_matmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sgemm::enabled();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A left operand that many products share (a convolution's weights, against each block of its
/// input): packed once for the zoo's kernel where that runs, else read in place by each product.
struct SharedLhs {
    view: View<*const f32>,
    #[cfg(target_arch = "x86_64")]
    packed: Option<super::sgemm::PackedA>,
}

impl SharedLhs {
    /// # Safety
    /// `view` must describe a live `[m, k]` matrix that outlives the result.
    unsafe fn new(view: View<*const f32>, [m, k]: [usize; 2]) -> Self {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (enabled); the view as the caller promises.
        let packed = super::sgemm::enabled().then(|| unsafe { super::sgemm::PackedA::new(view, [m, k]) });
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (m, k);
        SharedLhs {
            view,
            #[cfg(target_arch = "x86_64")]
            packed,
        }
    }

    /// [`matmul`] of this `[m, k]` operand by `rhs` on this thread.
    ///
    /// # Safety
    /// As [`matmul`]'s.
    unsafe fn matmul(&self, [m, n, k]: [usize; 3], dst: View<*mut f32>, accumulate: bool, rhs: View<*const f32>) {
        #[cfg(target_arch = "x86_64")]
        if let (Some(packed), true) = (&self.packed, dst.cs == 1 && dst.rs >= 0) {
            // SAFETY: the CPU has AVX2 and FMA (packed only then); the rest as the caller promises.
            return unsafe { super::sgemm::sgemm_packed(n, dst.ptr, dst.rs as usize, accumulate, packed, rhs) };
        }
        unsafe { matmul([m, n, k], dst, accumulate, self.view, rhs, 1.0, gemm::Parallelism::None) }
    }
}

/// `dst = scale * lhs rhs`, or `dst += scale * lhs rhs` with `accumulate`, for `[m, k] x [k, n]`
/// (`shape = [m, n, k]`; without `accumulate`, `dst` is only written): by the zoo's AVX2 kernel
/// ([`super::sgemm`]) where it is enabled and `dst` has unit column stride, else by the gemm
/// crate.
///
/// # Safety
/// The views must describe live buffers of these shapes, and `dst` must not overlap the others.
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: View<*mut f32>,
    accumulate: bool,
    lhs: View<*const f32>,
    rhs: View<*const f32>,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if dst.cs == 1 && dst.rs >= 0 && super::sgemm::enabled() {
        let threaded = !matches!(parallelism, gemm::Parallelism::None);
        // SAFETY: the CPU has AVX2 and FMA (enabled); the rest as the caller promises.
        return unsafe {
            super::sgemm::sgemm([m, n, k], dst.ptr, dst.rs as usize, accumulate, lhs, rhs, scale, threaded)
        };
    }
    if k == 0 {
        // An empty sum, as `sgemm` treats it: `dst` stays, or becomes zero (it may be
        // uninitialised, see `overwritten`).
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    unsafe { *dst.ptr.offset(i as isize * dst.rs + j as isize * dst.cs) = 0.0 };
                }
            }
        }
        return;
    }
    let keep = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            keep,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Result<Tensor<D>, LinearArgs<D>> {
    let bias_prim = bias.as_ref().map(float32);
    let (Some(xt), Some(wt), None | Some(Some(_))) = (float32(&x), float32(&weight), &bias_prim) else {
        return Err((x, weight, bias));
    };
    drop(x);
    Ok(tensor(linear_kernel(&xt, &wt, bias_prim.flatten().as_ref())))
}

/// `x @ weight + bias` over the last dimension of a float32 `x`, `weight` `[k, n]`: the output
/// starts as the bias in every row and the product accumulates onto it (no second pass).
fn linear_kernel(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let [k, n] = [weight.layout().shape()[0], weight.layout().shape()[1]];
    let m = dims[..dims.len() - 1].iter().product::<usize>();
    let threads = parallel(m * n * k);
    let product = |out: *mut f32, accumulate: bool| {
        // SAFETY: `out` is `[m, n]`; the views are of live tensors of the shapes passed.
        unsafe {
            matmul(
                [m, n, k],
                view(out, n, 1),
                accumulate,
                rows(x, m, k).view(),
                Matrix::new(weight).view(),
                1.0,
                threads,
            )
        }
    };
    let out = match bias {
        Some(b) => {
            let b = b.to_contiguous();
            let b = &b.storage::<f32>()[b.layout().start_offset()..][..n];
            let mut out = overwritten(m * n, |out| {
                let out = SharedMut(out);
                (0..m).into_par_iter().with_min_len((CHUNK / n).max(1)).for_each(|i| {
                    // SAFETY: `out` holds `m` rows of `n` floats; each task writes its own row.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out.at(i * n), n) }
                });
            });
            product(out.as_mut_ptr(), true);
            out
        }
        None => overwritten(m * n, |out| product(out, false)),
    };
    let mut shape = dims;
    *shape.last_mut().expect("x has dimensions") = n;
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// `len` floats not yet written, for a caller that writes every one before anything reads it (as
/// a product that does not accumulate does): zeroing them first would be a pass over memory for
/// nothing.
fn unwritten(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut buf = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` elements need no initialisation.
    unsafe { buf.set_len(len) };
    buf
}

/// The floats of an [`unwritten`] buffer.
///
/// # Safety
/// Every element has been written.
unsafe fn written(buf: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut buf = std::mem::ManuallyDrop::new(buf);
    // SAFETY: same allocation, length and capacity; the elements are initialised.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast(), buf.len(), buf.capacity()) }
}

/// A buffer of `len` floats that `write` fills whole through its pointer.
fn overwritten(len: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut buf = unwritten(len);
    write(buf.as_mut_ptr().cast());
    // SAFETY: `write` wrote all `len` elements.
    unsafe { written(buf) }
}

fn parallel(macs: usize) -> gemm::Parallelism {
    if macs >= THREADED_MACS { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None }
}

/// A 2-D float32 flex tensor whose elements [`matmul`] reads in place, at its own strides.
struct Matrix {
    t: FlexTensor,
    rs: isize,
    cs: isize,
}

impl Matrix {
    fn new(t: &FlexTensor) -> Self {
        let t = if t.layout().has_positive_strides() { t.clone() } else { t.to_contiguous() };
        let s = t.layout().strides();
        let (rs, cs) = (s[0], s[1]);
        Matrix { t, rs, cs }
    }

    fn view(&self) -> View<*const f32> {
        // SAFETY: the start offset lies inside the storage.
        let ptr = unsafe { self.t.storage::<f32>().as_ptr().add(self.t.layout().start_offset()) };
        View { ptr, rs: self.rs, cs: self.cs }
    }

    /// The transpose, a view of the same elements.
    fn transposed(self) -> Self {
        Matrix { t: self.t, rs: self.cs, cs: self.rs }
    }
}

/// `x` as an `[m, k]` matrix of its rows (the last dimension).
fn rows(x: &FlexTensor, m: usize, k: usize) -> Matrix {
    // Rows of x must sit at one stride from each other: true unless x is a permuted view.
    let (t, [rs, cs]) = strided::<2>(x.clone().reshape(vec![m, k].into()));
    Matrix { t, rs: rs as isize, cs: cs as isize }
}

pub fn gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    let Some(mut t) = float32(&x) else { return Err(x) };
    drop(x);
    let contiguous = t.layout().contiguous_offsets();
    if let (Some((start, end)), true) = (contiguous, t.is_unique()) {
        let data = t.try_storage_mut::<f32>().expect("unique");
        data[start..end].par_chunks_mut(CHUNK).for_each(simd::gelu_in_place);
        return Ok(tensor(t));
    }
    let shape = t.layout().shape().to_vec();
    let mut data = values(t);
    data.par_chunks_mut(CHUNK).for_each(simd::gelu_in_place);
    Ok(from_vec(data, shape))
}

/// The kernels of the fused, differentiable ops ([`super::fused`]): float32 flex tensors of any
/// layout in, new contiguous ones out, in tasks of whole rows (the last dimension) spread over
/// the cores.
pub(super) mod kernels {
    use super::*;
    use std::borrow::Cow;

    /// The elements of a float32 tensor in row-major order, borrowed when it is contiguous.
    fn elements(t: &FlexTensor) -> Cow<'_, [f32]> {
        assert_eq!(t.dtype(), DType::F32, "the fused ops take float32 tensors");
        match t.as_slice::<f32>() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(values(t.clone())),
        }
    }

    fn shaped_like(data: Vec<f32>, like: &FlexTensor) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, like.layout().shape().clone()))
    }

    /// Elements per task for rows of `n`: whole rows, about [`CHUNK`] elements.
    fn task_len(n: usize) -> usize {
        n.max(1) * (CHUNK / n.max(1)).max(1)
    }

    fn last_dim(t: &FlexTensor) -> usize {
        t.layout().shape().last().copied().unwrap_or(1)
    }

    /// A copy of `x`'s elements in tasks of `len`, each then handed to `f` while in cache.
    fn map_copy(x: &[f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate().for_each(|(i, (y, x))| {
            y.copy_from_slice(x);
            f(i, y)
        });
        y
    }

    pub fn gelu(x: &FlexTensor) -> FlexTensor {
        shaped_like(map_copy(&elements(x), CHUNK, |_, y| simd::gelu_in_place(y)), x)
    }

    /// `dy (Φ(x) + x φ(x))`.
    pub fn gelu_backward(x: &FlexTensor, dy: &FlexTensor) -> FlexTensor {
        let (xs, dys) = (elements(x), elements(dy));
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| simd::gelu_grad((x, dy, dx)));
        shaped_like(dx, x)
    }

    /// `softmax(scale x)` over the last dimension.
    pub fn softmax(x: &FlexTensor, scale: f32) -> FlexTensor {
        let n = last_dim(x);
        shaped_like(map_copy(&elements(x), task_len(n), |_, rows| simd::softmax_scaled((rows, n, scale))), x)
    }

    /// `scale y (dy - Σ dy y)` per row.
    pub fn softmax_backward(y: &FlexTensor, dy: &FlexTensor, scale: f32) -> FlexTensor {
        let n = last_dim(y);
        let (ys, dys) = (elements(y), elements(dy));
        let mut dx = vec![0.0f32; ys.len()];
        let t = task_len(n);
        dx.par_chunks_mut(t)
            .zip(ys.par_chunks(t).zip(dys.par_chunks(t)))
            .for_each(|(dx, (y, dy))| simd::softmax_grad((y, dy, dx, n, scale)));
        shaped_like(dx, y)
    }

    /// The forward pass of [`super::super::fused::FusedOps::fused_linear`].
    pub fn linear(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
        linear_kernel(x, weight, bias)
    }

    /// The gradients of `x W + b` (`W` `[k, n]`, over the rows of `x`) that are `wanted`:
    /// `dx = dy W^T`, `dW = x^T dy`, `db` the column sums of `dy`. The products read `W^T` and
    /// `x^T` in place.
    pub fn linear_backward(
        x: &FlexTensor,
        weight: &FlexTensor,
        dy: &FlexTensor,
        [want_x, want_weight, want_bias]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (k, n) = (weight.layout().shape()[0], weight.layout().shape()[1]);
        let dys = elements(dy);
        let m = dys.len() / n;
        let dy_rows = view(dys.as_ptr(), n, 1);
        let threads = parallel(m * n * k);
        let dx = want_x.then(|| {
            let w_t = Matrix::new(weight).transposed();
            // SAFETY: `dx` is `[m, k]`, `dy` `[m, n]`, `W^T` `[n, k]`.
            let dx = overwritten(m * k, |dx| unsafe {
                matmul([m, k, n], view(dx, k, 1), false, dy_rows, w_t.view(), 1.0, threads)
            });
            shaped_like(dx, x)
        });
        let dweight = want_weight.then(|| {
            let x_t = rows(x, m, k).transposed();
            // SAFETY: `dW` is `[k, n]`, `x^T` `[k, m]`, `dy` `[m, n]`.
            let dw = overwritten(k * n, |dw| unsafe {
                matmul([k, n, m], view(dw, n, 1), false, x_t.view(), dy_rows, 1.0, threads)
            });
            shaped_like(dw, weight)
        });
        let dbias = want_bias.then(|| {
            let add = |mut sum: Vec<f32>, row: &[f32]| {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                sum
            };
            let sums = dys
                .par_chunks(task_len(n))
                .map(|rows| rows.chunks_exact(n).fold(vec![0.0f32; n], add))
                .reduce(|| vec![0.0f32; n], |a, b| add(a, &b));
            FlexTensor::from_data(TensorData::new(sums, vec![n]))
        });
        [dx, dweight, dbias]
    }

    /// `relu?(x scale[c] + shift[c] (+ residual))` per channel `c` of `x` `[B, C, H, W]`.
    pub fn channel_affine(
        x: &FlexTensor,
        scale: &FlexTensor,
        shift: &FlexTensor,
        residual: Option<&FlexTensor>,
        relu: bool,
    ) -> FlexTensor {
        let dims = x.layout().shape();
        let (c, plane) = (dims[1], dims[2] * dims[3]);
        let (scale, shift) = (elements(scale), elements(shift));
        let residual = residual.map(elements);
        let y = map_copy(&elements(x), plane, |i, y| {
            let (a, b) = (scale[i % c], shift[i % c]);
            match &residual {
                Some(r) => simd::affine_residual((y, &r[i * plane..][..plane], a, b, relu)),
                None => simd::affine((y, a, b, relu)),
            }
        });
        shaped_like(y, x)
    }

    /// The gradients of [`channel_affine`] for `x` and the residual: `g = dy` where the
    /// output `y` is positive (everywhere without ReLU, `y` then `None`), `dx = g scale[c]`,
    /// `dresidual = g`.
    pub fn channel_affine_backward(
        y: Option<&FlexTensor>,
        dy: &FlexTensor,
        scale: &FlexTensor,
        want_residual: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dims = dy.layout().shape();
        let (c, plane) = (dims[1], dims[2] * dims[3]);
        let scale = elements(scale);
        let y = y.map(elements);
        let mut g = elements(dy).into_owned();
        if let Some(y) = &y {
            g.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(g, y)| simd::relu_mask((g, y)));
        }
        let dx = map_copy(&g, plane, |i, dx| simd::affine((dx, scale[i % c], 0.0, false)));
        let dres = want_residual.then(|| shaped_like(g, dy));
        (shaped_like(dx, dy), dres)
    }

    /// The forward pass of [`super::super::fused::FusedOps::fused_conv2d`]: the inference
    /// kernels of [`super::super::conv2d`] (no bias).
    pub fn conv2d(x: &FlexTensor, weight: &FlexTensor, stride: [usize; 2], padding: [usize; 2]) -> FlexTensor {
        let (x, weight) = (tensor::<4>(x.clone()), tensor::<4>(weight.clone()));
        super::super::conv2d_with(x, weight, None, stride, padding).try_into_primitive::<Flex>().expect("a flex tensor")
    }

    /// Output columns per block of [`conv2d_backward`]'s im2col matrix: about 4 MiB of it.
    const CONV_BLOCK_FLOATS: usize = 1 << 20;

    /// The gradients of a convolution (no bias, groups 1, dilation 1) with respect to its input
    /// and its weight, those that are `wanted`. Per image and block of output rows, with `cols`
    /// the block's im2col matrix (`ci kh kw` x positions) and `dY` the block of the output
    /// gradient (`co` x positions): `dW += dY cols^T` and `dcols = W^T dY`, folded back onto
    /// the input. One large matrix product per block, threaded inside, where Burn's weight
    /// gradient is a convolution whose kernel is the output gradient (products one column wide).
    /// A 3x3 stride-1 convolution's input gradient, where its forward pass goes by Winograd's
    /// F(2x2, 3x3), is a convolution of `dY` by the same kernels instead
    /// ([`conv3x3_input_grad`]).
    pub fn conv2d_backward(
        x: &FlexTensor,
        weight: &FlexTensor,
        dy: &FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        [want_x, want_weight]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let &[b, ci, h, w] = x.layout().shape().as_slice() else { unreachable!("a 4-d input") };
        let &[co, _, kh, kw] = weight.layout().shape().as_slice() else { unreachable!("a 4-d weight") };
        let g = ConvGeometry::new([h, w], [kh, kw], stride, padding);
        let (xs, ws, dys) = (elements(x), elements(weight), elements(dy));
        // Where the forward pass runs Winograd's F(2x2, 3x3), the input gradient is such a
        // convolution too (below), not a product per block.
        let dx_by_conv = want_x && winograd::takes(stride, [kh, kw], padding);
        let (kdim, positions) = (ci * kh * kw, g.positions());
        let rows_per_block = if g.is_pointwise() { g.oh } else { (CONV_BLOCK_FLOATS / (kdim * g.ow)).max(1) };
        let mut dx = vec![0.0f32; if want_x && !dx_by_conv { xs.len() } else { 0 }];
        let mut dw = vec![0.0f32; if want_weight { ws.len() } else { 0 }];
        let mut cols = Vec::new();
        let mut dcols = Vec::new();
        let threaded = gemm::Parallelism::Rayon(0);
        for image in 0..b {
            let plane_in = &xs[image * ci * h * w..][..ci * h * w];
            let grad_out = &dys[image * co * positions..][..co * positions];
            for oy0 in (0..g.oh).step_by(rows_per_block) {
                let rows = oy0..(oy0 + rows_per_block).min(g.oh);
                let n = rows.len() * g.ow;
                let dy_block = view(grad_out[oy0 * g.ow..].as_ptr(), positions, 1);
                if want_weight {
                    // cols^T, n x kdim: the input itself when the convolution is pointwise.
                    let cols_t = if g.is_pointwise() {
                        view(plane_in.as_ptr(), 1, h * w)
                    } else {
                        cols.resize(kdim * n, 0.0);
                        cols.par_chunks_mut(kh * kw * n)
                            .zip(plane_in.par_chunks(h * w))
                            .for_each(|(cols, plane)| g.unfold(plane, rows.clone(), cols));
                        view(cols.as_ptr(), 1, n)
                    };
                    let accumulate = image > 0 || oy0 > 0;
                    // SAFETY: dW is co x kdim, dY's block co x n (row stride `positions`),
                    // cols^T n x kdim, all live; dW overlaps neither.
                    unsafe {
                        matmul(
                            [co, kdim, n],
                            view(dw.as_mut_ptr(), kdim, 1),
                            accumulate,
                            dy_block,
                            cols_t,
                            1.0,
                            threaded,
                        )
                    };
                }
                if want_x && !dx_by_conv {
                    let w_t = view(ws.as_ptr(), 1, kdim);
                    let plane_grad = &mut dx[image * ci * h * w..][..ci * h * w];
                    if g.is_pointwise() {
                        // SAFETY: dX's plane is ci x positions, W^T ci x co, dY co x positions.
                        unsafe {
                            matmul(
                                [ci, n, co],
                                view(plane_grad.as_mut_ptr(), n, 1),
                                false,
                                w_t,
                                dy_block,
                                1.0,
                                threaded,
                            )
                        };
                        continue;
                    }
                    dcols.resize(kdim * n, 0.0);
                    // SAFETY: dcols is kdim x n, W^T kdim x co, dY's block co x n.
                    unsafe {
                        matmul([kdim, n, co], view(dcols.as_mut_ptr(), n, 1), false, w_t, dy_block, 1.0, threaded)
                    };
                    plane_grad
                        .par_chunks_mut(h * w)
                        .zip(dcols.par_chunks(kh * kw * n))
                        .for_each(|(plane, dcols)| g.fold(dcols, rows.clone(), plane));
                }
            }
        }
        let dx =
            if dx_by_conv { Some(conv3x3_input_grad(dy, &ws, [co, ci])) } else { want_x.then(|| shaped_like(dx, x)) };
        [dx, want_weight.then(|| shaped_like(dw, weight))]
    }

    /// The input gradient of a 3x3 convolution with stride 1 and padding 1 (weights `ws`,
    /// `[co, ci, 3, 3]`), itself such a convolution: of the output gradient `dy` by the weights
    /// with input and output channels swapped and each 3x3 window turned by 180 degrees
    /// (`dX[i, y, x] = Σ_o Σ_(u,v) dY[o, y + 1 - u, x + 1 - v] W[o, i, u, v]`), by the forward
    /// pass's kernels.
    fn conv3x3_input_grad(dy: &FlexTensor, ws: &[f32], [co, ci]: [usize; 2]) -> FlexTensor {
        let mut turned = vec![0.0f32; ws.len()];
        for (pair, window) in ws.chunks_exact(9).enumerate() {
            let (o, i) = (pair / ci, pair % ci);
            // Tap t = 3 u + v goes to 3 (2 - u) + (2 - v) = 8 - t.
            for (t, &w) in window.iter().enumerate() {
                turned[(i * co + o) * 9 + 8 - t] = w;
            }
        }
        let weight = FlexTensor::from_data(TensorData::new(turned, [ci, co, 3, 3]));
        conv2d(dy, &weight, [1, 1], [1, 1])
    }

    /// The forward pass of [`super::super::fused::FusedOps::fused_attention`]: the inference kernel.
    pub fn attention(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, num_heads: usize) -> FlexTensor {
        let args = (tensor::<3>(q.clone()), tensor::<3>(k.clone()), tensor::<3>(v.clone()), None);
        let out = super::attention(args, num_heads).unwrap_or_else(|_| unreachable!("float32 flex tensors"));
        out.try_into_primitive::<Flex>().expect("a flex tensor")
    }

    /// The gradients of [`attention`] with respect to `q`, `k` and `v` (`[B, N, C]` each), from
    /// the output's `dout`: [`Head::backward`] for each (batch element, head) as one task.
    pub fn attention_backward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        dout: &FlexTensor,
        num_heads: usize,
    ) -> [FlexTensor; 3] {
        let heads = Heads::new(q.clone(), k.clone(), v.clone(), num_heads);
        let (b, nq, nk, c, d) = (heads.b, heads.nq, heads.nk, heads.c, heads.d);
        let (dt, [do_bs, do_rs, _]) = strided::<3>(dout.clone());
        let dos = &dt.storage::<f32>()[dt.layout().start_offset()..];
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; b * nq * c], vec![0.0f32; b * nk * c], vec![0.0f32; b * nk * c]);
        let (dq_ptr, dk_ptr, dv_ptr) =
            (SharedMut(dq.as_mut_ptr()), SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
        heads.for_each(None, |head, bi, h, scratch| {
            // SAFETY: task (bi, h) writes only columns h*d..(h+1)*d of batch element bi's rows
            // of each gradient.
            unsafe {
                let out = |ptr: SharedMut, n: usize| (ptr.at(bi * n * c + h * d), c);
                let (do_, outs) = (&dos[bi * do_bs + h * d..], [out(dq_ptr, nq), out(dk_ptr, nk), out(dv_ptr, nk)]);
                if d <= SMALL_HEAD {
                    simd::attend_backward_direct((head, do_, do_rs, outs, scratch));
                } else {
                    head.backward(do_, do_rs, outs, scratch);
                }
            }
        });
        [shaped_like(dq, q), shaped_like(dk, k), shaped_like(dv, v)]
    }

    /// [`super::adamw_update`]'s pass: the new parameter, first and second moments.
    pub fn adamw(
        p: &FlexTensor,
        g: &FlexTensor,
        moments: Option<(&FlexTensor, &FlexTensor)>,
        step: &AdamWStep,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (ps, gs) = (elements(p), elements(g));
        let moments = moments.map(|(m, v)| (elements(m), elements(v)));
        let n = ps.len();
        let mut outs = [unwritten(n), unwritten(n), unwritten(n)];
        let ptrs = outs.each_mut().map(|out| SharedMut(out.as_mut_ptr().cast()));
        let t = step.time as i32;
        let scalars = simd::AdamW {
            beta_1: step.beta_1,
            beta_2: step.beta_2,
            correction_1: 1.0 - step.beta_1.powi(t),
            correction_2: 1.0 - step.beta_2.powi(t),
            epsilon: step.epsilon,
            decay: (1.0 - step.lr * step.weight_decay as f64) as f32,
            lr: step.lr as f32,
        };
        (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|i| {
            let range = i * CHUNK..((i + 1) * CHUNK).min(n);
            // SAFETY: each task has its own range of the three buffers and writes it whole before
            // anything reads it.
            let [p_out, m_out, v_out] =
                ptrs.map(|out| unsafe { std::slice::from_raw_parts_mut(out.at(range.start), range.len()) });
            let old = moments.as_ref().map(|(m, v)| (&m[range.clone()], &v[range.clone()]));
            simd::adamw((&ps[range.clone()], &gs[range], old, [p_out, m_out, v_out], &scalars));
        });
        // SAFETY: the tasks wrote every element of the three.
        let [p_new, m_new, v_new] = outs.map(|out| unsafe { written(out) });
        (p_new, m_new, v_new)
    }

    pub fn layer_norm(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, epsilon: f32) -> FlexTensor {
        let d = last_dim(x);
        let (xs, g, b) = (elements(x), elements(gamma), elements(beta));
        let mut y = vec![0.0f32; xs.len()];
        let t = task_len(d);
        y.par_chunks_mut(t).zip(xs.par_chunks(t)).for_each(|(y, x)| simd::layer_norm_rows((x, y, &g, &b, epsilon)));
        shaped_like(y, x)
    }

    /// The gradients of [`layer_norm`] with respect to `x`, gamma and beta, those that are
    /// `wanted`: with `x̂ = (x - mean) r`, `r = (var + epsilon)^-1/2` and `g = dy gamma` per row,
    /// `dx = r (g - mean(g) - x̂ mean(g x̂))`, `dgamma = Σ_rows dy x̂`, `dbeta = Σ_rows dy`.
    pub fn layer_norm_backward(
        x: &FlexTensor,
        gamma: &FlexTensor,
        dy: &FlexTensor,
        epsilon: f32,
        wanted: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let d = last_dim(x);
        let (xs, g, dys) = (elements(x), elements(gamma), elements(dy));
        let mut dx = vec![0.0f32; if wanted[0] { xs.len() } else { 0 }];
        let t = task_len(d);
        let task = |(x, dy, dx): (&[f32], &[f32], &mut [f32])| {
            let mut sums = vec![0.0f32; 2 * d];
            simd::layer_norm_grad((x, dy, &g, dx, &mut sums, epsilon));
            sums
        };
        let tasks = xs.par_chunks(t).zip(dys.par_chunks(t));
        let partial_sums: Vec<Vec<f32>> = if wanted[0] {
            tasks.zip(dx.par_chunks_mut(t)).map(|((x, dy), dx)| task((x, dy, dx))).collect()
        } else {
            tasks.map(|(x, dy)| task((x, dy, &mut []))).collect()
        };
        // Rows of dgamma and dbeta summed over the tasks' partial sums, in task order.
        let mut sums = vec![0.0f32; 2 * d];
        for partial in &partial_sums {
            sums.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
        }
        let param = |values: &[f32]| FlexTensor::from_data(TensorData::new(values.to_vec(), vec![d]));
        [
            wanted[0].then(|| shaped_like(dx, x)),
            wanted[1].then(|| param(&sums[..d])),
            wanted[2].then(|| param(&sums[d..])),
        ]
    }
}

pub fn adamw_update<const D: usize>(
    (param, grad, moments): AdamWArgs<D>,
    step: &AdamWStep,
) -> Result<(Tensor<D>, Tensor<D>, Tensor<D>), AdamWArgs<D>> {
    let moment_prims = moments.as_ref().map(|(m, v)| (float32(m), float32(v)));
    let (Some(p), Some(g), None | Some((Some(_), Some(_)))) = (float32(&param), float32(&grad), &moment_prims) else {
        return Err((param, grad, moments));
    };
    let shape = param.dims().to_vec();
    drop((param, grad, moments));
    let moment_prims = moment_prims.map(|(m, v)| (m.expect("float32"), v.expect("float32")));
    let (p, m, v) = kernels::adamw(&p, &g, moment_prims.as_ref().map(|(m, v)| (m, v)), step);
    Ok((from_vec(p, shape.clone()), from_vec(m, shape.clone()), from_vec(v, shape)))
}

/// A convolution's float32 flex operands outside autodiff, made contiguous: the input
/// `[b, ci, h, w]`, the weights `[co, ci, kh, kw]` and the bias.
struct ConvOperands {
    x: FlexTensor,
    weight: FlexTensor,
    x_dims: [usize; 4],
    weight_dims: [usize; 4],
    bias: Option<Vec<f32>>,
}

impl ConvOperands {
    /// The operands, or `x` back when any of them is not a float32 flex tensor outside autodiff.
    fn new(x: Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>) -> Result<Self, Tensor<4>> {
        let bias_prim = bias.map(float32);
        let (Some(xt), Some(wt), None | Some(Some(_))) = (float32(&x), float32(weight), &bias_prim) else {
            return Err(x);
        };
        let x_dims = x.dims();
        drop(x);
        Ok(ConvOperands {
            x: xt.to_contiguous(),
            weight: wt.to_contiguous(),
            x_dims,
            weight_dims: weight.dims(),
            bias: bias_prim.flatten().map(values),
        })
    }

    /// The input's elements, row-major.
    fn input(&self) -> &[f32] {
        &self.x.storage::<f32>()[self.x.layout().start_offset()..]
    }

    /// The weights' elements, row-major.
    fn weights(&self) -> &[f32] {
        &self.weight.storage::<f32>()[self.weight.layout().start_offset()..]
    }
}

/// Convolutions that are sums of matrix products over views of one image (`[C_in, plane]`
/// flattened): tap `t` multiplies `W[:, :, t]` by the image read from offset `shifts[t]`.
/// `kernel_size` 1: one tap on the image itself; 3 (stride 1, padding 1): on the image
/// zero-padded to `(H+2) x (W+2)`, tap `(kh, kw)` is the padded image shifted by
/// `kh (W+2) + kw`, over a `H x (W+2)` grid whose last two columns are dropped at the end.
pub fn conv_taps(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    kernel_size: usize,
) -> Result<Tensor<4>, Tensor<4>> {
    let operands = ConvOperands::new(x, &weight, bias.as_ref())?;
    let ([b, ci, h, w], co) = (operands.x_dims, operands.weight_dims[0]);
    let (xs, ws, bias) = (operands.input(), operands.weights(), &operands.bias);
    let taps = kernel_size * kernel_size;
    let pad = kernel_size / 2;
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    let n = h * wp;
    let shifts: Vec<usize> = (0..taps).map(|t| (t / kernel_size) * wp + t % kernel_size).collect();
    // SAFETY: W[:, :, tap] is `[co, ci]` at row stride ci*taps and column stride taps in `ws`,
    // which outlives `weights`.
    let weights: Vec<SharedLhs> =
        (0..taps).map(|tap| unsafe { SharedLhs::new(view(ws.as_ptr().add(tap), ci * taps, taps), [co, ci]) }).collect();
    // Every output element is written: by the bias, then accumulated onto, or by the first tap.
    let mut out = unwritten(b * co * h * w);
    let out_ptr = SharedMut(out.as_mut_ptr().cast());
    // The last taps read up to 2 pad elements past the last padded plane.
    let mut padded = if pad > 0 { vec![0.0f32; ci * plane + 2 * pad] } else { Vec::new() };
    let mut grid = if pad > 0 { unwritten(co * n) } else { Vec::new() };
    let grid_ptr = SharedMut(grid.as_mut_ptr().cast());
    for (i, image) in xs.chunks_exact(ci * h * w).enumerate() {
        // SAFETY: image i's `[co, h, w]` output lies inside `out`.
        let out_i = SharedMut(unsafe { out_ptr.at(i * co * h * w) });
        let (source, dst) = if pad > 0 {
            padded.par_chunks_mut(plane).zip(image.par_chunks_exact(h * w)).for_each(|(p, x)| {
                for (row, x_row) in p[pad * wp..].chunks_exact_mut(wp).zip(x.chunks_exact(w)) {
                    row[pad..pad + w].copy_from_slice(x_row);
                }
            });
            (&padded[..], grid_ptr)
        } else {
            (image, out_i)
        };
        if let Some(bias) = &bias {
            // SAFETY: `dst` holds `co` rows of `n`.
            bias.par_iter().enumerate().for_each(|(c, &v)| (0..n).for_each(|j| unsafe { dst.at(c * n + j).write(v) }));
        }
        // Column blocks small enough that a block's output and inputs stay in cache across
        // the taps; one block per task. A 1x1 convolution has no taps to share a block, and
        // each block streams all of the packed weights through the cache: two blocks a thread.
        let block = if taps == 1 {
            n.div_ceil(2 * rayon::current_num_threads()).next_multiple_of(16).max(64)
        } else {
            (CACHE_FLOATS / (co + ci)).clamp(64, n.max(64))
        };
        (0..n.div_ceil(block)).into_par_iter().for_each(|i| {
            let j0 = i * block;
            let cols = block.min(n - j0);
            for (tap, (w_tap, &shift)) in weights.iter().zip(&shifts).enumerate() {
                // SAFETY: dst is columns j0..j0+cols of the co x n output (this task's alone);
                // rhs row c is plane c of the source from shift + j0, cols elements, inside the
                // source.
                unsafe {
                    w_tap.matmul(
                        [co, cols, ci],
                        view(dst.at(j0), n, 1),
                        bias.is_some() || tap > 0,
                        view(source.as_ptr().add(shift + j0), plane, 1),
                    );
                }
            }
        });
        if pad > 0 {
            // The grid's rows without their last two columns.
            (0..co * h).into_par_iter().with_min_len((CHUNK / w).max(1)).for_each(|r| {
                // SAFETY: row r of the written `co h x wp` grid, and of image i's output.
                unsafe { std::ptr::copy_nonoverlapping(grid_ptr.at(r * wp), out_i.at(r * w), w) }
            });
        }
    }
    // SAFETY: every image's output was written (above).
    let out = unsafe { written(out) };
    Ok(from_vec(out, vec![b, co, h, w]))
}

/// Any convolution with one group and no dilation (here: ResNet's strided ones and its 7x7
/// stem) by im2col in blocks of output rows: a task unfolds the input windows of its rows
/// into a `[C_in kh kw, rows W_out]` matrix that stays in cache and multiplies `W` by it.
/// The sizes of a convolution of one image plane: input `h x w`, kernel `kh x kw`, stride,
/// zero padding on both sides, output `oh x ow`; and the im2col layout of its patches: for each
/// kernel tap `(ki, kj)` one row over the output positions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl ConvGeometry {
    pub(super) fn new([h, w]: [usize; 2], [kh, kw]: [usize; 2], [sh, sw]: [usize; 2], [ph, pw]: [usize; 2]) -> Self {
        let (oh, ow) = ((h + 2 * ph).saturating_sub(kh) / sh + 1, (w + 2 * pw).saturating_sub(kw) / sw + 1);
        Self { h, w, kh, kw, sh, sw, ph, pw, oh, ow }
    }

    /// Output positions per plane.
    pub(super) fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// For each tap `(ki, kj)` and output row in `rows`: the input row, and the output columns
    /// whose input column `ox sw + kj - pw` lies inside the image; `visit(tap, row offset in
    /// the block, input row offset, columns)` for each that does.
    fn taps(&self, rows: std::ops::Range<usize>, mut visit: impl FnMut(usize, usize, usize, std::ops::Range<usize>)) {
        let Self { h, w, kh, kw, sh, sw, ph, pw, ow, .. } = *self;
        for t in 0..kh * kw {
            let (ki, kj) = (t / kw, t % kw);
            let lo = (pw.saturating_sub(kj)).div_ceil(sw);
            let hi = ((w + pw).saturating_sub(kj)).div_ceil(sw).min(ow);
            for (dy, oy) in rows.clone().enumerate() {
                let iy = oy * sh + ki;
                if iy >= ph && iy < h + ph && lo < hi {
                    visit(t, dy * ow, (iy - ph) * w, lo..hi);
                }
            }
        }
    }

    /// `cols` (`kh kw` rows of `rows.len() ow`) <- the patches of one input plane for the output
    /// rows `rows`, zero where they fall on the padding.
    fn unfold(&self, plane: &[f32], rows: std::ops::Range<usize>, cols: &mut [f32]) {
        let (n, (sw, kw, pw)) = (rows.len() * self.ow, (self.sw, self.kw, self.pw));
        cols.fill(0.0);
        self.taps(rows, |t, out, row, columns| {
            let (src, dst) = (&plane[row..][..self.w], &mut cols[t * n + out..]);
            for ox in columns {
                dst[ox] = src[ox * sw + t % kw - pw];
            }
        });
    }

    /// The adjoint of [`ConvGeometry::unfold`]: adds each patch element of `cols` to the input
    /// position it came from in `plane`.
    fn fold(&self, cols: &[f32], rows: std::ops::Range<usize>, plane: &mut [f32]) {
        let (n, (sw, kw, pw)) = (rows.len() * self.ow, (self.sw, self.kw, self.pw));
        self.taps(rows, |t, out, row, columns| {
            let (src, dst) = (&cols[t * n + out..], &mut plane[row..][..self.w]);
            for ox in columns {
                dst[ox * sw + t % kw - pw] += src[ox];
            }
        });
    }

    /// Whether the patches are the plane itself (1x1, stride 1, no padding): no im2col needed.
    fn is_pointwise(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)
    }
}

pub fn conv_unfold(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor<4>, Tensor<4>> {
    let operands = ConvOperands::new(x, &weight, bias.as_ref())?;
    let ([b, ci, h, w], [co, _, kh, kw]) = (operands.x_dims, operands.weight_dims);
    let (xs, ws, bias) = (operands.input(), operands.weights(), &operands.bias);
    let geometry = ConvGeometry::new([h, w], [kh, kw], stride, padding);
    let (oh, ow) = (geometry.oh, geometry.ow);
    let kdim = ci * kh * kw;
    // SAFETY: W is `[co, kdim]` row-major in `ws`, which outlives `weights`.
    let weights = unsafe { SharedLhs::new(view(ws.as_ptr(), kdim, 1), [co, kdim]) };
    let rows_per_block = (CACHE_FLOATS / (kdim * ow)).max(1);
    // Every output element is written: by the bias, then accumulated onto, or by the product.
    let mut out = unwritten(b * co * oh * ow);
    let all_out = SharedMut(out.as_mut_ptr().cast());
    for (i, image) in xs.chunks_exact(ci * h * w).enumerate() {
        // SAFETY: image i's `[co, oh, ow]` output lies inside `out`.
        let out_ptr = SharedMut(unsafe { all_out.at(i * co * oh * ow) });
        if let Some(bias) = &bias {
            // SAFETY: the image's output holds `co` planes of `oh ow`.
            bias.par_iter()
                .enumerate()
                .for_each(|(c, &v)| (0..oh * ow).for_each(|j| unsafe { out_ptr.at(c * oh * ow + j).write(v) }));
        }
        (0..oh.div_ceil(rows_per_block)).into_par_iter().for_each_init(Vec::new, |cols: &mut Vec<f32>, block| {
            let oy0 = block * rows_per_block;
            let rows = rows_per_block.min(oh - oy0);
            let n = rows * ow;
            cols.resize(kdim * n, 0.0);
            for (plane, cols) in image.chunks_exact(h * w).zip(cols.chunks_exact_mut(kh * kw * n)) {
                geometry.unfold(plane, oy0..oy0 + rows, cols);
            }
            // SAFETY: dst is columns oy0*ow.. (rows*ow of them) of the co x (oh*ow) output,
            // this task's alone; rhs is the kdim x n block.
            unsafe {
                let dst = view(out_ptr.at(oy0 * ow), oh * ow, 1);
                weights.matmul([co, n, kdim], dst, bias.is_some(), view(cols.as_ptr(), n, 1));
            }
        });
    }
    // SAFETY: every image's output was written (above).
    Ok(from_vec(unsafe { written(out) }, vec![b, co, oh, ow]))
}

/// Max pooling with `k x k` windows, stride `s`, `p` rows and columns of padding that never win.
pub fn max_pool(x: Tensor<4>, k: usize, s: usize, p: usize) -> Result<Tensor<4>, Tensor<4>> {
    let Some(xt) = float32(&x) else { return Err(x) };
    let [b, c, h, w] = x.dims();
    drop(x);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let xt = xt.to_contiguous();
    let xs = &xt.storage::<f32>()[xt.layout().start_offset()..][..b * c * h * w];
    let mut out = vec![0.0f32; b * c * oh * ow];
    out.par_chunks_mut(oh * ow).zip(xs.par_chunks_exact(h * w)).for_each(|(out, plane)| {
        let mut rows_max = vec![0.0f32; w];
        for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
            // Window rows clipped to the image (padding never wins a max).
            let r0 = (i * s).saturating_sub(p);
            let r1 = (i * s + k - p).min(h);
            rows_max.copy_from_slice(&plane[r0 * w..][..w]);
            for r in r0 + 1..r1 {
                for (m, &v) in rows_max.iter_mut().zip(&plane[r * w..][..w]) {
                    *m = m.max(v);
                }
            }
            for (j, o) in out_row.iter_mut().enumerate() {
                let c0 = (j * s).saturating_sub(p);
                let c1 = (j * s + k - p).min(w);
                *o = rows_max[c0..c1].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            }
        }
    });
    Ok(from_vec(out, vec![b, c, oh, ow]))
}

pub fn channel_affine((x, scale, shift, residual): AffineArgs, relu: bool) -> Result<Tensor<4>, AffineArgs> {
    let residual_prim = residual.as_ref().map(float32);
    let (Some(xt), Some(scale_t), Some(shift_t), None | Some(Some(_))) =
        (float32(&x), float32(&scale), float32(&shift), &residual_prim)
    else {
        return Err((x, scale, shift, residual));
    };
    let [_, c, h, w] = x.dims();
    drop(x);
    let (scale, shift) = (values(scale_t), values(shift_t));
    let mut out = own_contiguous(xt);
    let residual = residual_prim.flatten().map(|r| r.to_contiguous());
    let residual = residual.as_ref().map(|r| &r.storage::<f32>()[r.layout().start_offset()..]);
    let plane = h * w;
    let data = out.try_storage_mut::<f32>().expect("unique");
    data.par_chunks_mut(plane).enumerate().for_each(|(i, y)| {
        let (a, b) = (scale[i % c], shift[i % c]);
        match residual {
            Some(r) => simd::affine_residual((y, &r[i * plane..][..plane], a, b, relu)),
            None => simd::affine((y, a, b, relu)),
        }
    });
    Ok(tensor(out))
}

/// A contiguous tensor this code alone holds, starting at offset 0: `t` itself when it is one.
fn own_contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_unique() && t.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0) {
        t
    } else {
        let shape = t.layout().shape().clone();
        FlexTensor::from_data(TensorData::new(values(t), shape))
    }
}

/// Head widths up to this use the direct loops; wider heads use gemm for both products.
const SMALL_HEAD: usize = 16;

pub fn attention((q, k, v, mask): AttentionArgs, num_heads: usize) -> Result<Tensor<3>, AttentionArgs> {
    let (Some(qt), Some(kt), Some(vt)) = (float32(&q), float32(&k), float32(&v)) else {
        return Err((q, k, v, mask));
    };
    drop((q, k, v));
    let heads = Heads::new(qt, kt, vt, num_heads);
    let (b, nq, c, d) = (heads.b, heads.nq, heads.c, heads.d);
    // Keys to ignore, one row of `nk` flags per batch element.
    let masked: Option<Vec<bool>> = mask.map(|m| m.into_data().try_to_vec::<bool>().expect("a bool mask"));
    let mut out = vec![0.0f32; b * nq * c];
    let out_ptr = SharedMut(out.as_mut_ptr());
    heads.for_each(masked.as_deref(), |head, bi, h, scratch| {
        // SAFETY: task (bi, h) writes only columns h*d..(h+1)*d of batch element bi's rows.
        let o = unsafe { out_ptr.at(bi * nq * c + h * d) };
        if d <= SMALL_HEAD { simd::attend_direct((head, scratch, o, c)) } else { head.with_gemm(o, c) }
    });
    Ok(from_vec(out, vec![b, nq, c]))
}

/// Queries `[B, Nq, C]`, keys and values `[B, Nk, C]` of one attention, read in place as
/// `num_heads` heads of `d = C / num_heads` columns (rows may be strided, columns contiguous).
struct Heads {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    /// Batch and row strides of q, k and v.
    strides: [[usize; 2]; 3],
    b: usize,
    nq: usize,
    nk: usize,
    c: usize,
    d: usize,
    num_heads: usize,
}

impl Heads {
    fn new(q: FlexTensor, k: FlexTensor, v: FlexTensor, num_heads: usize) -> Self {
        let (b, nq, c) = {
            let s = q.layout().shape();
            (s[0], s[1], s[2])
        };
        let nk = k.layout().shape()[1];
        let (q, [q_bs, q_rs, _]) = strided::<3>(q);
        let (k, [k_bs, k_rs, _]) = strided::<3>(k);
        let (v, [v_bs, v_rs, _]) = strided::<3>(v);
        let strides = [[q_bs, q_rs], [k_bs, k_rs], [v_bs, v_rs]];
        Self { q, k, v, strides, b, nq, nk, c, d: c / num_heads, num_heads }
    }

    /// `f(head, batch element, head index, scratch)` for every (batch element, head), one task
    /// each, in parallel; `masked` holds `nk` flags (true: ignore the key) per batch element.
    fn for_each(&self, masked: Option<&[bool]>, f: impl Fn(&Head<'_>, usize, usize, &mut Vec<f32>) + Sync) {
        fn slice(t: &FlexTensor) -> &[f32] {
            &t.storage::<f32>()[t.layout().start_offset()..]
        }
        let (qs, ks, vs) = (slice(&self.q), slice(&self.k), slice(&self.v));
        let [[q_bs, q_rs], [k_bs, k_rs], [v_bs, v_rs]] = self.strides;
        let (nk, d) = (self.nk, self.d);
        let scale = (d as f32).powf(-0.5);
        (0..self.b * self.num_heads).into_par_iter().with_min_len(8).for_each_init(Vec::new, |scratch, task| {
            let (bi, h) = (task / self.num_heads, task % self.num_heads);
            let head = Head {
                q: &qs[bi * q_bs + h * d..],
                k: &ks[bi * k_bs + h * d..],
                v: &vs[bi * v_bs + h * d..],
                q_rs,
                k_rs,
                v_rs,
                nq: self.nq,
                nk,
                d,
                scale,
                masked: masked.map(|m| &m[bi * nk..(bi + 1) * nk]),
            };
            f(&head, bi, h, scratch)
        });
    }
}

/// One (batch element, head): row `i` of Q starts at `q[i * q_rs]`, and so on.
pub(crate) struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    q_rs: usize,
    k_rs: usize,
    v_rs: usize,
    nq: usize,
    nk: usize,
    d: usize,
    scale: f32,
    masked: Option<&'a [bool]>,
}

impl Head<'_> {
    /// Narrow heads, computed transposed so that every inner loop runs along the queries:
    /// Sᵀ[j] = Σ_t K[j, t] (scale Qᵀ[t]), softmax down the columns of Sᵀ, Oᵀ[t] = Σ_j V[j, t] Pᵀ[j]
    /// (inlined into [`simd::attend_direct`]).
    #[inline(always)]
    fn direct(&self, scratch: &mut Vec<f32>, o: *mut f32, o_rs: usize) {
        let (nq, nk, d) = (self.nq, self.nk, self.d);
        // Qᵀ, Sᵀ, the column maxima and sums, Oᵀ: one buffer reused by a task's heads.
        scratch.clear();
        scratch.resize(d * nq + nk * nq + 2 * nq + d * nq, 0.0);
        let (qt, rest) = scratch.split_at_mut(d * nq);
        let (st, rest) = rest.split_at_mut(nk * nq);
        let (max, rest) = rest.split_at_mut(nq);
        let (sum, ot) = rest.split_at_mut(nq);
        max.fill(f32::NEG_INFINITY);
        for i in 0..nq {
            for t in 0..d {
                qt[t * nq + i] = self.q[i * self.q_rs + t] * self.scale;
            }
        }
        // Sᵀ, row j: key j against every query; ignored keys get -inf.
        for (j, row) in st.chunks_exact_mut(nq).enumerate() {
            if self.masked.is_some_and(|m| m[j]) {
                row.fill(f32::NEG_INFINITY);
                continue;
            }
            for (t, qt_row) in qt.chunks_exact(nq).enumerate() {
                let kjt = self.k[j * self.k_rs + t];
                for (s, &q) in row.iter_mut().zip(qt_row) {
                    *s += kjt * q;
                }
            }
        }
        for row in st.chunks_exact(nq) {
            for (m, &s) in max.iter_mut().zip(row) {
                *m = m.max(s);
            }
        }
        for row in st.chunks_exact_mut(nq) {
            row.iter_mut().zip(max.iter()).for_each(|(s, &m)| *s -= m);
        }
        simd::exp_in_place(st);
        for row in st.chunks_exact(nq) {
            sum.iter_mut().zip(row).for_each(|(z, &s)| *z += s);
        }
        for (j, p_row) in st.chunks_exact(nq).enumerate() {
            for (t, ot_row) in ot.chunks_exact_mut(nq).enumerate() {
                let vjt = self.v[j * self.v_rs + t];
                for (acc, &p) in ot_row.iter_mut().zip(p_row) {
                    *acc += vjt * p;
                }
            }
        }
        for (i, z) in sum.iter().enumerate() {
            let inv = 1.0 / z;
            for t in 0..d {
                // SAFETY: row i of this head's output block (see `attention`).
                unsafe { *o.add(i * o_rs + t) = ot[t * nq + i] * inv };
            }
        }
    }

    /// Wide heads: S = scale Q Kᵀ and O = softmax(S) V as two matrix products.
    fn with_gemm(&self, o: *mut f32, o_rs: usize) {
        let (nq, nk, d) = (self.nq, self.nk, self.d);
        let mut s = vec![0.0f32; nq * nk];
        // SAFETY: strides and sizes describe the slices and buffers given.
        unsafe {
            matmul(
                [nq, nk, d],
                view(s.as_mut_ptr(), nk, 1),
                false,
                view(self.q.as_ptr(), self.q_rs, 1),
                // Kᵀ: element (t, j) is K[j, t].
                view(self.k.as_ptr(), 1, self.k_rs),
                self.scale,
                gemm::Parallelism::None,
            );
        }
        for row in s.chunks_exact_mut(nk) {
            self.mask(row);
            simd::softmax_in_place(row);
        }
        unsafe {
            matmul(
                [nq, d, nk],
                view(o, o_rs, 1),
                false,
                view(s.as_ptr(), nk, 1),
                view(self.v.as_ptr(), self.v_rs, 1),
                1.0,
                gemm::Parallelism::None,
            );
        }
    }

    /// [`Head::backward`] for narrow heads by direct loops (inlined into
    /// [`simd::attend_backward_direct`]): keys and values transposed first, so that every inner
    /// loop runs along the keys.
    ///
    /// # Safety
    /// As [`Head::backward`].
    #[inline(always)]
    unsafe fn backward_direct(&self, do_: &[f32], do_rs: usize, outs: [(*mut f32, usize); 3], scratch: &mut Vec<f32>) {
        let (nq, nk, d) = (self.nq, self.nk, self.d);
        scratch.clear();
        scratch.resize(4 * d * nk + 2 * nq * nk, 0.0);
        let (kt, rest) = scratch.split_at_mut(d * nk);
        let (vt, rest) = rest.split_at_mut(d * nk);
        let (dkt, rest) = rest.split_at_mut(d * nk);
        let (dvt, rest) = rest.split_at_mut(d * nk);
        let (p, dp) = rest.split_at_mut(nq * nk);
        for j in 0..nk {
            for t in 0..d {
                kt[t * nk + j] = self.k[j * self.k_rs + t];
                vt[t * nk + j] = self.v[j * self.v_rs + t];
            }
        }
        // P = softmax(scale Q Kᵀ), dP = dO Vᵀ, row by row.
        for i in 0..nq {
            let (p_row, dp_row) = (&mut p[i * nk..][..nk], &mut dp[i * nk..][..nk]);
            for t in 0..d {
                let (qit, doit) = (self.q[i * self.q_rs + t] * self.scale, do_[i * do_rs + t]);
                for ((s, g), (&k, &v)) in
                    p_row.iter_mut().zip(dp_row.iter_mut()).zip(kt[t * nk..][..nk].iter().zip(&vt[t * nk..][..nk]))
                {
                    *s += qit * k;
                    *g += doit * v;
                }
            }
            self.mask(p_row);
            simd::softmax_row(p_row);
        }
        // dVᵀ[t] = Σ_i dO[i, t] P[i], then dS = P ⊙ (dP - Σ dP P) in dp.
        for i in 0..nq {
            let p_row = &p[i * nk..][..nk];
            for t in 0..d {
                let doit = do_[i * do_rs + t];
                dvt[t * nk..][..nk].iter_mut().zip(p_row).for_each(|(acc, &p)| *acc += doit * p);
            }
        }
        simd::softmax_grad_rows(p, dp, nk);
        // dKᵀ[t] = scale Σ_i Q[i, t] dS[i]; dQ[i, t] = scale dS[i] · Kᵀ[t].
        let [(dq, dq_rs), (dk, dk_rs), (dv, dv_rs)] = outs;
        for i in 0..nq {
            let ds_row = &dp[i * nk..][..nk];
            for t in 0..d {
                let qit = self.q[i * self.q_rs + t] * self.scale;
                dkt[t * nk..][..nk].iter_mut().zip(ds_row).for_each(|(acc, &g)| *acc += qit * g);
                // SAFETY: row i of this head's dQ block (see `attention_backward`).
                unsafe { *dq.add(i * dq_rs + t) = self.scale * simd::dot(ds_row, &kt[t * nk..][..nk]) };
            }
        }
        for j in 0..nk {
            for t in 0..d {
                // SAFETY: row j of this head's dK and dV blocks.
                unsafe {
                    *dk.add(j * dk_rs + t) = dkt[t * nk + j];
                    *dv.add(j * dv_rs + t) = dvt[t * nk + j];
                }
            }
        }
    }

    /// The gradients of this head's attention with respect to its queries, keys and values,
    /// from the output's `do_` (row stride `do_rs`), written to rows `dq_rs`, `dk_rs`, `dv_rs`
    /// apart. With `P = softmax(S)`, `S = scale Q Kᵀ` recomputed (not kept from the forward
    /// pass): `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - Σ_j P dP)` per row, `dQ = scale dS K`,
    /// `dK = scale dSᵀ Q`; six matrix products.
    ///
    /// # Safety
    /// The gradient pointers must have room for this head's `nq` (`dq`) and `nk` rows of `d`.
    unsafe fn backward(&self, do_: &[f32], do_rs: usize, [dq, dk, dv]: [(*mut f32, usize); 3], scratch: &mut Vec<f32>) {
        let (nq, nk, d) = (self.nq, self.nk, self.d);
        scratch.clear();
        scratch.resize(2 * nq * nk, 0.0);
        let (p, dp) = scratch.split_at_mut(nq * nk);
        let none = gemm::Parallelism::None;
        // SAFETY (every product): the views describe this head's slices, the scratch buffers
        // and the caller's gradient rows, which overlap none of the others.
        unsafe {
            matmul(
                [nq, nk, d],
                view(p.as_mut_ptr(), nk, 1),
                false,
                view(self.q.as_ptr(), self.q_rs, 1),
                view(self.k.as_ptr(), 1, self.k_rs),
                self.scale,
                none,
            );
        }
        for row in p.chunks_exact_mut(nk) {
            self.mask(row);
            simd::softmax_in_place(row);
        }
        let do_view = view(do_.as_ptr(), do_rs, 1);
        unsafe {
            matmul([nk, d, nq], view(dv.0, dv.1, 1), false, view(p.as_ptr(), 1, nk), do_view, 1.0, none);
            matmul(
                [nq, nk, d],
                view(dp.as_mut_ptr(), nk, 1),
                false,
                do_view,
                view(self.v.as_ptr(), 1, self.v_rs),
                1.0,
                none,
            );
        }
        simd::softmax_grad_in_place((p, dp, nk));
        unsafe {
            matmul(
                [nq, d, nk],
                view(dq.0, dq.1, 1),
                false,
                view(dp.as_ptr(), nk, 1),
                view(self.k.as_ptr(), self.k_rs, 1),
                self.scale,
                none,
            );
            matmul(
                [nk, d, nq],
                view(dk.0, dk.1, 1),
                false,
                view(dp.as_ptr(), 1, nk),
                view(self.q.as_ptr(), self.q_rs, 1),
                self.scale,
                none,
            );
        }
    }

    /// Scores of ignored keys to -inf.
    #[inline(always)]
    fn mask(&self, row: &mut [f32]) {
        if let Some(masked) = self.masked {
            for (x, &m) in row.iter_mut().zip(masked) {
                if m {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Whether the zoo's own kernels may use AVX-512: not when `ZOO_ISA=avx2` (see
/// [`super::isa_from_env`]), read once.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| super::isa_from_env() != Ok(super::Isa::Avx2))
}

/// Element-wise loops compiled for AVX-512 and AVX2 (chosen at run time) and for the baseline.
mod simd {
    /// Whether the loops run their AVX-512 versions: the CPU has AVX-512 and FMA, and
    /// `ZOO_ISA=avx2` does not hold them back.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn avx512_runs() -> bool {
        super::avx512_allowed() && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }

    /// Whether the CPU has AVX2 and FMA, for the loops' AVX2 versions.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn avx2_runs() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    macro_rules! multiversion {
        ($(#[$doc:meta])* fn $name:ident($arg:ident: $ty:ty) $body:block) => {
            $(#[$doc])*
            pub fn $name($arg: $ty) {
                #[inline(always)]
                fn generic($arg: $ty) $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx512vl,fma")]
                    unsafe fn avx512($arg: $ty) { generic($arg) }
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($arg: $ty) { generic($arg) }
                    if avx512_runs() {
                        // SAFETY: the CPU has the features the function was compiled for.
                        return unsafe { avx512($arg) };
                    }
                    if avx2_runs() {
                        return unsafe { avx2($arg) };
                    }
                }
                generic($arg)
            }
        };
    }

    /// erf by the odd/even rational approximation also used by Eigen and XLA (float32 accuracy
    /// on [-4, 4]), exactly ±1 from |x| = 3.92 on, where erf rounds to ±1 in float32.
    /// Branch-free, so it vectorises.
    #[inline(always)]
    fn erf(x: f32) -> f32 {
        let saturated = x.abs() >= 3.92;
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = -2.726_142_3e-10f32;
        for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906e-4, -2.954_6e-3, -1.609_603_3e-2] {
            p = p.mul_add(x2, c);
        }
        let mut q = -1.456_607_2e-5f32;
        for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
            q = q.mul_add(x2, c);
        }
        if saturated { x.signum() } else { x * p / q }
    }

    /// The Chebyshev fit of Numerical Recipes' `erfcc`, `P(t) = Σ c_k t^k` for k = 0..9, as
    /// (c_2j, c_2j+1) pairs for Estrin's scheme.
    pub(super) const ERFC_PAIRS: [(f32, f32); 5] = [
        (-1.265_512_2, 1.000_023_7),
        (0.374_091_96, 0.096_784_18),
        (-0.186_288_06, 0.278_868_07),
        (-1.135_204, 1.488_515_9),
        (-0.822_152_23, 0.170_872_77),
    ];
    /// Cephes' polynomial for e^r on |r| <= ln(2) / 2, highest degree first, Horner's order.
    pub(super) const EXP_POLY: [f32; 6] =
        [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
    /// ln 2 in two parts (Cody and Waite), so that `x - n ln 2` is exact for the n of exp's range.
    pub(super) const LN_2_PARTS: (f32, f32) = (-0.693_359_4, 2.121_944_4e-4);

    /// erfc(a) for a >= 0 by the Chebyshev fit of Numerical Recipes' `erfcc` (fractional error
    /// below 1.2e-7 everywhere): `t exp(-a^2 + P(t))` with `t = 1 / (1 + a / 2)`. P goes by
    /// Estrin's scheme (pairs of terms, then pairs of pairs by t², t⁴, t⁸), not Horner's: its
    /// chain of dependent operations is a third as long, which matters where a core's reorder
    /// window holds little more than one element's work (a Zen 1 splits each 256-bit operation
    /// in two): GELU 5.7 -> 4.2 ns per element there. (exp's shorter polynomial, which softmax
    /// runs at full throughput, stays with Horner's, which has fewer operations.)
    #[inline(always)]
    fn erfc_positive(a: f32) -> f32 {
        let t = 1.0 / (1.0 + 0.5 * a);
        let (t2, c) = (t * t, |k: usize| ERFC_PAIRS[k].1.mul_add(t, ERFC_PAIRS[k].0));
        let t4 = t2 * t2;
        let low = c(1).mul_add(t2, c(0));
        let middle = c(3).mul_add(t2, c(2));
        let p = c(4).mul_add(t4 * t4, middle.mul_add(t4, low));
        t * exp((-a).mul_add(a, p))
    }

    /// e^x with Cephes' range reduction and polynomial (float32 accuracy); 0 below -87.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        let xc = x.clamp(-87.0, 88.0);
        // n from a NaN-free copy (`max` drops a NaN), so that its conversion below is defined;
        // a NaN x still comes out NaN through r.
        let n = xc.max(-87.0).mul_add(core::f32::consts::LOG2_E, 0.5).floor();
        let r = n.mul_add(LN_2_PARTS.1, n.mul_add(LN_2_PARTS.0, xc));
        let y = EXP_POLY[1..].iter().fold(EXP_POLY[0], |y, &c| y.mul_add(r, c));
        let y = (y * r).mul_add(r, r + 1.0);
        // n is an integer in [-125, 127], so the unchecked conversion is exact (the checked
        // `as` saturates, which stops the loops around this from vectorising).
        // SAFETY: n is finite and in range of i32.
        let n = unsafe { n.to_int_unchecked::<i32>() };
        let scaled = y * f32::from_bits(((n + 127) as u32) << 23);
        if x < -87.0 { 0.0 } else { scaled }
    }

    /// Whether [`super::avx2_math`] runs here: where the loops above run their AVX2 versions.
    /// (On AVX-512 CPUs the compiled loops of twice the width stay.)
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn avx2_math() -> bool {
        !avx512_runs() && avx2_runs()
    }

    /// `x <- e^x` ([`exp`]), by [`super::avx2_math`] where it runs.
    #[inline(always)]
    pub(super) fn exp_in_place(xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2_math() holds only where the CPU has AVX2 and FMA.
        let xs = if avx2_math() { unsafe { super::avx2_math::exp_blocks(xs) } } else { xs };
        xs.iter_mut().for_each(|x| *x = exp(*x));
    }

    /// `x <- x Φ(x)` with Φ by erf, by [`super::avx2_math`] where it runs.
    pub fn gelu_in_place(xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2_math() holds only where the CPU has AVX2 and FMA.
        let xs = if avx2_math() { unsafe { super::avx2_math::gelu_blocks(xs) } } else { xs };
        gelu_elements(xs)
    }

    multiversion! {
        /// [`gelu_in_place`] element by element.
        fn gelu_elements(xs: &mut [f32]) {
            for x in xs.iter_mut() {
                let z = *x * core::f32::consts::FRAC_1_SQRT_2;
                // 1 + erf(z) = erfc(-z), from one erfc of |z| on both sides: below 0 it is that
                // erfc itself (no cancellation where erf is near -1), above it is 2 - erfc(|z|),
                // whose error is erfc's relative error (1.2e-7) times a value below 1. One
                // branch-free path, where 1 + erf(z) would need erf for z > 0 and erfc below.
                let e = erfc_positive(z.abs());
                let one_plus_erf = if z < 0.0 { e } else { 2.0 - e };
                *x = 0.5 * *x * one_plus_erf;
            }
        }
    }

    multiversion! {
        /// `dx <- dy (Φ(x) + x φ(x))`, the derivative of `x Φ(x)`, `φ(x) = exp(-x²/2) / √(2π)`,
        /// with `Φ(x) = (1 + erf(x / √2)) / 2` as PyTorch's GELU backward computes it (where the
        /// sum cancels, below x = -√2, Φ and x φ are both under 0.08 and their float32 error
        /// under 1e-7 absolute).
        fn gelu_grad(args: (&[f32], &[f32], &mut [f32])) {
            let (x, dy, dx) = args;
            const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                let density = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
                let cdf = 0.5 * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2));
                *dx = dy * (cdf + x * density);
            }
        }
    }

    multiversion! {
        /// Each row of `n` of `rows <- softmax(scale rows)`.
        fn softmax_scaled(args: (&mut [f32], usize, f32)) {
            let (rows, n, scale) = args;
            for row in rows.chunks_exact_mut(n) {
                row.iter_mut().for_each(|x| *x *= scale);
                softmax_row(row);
            }
        }
    }

    /// `Σ a b` in sixteen partial sums, so that it vectorises.
    #[inline(always)]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut sums = [0.0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (ca, cb) in ca.zip(cb) {
            for ((s, x), y) in sums.iter_mut().zip(ca).zip(cb) {
                *s += x * y;
            }
        }
        sums.iter().sum::<f32>() + tail
    }

    /// `Σ a` in sixteen partial sums.
    #[inline(always)]
    fn sum(a: &[f32]) -> f32 {
        let mut sums = [0.0f32; 16];
        let chunks = a.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().sum();
        for chunk in chunks {
            sums.iter_mut().zip(chunk).for_each(|(s, x)| *s += x);
        }
        sums.iter().sum::<f32>() + tail
    }

    multiversion! {
        /// Each row of `n` of `dx <- scale y (dy - Σ dy y)`.
        fn softmax_grad(args: (&[f32], &[f32], &mut [f32], usize, f32)) {
            let (y, dy, dx, n, scale) = args;
            for ((y, dy), dx) in y.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
                let inner = dot(y, dy);
                for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = scale * y * (dy - inner);
                }
            }
        }
    }

    /// Each row of `n` of `dp <- p (dp - Σ dp p)`.
    #[inline(always)]
    pub(super) fn softmax_grad_rows(p: &[f32], dp: &mut [f32], n: usize) {
        for (p, dp) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
            let inner = dot(p, dp);
            dp.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - inner));
        }
    }

    multiversion! {
        /// [`softmax_grad_rows`] on its own.
        fn softmax_grad_in_place(args: (&[f32], &mut [f32], usize)) {
            let (p, dp, n) = args;
            softmax_grad_rows(p, dp, n)
        }
    }

    /// [`attend_backward_direct`]'s head, output gradient, its row stride, the gradients'
    /// pointers and row strides, and the scratch buffer.
    type BackwardArgs<'a> = (&'a super::Head<'a>, &'a [f32], usize, [(*mut f32, usize); 3], &'a mut Vec<f32>);

    multiversion! {
        /// One narrow head's backward pass, `Head::backward_direct` compiled for the vector units.
        fn attend_backward_direct(args: BackwardArgs<'_>) {
            let (head, do_, do_rs, outs, scratch) = args;
            // SAFETY: as the caller promises for `Head::backward_direct`.
            unsafe { head.backward_direct(do_, do_rs, outs, scratch) }
        }
    }

    /// A row's mean and `(var + epsilon)^-1/2`, the variance from the centred values (two
    /// passes over a row that is in cache).
    #[inline(always)]
    fn moments(x: &[f32], epsilon: f32) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = sum(x) / n;
        let mut sums = [0.0f32; 16];
        let chunks = x.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for chunk in chunks {
            sums.iter_mut().zip(chunk).for_each(|(s, v)| *s += (v - mean) * (v - mean));
        }
        let var = (sums.iter().sum::<f32>() + tail) / n;
        (mean, 1.0 / (var + epsilon).sqrt())
    }

    multiversion! {
        /// Each row of `y <- (x - mean) r gamma + beta`.
        fn layer_norm_rows(args: (&[f32], &mut [f32], &[f32], &[f32], f32)) {
            let (x, y, gamma, beta, epsilon) = args;
            let d = gamma.len();
            for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                let (mean, r) = moments(x, epsilon);
                for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                    *y = (x - mean) * r * g + b;
                }
            }
        }
    }

    /// `x`, `dy`, gamma, `dx`, the sums and epsilon of [`layer_norm_grad`].
    type LayerNormGradArgs<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a mut [f32], &'a mut [f32], f32);

    multiversion! {
        /// Each row's `dx` (unless `dx` is empty) of layer norm's backward pass, adding
        /// `dy x̂` to `sums[..d]` and `dy` to `sums[d..]`.
        fn layer_norm_grad(args: LayerNormGradArgs<'_>) {
            let (x, dy, gamma, dx, sums, epsilon) = args;
            let d = gamma.len();
            let (dgamma, dbeta) = sums.split_at_mut(d);
            let mut g = vec![0.0f32; d];
            for (row, (x, dy)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).enumerate() {
                let (mean, r) = moments(x, epsilon);
                let mut g_xhat = 0.0f32;
                for (((g, &dy), &gamma), (&x, dgamma)) in
                    g.iter_mut().zip(dy).zip(gamma).zip(x.iter().zip(dgamma.iter_mut()))
                {
                    let xhat = (x - mean) * r;
                    *g = dy * gamma;
                    g_xhat += *g * xhat;
                    *dgamma += dy * xhat;
                }
                dbeta.iter_mut().zip(dy).for_each(|(s, &dy)| *s += dy);
                if dx.is_empty() {
                    continue;
                }
                let (mean_g, mean_g_xhat) = (sum(&g) / d as f32, g_xhat / d as f32);
                let dx = &mut dx[row * d..][..d];
                for ((dx, &g), &x) in dx.iter_mut().zip(&g).zip(x) {
                    *dx = r * (g - mean_g - (x - mean) * r * mean_g_xhat);
                }
            }
        }
    }

    /// The scalars of one AdamW step ([`super::kernels::adamw`]).
    pub struct AdamW {
        pub beta_1: f32,
        pub beta_2: f32,
        pub correction_1: f32,
        pub correction_2: f32,
        pub epsilon: f32,
        pub decay: f32,
        pub lr: f32,
    }

    /// The old parameter, gradient and moments (none at the first step), and the new
    /// parameter and moments.
    type AdamWSlices<'a> = (&'a [f32], &'a [f32], Option<(&'a [f32], &'a [f32])>, [&'a mut [f32]; 3], &'a AdamW);

    multiversion! {
        /// One AdamW step, element-wise, with Burn's operations in Burn's order.
        fn adamw(args: AdamWSlices<'_>) {
            let (p, g, old, [p_out, m_out, v_out], s) = args;
            for i in 0..p.len() {
                let g = g[i];
                let (m, v) = match old {
                    Some((m, v)) => (m[i] * s.beta_1 + g * (1.0 - s.beta_1), v[i] * s.beta_2 + g * g * (1.0 - s.beta_2)),
                    None => (g * (1.0 - s.beta_1), g * g * (1.0 - s.beta_2)),
                };
                let delta = (m / s.correction_1) / ((v / s.correction_2).sqrt() + s.epsilon);
                p_out[i] = p[i] * s.decay - delta * s.lr;
                m_out[i] = m;
                v_out[i] = v;
            }
        }
    }

    multiversion! {
        /// `g <- 0` where `y <= 0`.
        fn relu_mask(args: (&mut [f32], &[f32])) {
            let (g, y) = args;
            g.iter_mut().zip(y).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 });
        }
    }

    multiversion! {
        /// `y <- relu?(y a + b)`.
        fn affine(args: (&mut [f32], f32, f32, bool)) {
            let (y, a, b, relu) = args;
            if relu {
                y.iter_mut().for_each(|v| *v = (*v * a + b).max(0.0));
            } else {
                y.iter_mut().for_each(|v| *v = *v * a + b);
            }
        }
    }

    multiversion! {
        /// `y <- relu?(y a + b + r)`.
        fn affine_residual(args: (&mut [f32], &[f32], f32, f32, bool)) {
            let (y, r, a, b, relu) = args;
            if relu {
                y.iter_mut().zip(r).for_each(|(v, &r)| *v = (*v * a + b + r).max(0.0));
            } else {
                y.iter_mut().zip(r).for_each(|(v, &r)| *v = *v * a + b + r);
            }
        }
    }

    multiversion! {
        /// [`softmax_row`] on its own.
        fn softmax_in_place(row: &mut [f32]) {
            softmax_row(row)
        }
    }

    multiversion! {
        /// One narrow attention head, `Head::direct` compiled for the vector units.
        fn attend_direct(args: (&super::Head<'_>, &mut Vec<f32>, *mut f32, usize)) {
            let (head, scratch, o, o_rs) = args;
            head.direct(scratch, o, o_rs)
        }
    }

    /// A numerically stable softmax over the row; all -inf gives NaN, as PyTorch does.
    #[inline(always)]
    pub(super) fn softmax_row(row: &mut [f32]) {
        // Sixteen partial maxima and sums, so that both vectorise (the same maximum as one
        // fold: `max` is exact and order-free).
        let mut maxima = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for chunk in &mut chunks {
            for (m, &x) in maxima.iter_mut().zip(chunk) {
                *m = m.max(x);
            }
        }
        let max = chunks.remainder().iter().chain(&maxima).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        row.iter_mut().for_each(|x| *x -= max);
        exp_in_place(row);
        let inv = 1.0 / sum(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn erf_and_exp_are_float32_accurate() {
            let mut worst = (0.0f64, 0.0f64);
            for i in -20_000..=20_000 {
                let x = i as f32 * 5e-4;
                let erf_err = (super::erf(x) as f64 - libm::erf(x as f64)).abs();
                worst.0 = worst.0.max(erf_err);
                let y = x * 8.0;
                let exp_err = ((super::exp(y) as f64 - (y as f64).exp()) / (y as f64).exp()).abs();
                worst.1 = worst.1.max(exp_err);
            }
            assert!(worst.0 < 5e-7, "erf max abs error {}", worst.0);
            assert!(worst.1 < 5e-7, "exp max rel error {}", worst.1);
            assert_eq!(super::exp(-100.0), 0.0);
            assert!(super::exp(f32::NAN).is_nan() && super::erf(f32::NAN).is_nan());
        }

        /// The AVX2 blocks give the element-by-element loops' bits, special values included.
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn avx2_blocks_match_elements() {
            if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
                eprintln!("no AVX2 and FMA: the blocks do not run on this CPU");
                return;
            }
            let mut xs: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 4e-4).collect();
            xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40, -1e-40, 1e30, -1e30, -87.0, -130.0]);
            xs.extend((0..22).map(|i| -(i as f32) * 7.3));
            assert_eq!(xs.len() % 32, 0, "whole blocks only");
            let mut blocks = xs.clone();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let rest = unsafe { super::super::avx2_math::gelu_blocks(&mut blocks) };
            assert!(rest.is_empty());
            let mut elements = xs.clone();
            super::gelu_elements(&mut elements);
            for ((x, b), e) in xs.iter().zip(&blocks).zip(&elements) {
                assert_eq!(b.to_bits(), e.to_bits(), "gelu({x}): blocks {b}, elements {e}");
            }
            let xs: Vec<f32> = xs.iter().map(|x| x * 25.0).collect();
            let mut blocks = xs.clone();
            // SAFETY: as above.
            let rest = unsafe { super::super::avx2_math::exp_blocks(&mut blocks) };
            assert!(rest.is_empty());
            for (x, b) in xs.iter().zip(&blocks) {
                let e = super::exp(*x);
                assert_eq!(b.to_bits(), e.to_bits(), "exp({x}): blocks {b}, elements {e}");
            }
        }

        /// GELU against `x Φ(x)` in float64 over [-12, 12] and in the far tails.
        #[test]
        fn gelu_is_float32_accurate() {
            let mut xs: Vec<f32> = (-24_000..=24_000).map(|i| i as f32 * 5e-4).collect();
            xs.extend([-100.0, -30.0, 30.0, 100.0]);
            let mut ys = xs.clone();
            super::gelu_in_place(&mut ys);
            let mut nan = [f32::NAN; 40];
            super::gelu_in_place(&mut nan);
            assert!(nan.iter().all(|y| y.is_nan()), "gelu(NaN) = {nan:?}");
            for (&x, &y) in xs.iter().zip(&ys) {
                let x64 = x as f64;
                let want = 0.5 * x64 * libm::erfc(-x64 / std::f64::consts::SQRT_2);
                // Below 0, e^(-x²/2 + P) inherits float32's rounding of its exponent (half an
                // ulp of a value near x²/2): 1e-6 relative at x = -3, on values under 5e-3.
                let err = (y as f64 - want).abs();
                assert!(err <= 1.5e-6 * want.abs() + 1e-9, "gelu({x}) = {y}, want {want}");
            }
        }
    }
}
