//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering algorithm
//! F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 2x2 tile of the output is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4x4 input patch `d` and
//! each 3x3 filter `g`. Summed over the input channels, the element-wise product becomes 16
//! matrix products `M_ξ = U_ξ V_ξ`, one per element ξ of the 4x4 transformed tile: `U_ξ` is
//! `[C_out, C_in]` (the transformed filters), `V_ξ` is `[C_in, tiles]` (the transformed patches).
//! That is 16 multiply-adds per tile and pair of channels where direct convolution takes 36,
//! 2.25x fewer; the transforms add and subtract (and halve, in `G`), so the result differs from
//! direct convolution's by rounding alone.
//!
//! In one dimension, for inputs `d0..d3` and a filter `g0..g2` (outputs `y0 = d0 g0 + d1 g1 +
//! d2 g2`, `y1 = d1 g0 + d2 g1 + d3 g2`):
//! - `Bᵀ d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)`
//! - `G g = (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)`
//! - `y = Aᵀ m = (m0 + m1 + m2, m1 - m2 - m3)` for `m = (G g) ⊙ (Bᵀ d)`
//!
//! and in two, each transform runs along the rows, then along the columns.
//!
//! The work goes in blocks of tiles (of one image) sized so that a block's transformed patches
//! and products stay in cache; a task transforms its block's patches, runs the 16 products on its
//! thread against filters transformed and packed once per call, and writes its tiles' outputs.

use super::*;

/// Tiles transformed side by side, one per vector lane (8 with AVX2).
const LANES: usize = 8;
/// Elements of a transformed tile.
const XI: usize = 16;

/// Whether the models' 3x3 convolutions take [`conv3x3`]: where the matrix products are the
/// zoo's own kernel (x86-64 with AVX2 and without AVX-512, or `ZOO_ISA=avx2`), unless
/// `ZOO_WINOGRAD=0`. Elsewhere (the gemm crate's AVX-512 or NEON kernels) it was not measured,
/// and [`super::conv_taps`] runs.
pub fn applies() -> bool {
    static APPLIES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIES.get_or_init(|| own_matmul() && super::super::winograd_from_env() != Ok(false))
}

/// Whether a convolution of this stride, kernel size and padding goes by [`conv3x3`]: 3x3,
/// stride 1, padding 1, where it [`applies`]. The forward pass and training's input gradient
/// ([`super::kernels::conv2d_backward`]) both ask this.
pub fn takes(stride: [usize; 2], kernel: [usize; 2], padding: [usize; 2]) -> bool {
    (stride, kernel, padding) == ([1, 1], [3, 3], [1, 1]) && applies()
}

/// Whether this CPU runs [`conv3x3`]: on x86-64, one with AVX2 and FMA (its transforms are
/// compiled for them); any other.
pub fn runs_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    true
}

/// A 3x3 convolution with stride 1 and padding 1 (one group, no dilation) of float32 flex
/// tensors outside autodiff, by F(2x2, 3x3), on a CPU where it [`runs_here`]; the arguments back
/// otherwise.
pub fn conv3x3(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Result<Tensor<4>, Tensor<4>> {
    if x.dims()[1..].contains(&0) || !runs_here() {
        // No tiles or no channels (Burn's convolution), or a CPU without AVX2.
        return Err(x);
    }
    let operands = ConvOperands::new(x, &weight, bias.as_ref())?;
    let ([b, ci, h, w], co) = (operands.x_dims, operands.weight_dims[0]);
    let (xs, ws, bias) = (operands.input(), operands.weights(), &operands.bias);

    let u = transform_filters(ws, co, ci);
    // SAFETY: U_ξ is `[co, ci]` row-major in `u`, which outlives `filters`.
    let filters: Vec<SharedLhs> =
        (0..XI).map(|xi| unsafe { SharedLhs::new(view(u[xi * co * ci..].as_ptr(), ci, 1), [co, ci]) }).collect();

    let tiles = Tiles { h, w, th: h.div_ceil(2), tw: w.div_ceil(2) };
    let count = tiles.th * tiles.tw;
    // Blocks whose transformed patches and products (16 (ci + co) floats a tile) fill about two
    // L2 caches, at least 128 tiles (so that the products are not too narrow: ResNet's last
    // stage, 512 channels, ran faster in two blocks of 111 tiles than in four of up to 64), and
    // at least one per thread.
    let target = (2 * CACHE_FLOATS / (XI * (ci + co))).max(128);
    let blocks = count.div_ceil(target).max(rayon::current_num_threads().min(count.div_ceil(16)));
    let block = count.div_ceil(blocks).next_multiple_of(16).min(count);
    let blocks = count.div_ceil(block);

    // Every output element is written by the output transform of its tile.
    let mut out = unwritten(b * co * h * w);
    let out_ptr = SharedMut(out.as_mut_ptr().cast());
    (0..b * blocks).into_par_iter().for_each_init(Scratch::default, |scratch, task| {
        let (i, t0) = (task / blocks, (task % blocks) * block);
        let n = block.min(count - t0);
        // Rows of V and M padded so that every tile's transform reads and writes whole vectors.
        let ld = n + LANES;
        let image = &xs[i * ci * h * w..][..ci * h * w];
        scratch.v.resize(XI * ci * ld, 0.0);
        scratch.m.resize(XI * co * ld, 0.0);
        scratch.rows.resize(8 * tiles.split_len(), 0.0);
        // SAFETY: on x86-64 the CPU has AVX2 and FMA (`runs_here`); `v` holds 16 x ci x ld
        // floats, with ld >= n + LANES.
        unsafe { tiles.transform_input(image, ci, t0..t0 + n, &mut scratch.v, ld, &mut scratch.rows) };
        for (xi, u_xi) in filters.iter().enumerate() {
            // SAFETY: M_ξ (`[co, n]`) and V_ξ (`[ci, n]`), rows ld apart, lie inside this
            // task's scratch.
            unsafe {
                let dst = view(scratch.m.as_mut_ptr().add(xi * co * ld), ld, 1);
                u_xi.matmul([co, n, ci], dst, false, view(scratch.v.as_ptr().add(xi * ci * ld), ld, 1));
            }
        }
        // SAFETY: as above; image i's `[co, h, w]` output lies inside `out`, and this task's
        // tiles are its alone.
        unsafe {
            let out_i = SharedMut(out_ptr.at(i * co * h * w));
            tiles.transform_output(&scratch.m, ld, co, t0..t0 + n, bias.as_deref(), out_i);
        }
    });
    // SAFETY: every tile of every image was written (above).
    Ok(from_vec(unsafe { written(out) }, vec![b, co, h, w]))
}

/// A task's buffers, reused across its blocks.
#[derive(Default)]
struct Scratch {
    /// The transformed patches `V`, `[16, ci, n]` (rows `n + LANES` apart).
    v: Vec<f32>,
    /// The products `M`, `[16, co, n]` (rows `n + LANES` apart).
    m: Vec<f32>,
    /// Four input rows, each split into its even and odd columns.
    rows: Vec<f32>,
}

/// `U = G g Gᵀ` of every filter, as `[16, co, ci]` (the filters `[co, ci, 3, 3]` in `ws`): one
/// task per output channel, its input channels LANES at a time.
fn transform_filters(ws: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = unwritten(XI * co * ci);
    let u_ptr = SharedMut(u.as_mut_ptr().cast());
    // Each task's 16 rows, with room for whole vectors past the last channel.
    let padded = ci.next_multiple_of(LANES);
    ws.par_chunks_exact(9 * ci).enumerate().for_each_init(
        || vec![0.0; XI * padded],
        |rows, (k, filters)| {
            // SAFETY: on x86-64 the CPU has AVX2 and FMA (`runs_here`).
            unsafe { transform_filter_row(filters, ci, padded, rows) };
            for xi in 0..XI {
                // SAFETY: row k of U_ξ, this task's alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(rows[xi * padded..].as_ptr(), u_ptr.at((xi * co + k) * ci), ci)
                };
            }
        },
    );
    // SAFETY: every row of every U_ξ was written (above).
    unsafe { written(u) }
}

/// The 16 rows `U_ξ[k, :]` (each `padded` floats apart in `rows`) of the `ci` filters
/// `[ci, 3, 3]` of one output channel `k`.
///
/// # Safety
/// On x86-64 the CPU must have AVX2 and FMA.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn transform_filter_row(filters: &[f32], ci: usize, padded: usize, rows: &mut [f32]) {
    // `G (p, q, r)`, lane by lane.
    let g_times = |[p, q, r]: [Lanes; 3]| -> [Lanes; 4] {
        [p, std::array::from_fn(|l| 0.5 * (p[l] + q[l] + r[l])), std::array::from_fn(|l| 0.5 * (p[l] - q[l] + r[l])), r]
    };
    for c in (0..ci).step_by(LANES) {
        // Tap t of channels c..c + LANES (zeros past ci).
        let tap = |t: usize| -> Lanes { std::array::from_fn(|l| filters.get((c + l) * 9 + t).copied().unwrap_or(0.0)) };
        // Along the filter's rows (each column j of g), then along its columns.
        let columns: [[Lanes; 4]; 3] = std::array::from_fn(|j| g_times([tap(j), tap(3 + j), tap(6 + j)]));
        for a in 0..4 {
            let row = g_times([columns[0][a], columns[1][a], columns[2][a]]);
            for (bb, values) in row.into_iter().enumerate() {
                rows[(a * 4 + bb) * padded + c..][..LANES].copy_from_slice(&values);
            }
        }
    }
}

/// The tiling of one `h x w` plane into 2x2 output tiles, `th x tw` of them, numbered row by row.
#[derive(Clone, Copy)]
struct Tiles {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

type Lanes = [f32; LANES];

#[inline(always)]
fn load(s: &[f32]) -> Lanes {
    s[..LANES].try_into().expect("LANES floats")
}

#[inline(always)]
fn zip(a: Lanes, b: Lanes, f: impl Fn(f32, f32) -> f32) -> Lanes {
    std::array::from_fn(|l| f(a[l], b[l]))
}

/// Splits an input row into its columns `2 m - 1` (`even[m]`, column 0 being the padding) and
/// `2 m` (`odd[m]`), zeros past the row's end.
#[inline(always)]
fn split_columns(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let half = row.len() / 2;
    even[0] = 0.0;
    for ((pair, o), e) in row.chunks_exact(2).zip(&mut odd[..half]).zip(&mut even[1..=half]) {
        *o = pair[0];
        *e = pair[1];
    }
    let odd_end = row.len().div_ceil(2);
    if odd_end > half {
        odd[half] = row[row.len() - 1];
    }
    odd[odd_end..].fill(0.0);
    even[half + 1..].fill(0.0);
}

/// `Bᵀ (d0, d1, d2, d3)`, lane by lane.
#[inline(always)]
fn b_transposed([d0, d1, d2, d3]: [Lanes; 4]) -> [Lanes; 4] {
    [zip(d0, d2, |a, b| a - b), zip(d1, d2, |a, b| a + b), zip(d2, d1, |a, b| a - b), zip(d1, d3, |a, b| a - b)]
}

/// `Aᵀ (m0, m1, m2, m3)`, lane by lane.
#[inline(always)]
fn a_transposed([m0, m1, m2, m3]: [Lanes; 4]) -> [Lanes; 2] {
    [std::array::from_fn(|l| m0[l] + m1[l] + m2[l]), std::array::from_fn(|l| m1[l] - m2[l] - m3[l])]
}

impl Tiles {
    /// Floats of one half (even or odd columns) of a split input row: `tw + 1` columns, and
    /// room for a whole vector read from the last.
    fn split_len(&self) -> usize {
        self.tw + 1 + LANES
    }

    /// For each tile row that tiles `range` meet: the row, and its columns among them.
    fn rows(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
        (range.start / self.tw..range.end.div_ceil(self.tw)).map(move |ty| {
            let start = range.start.max(ty * self.tw) - ty * self.tw;
            let end = range.end.min((ty + 1) * self.tw) - ty * self.tw;
            (ty, start..end)
        })
    }

    /// `V = Bᵀ d B` of tiles `range` of `image` (`ci` planes of `h x w`) into `v` (`[16, ci, n]`,
    /// `n = range.len()`, rows `ld >= n + LANES` apart). Tile `(ty, tx)` reads input rows
    /// `2 ty - 1 ..= 2 ty + 2` and columns `2 tx - 1 ..= 2 tx + 2`, zeros outside the plane.
    /// Each input row is first split into its columns `2 m - 1` ("even", of the padded row) and
    /// `2 m` ("odd"), so that the four columns of tiles `tx..tx + LANES` are four unit-stride
    /// loads: `even[tx]`, `odd[tx]`, `even[tx + 1]`, `odd[tx + 1]`.
    ///
    /// # Safety
    /// On x86-64 the CPU must have AVX2 and FMA. `rows` holds at least `8 split_len()`
    /// floats, `v` `16 ci ld`.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_input(
        &self,
        image: &[f32],
        ci: usize,
        range: std::ops::Range<usize>,
        v: &mut [f32],
        ld: usize,
        rows: &mut [f32],
    ) {
        let Tiles { h, w, tw, .. } = *self;
        let (t0, stride) = (range.start, self.split_len());
        for c in 0..ci {
            let plane = &image[c * h * w..][..h * w];
            for (ty, columns) in self.rows(range.clone()) {
                for (i, split) in rows.chunks_exact_mut(2 * stride).take(4).enumerate() {
                    let (even, odd) = split.split_at_mut(stride);
                    match (2 * ty + i).checked_sub(1).filter(|&y| y < h) {
                        Some(y) => split_columns(&plane[y * w..][..w], even, odd),
                        None => {
                            even.fill(0.0);
                            odd.fill(0.0);
                        }
                    }
                }
                for tx in columns.step_by(LANES) {
                    let d: [[Lanes; 4]; 4] = std::array::from_fn(|i| {
                        let (even, odd) = (&rows[2 * i * stride..], &rows[(2 * i + 1) * stride..]);
                        b_transposed([load(&even[tx..]), load(&odd[tx..]), load(&even[tx + 1..]), load(&odd[tx + 1..])])
                    });
                    // d[i][b] is row i's transform; now along the rows, for each column b. All
                    // LANES are stored: those past the tile row land where later tiles (or the
                    // padding past the block's last) are written.
                    let at = ty * tw + tx - t0;
                    for bb in 0..4 {
                        let column = b_transposed(d.map(|row| row[bb]));
                        for (a, values) in column.into_iter().enumerate() {
                            let xi = a * 4 + bb;
                            v[(xi * ci + c) * ld + at..][..LANES].copy_from_slice(&values);
                        }
                    }
                }
            }
        }
    }

    /// `Y = Aᵀ M A` (plus the bias) of tiles `range` from `m` (`[16, co, n]`, rows `ld` apart) into `out` (`co`
    /// planes of `h x w`), dropping the outputs of the last tile row and column that fall past
    /// the plane when `h` or `w` is odd.
    ///
    /// # Safety
    /// On x86-64 the CPU must have AVX2 and FMA. `out` holds `co h w` floats, of which this call
    /// alone writes those of tiles `range`.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn transform_output(
        &self,
        m: &[f32],
        ld: usize,
        co: usize,
        range: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: SharedMut,
    ) {
        let Tiles { h, w, tw, .. } = *self;
        let t0 = range.start;
        // Lanes past the tile row read later tiles or the padding past the block's last, and
        // are dropped.
        let lanes_at = |xi: usize, k: usize, at: usize| load(&m[(xi * co + k) * ld + at..]);
        for k in 0..co {
            let shift = bias.map_or(0.0, |b| b[k]);
            for (ty, columns) in self.rows(range.clone()) {
                for tx in columns.clone().step_by(LANES) {
                    let at = ty * tw + tx - t0;
                    // Along the columns of M (for each of its columns b), then along the rows.
                    let r: [[Lanes; 2]; 4] =
                        std::array::from_fn(|bb| a_transposed(std::array::from_fn(|a| lanes_at(a * 4 + bb, k, at))));
                    let lanes = LANES.min(columns.end - tx);
                    for dy in 0..2 {
                        let y = 2 * ty + dy;
                        if y >= h {
                            break;
                        }
                        let [y0, y1] = a_transposed(r.map(|column| column[dy]));
                        let mut pairs = [0.0f32; 2 * LANES];
                        for l in 0..LANES {
                            pairs[2 * l] = y0[l] + shift;
                            pairs[2 * l + 1] = y1[l] + shift;
                        }
                        let x = 2 * tx;
                        let len = (2 * lanes).min(w - x);
                        // SAFETY: row y, columns x..x + len of plane k, inside `out`.
                        unsafe {
                            let dst = out.at((k * h + y) * w + x);
                            // A constant length (every tile but a row's last) is two vector
                            // stores instead of a call to memcpy.
                            if len == 2 * LANES {
                                std::ptr::copy_nonoverlapping(pairs.as_ptr(), dst, 2 * LANES);
                            } else {
                                std::ptr::copy_nonoverlapping(pairs.as_ptr(), dst, len);
                            }
                        }
                    }
                }
            }
        }
    }
}
