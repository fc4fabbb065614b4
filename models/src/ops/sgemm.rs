//! Single-precision matrix products for x86-64 CPUs with AVX2 and FMA, in the layout of
//! BLIS (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
//! Functionality", 2015), which is also OpenBLAS's and MKL's: the right operand is packed in
//! blocks of `KC` rows into panels `NR` columns wide that stay in the last-level cache, the left
//! one in blocks of up to `MC` rows into panels `MR` rows tall that stay in L2, and a 6 x 16
//! micro-kernel keeps its output tile in twelve AVX registers while it streams both panels
//! from L1. Each core takes a share of the output's columns (or rows, when there are more rows)
//! and packs what it needs itself, so that a call forks and joins once.

use rayon::prelude::*;
use std::cell::Cell;

/// Rows of the micro-kernel's output tile.
const MR: usize = 6;
/// Columns of the micro-kernel's output tile (two 8-float AVX registers).
const NR: usize = 16;
/// Depth of a packed block: an `MR x KC` and a `KC x NR` panel fit in L1 together.
const KC: usize = 256;
/// Rows of a packed left block (`MC x KC` floats, 144 KiB, stay in L2).
const MC: usize = 144;
/// Columns of a packed right block (`KC x NC` floats, 4 MiB, stay in L3).
const NC: usize = 4096;
/// Floats of a packed right block small enough to stay in L1 beside the left operand's rows
/// (16 KiB).
const NARROW_B: usize = 4096;
/// Rows of `a` up to which its block is packed whole (at most 234 KiB, in L2 beside `b`'s
/// panel) and `b` panel by panel.
const FEW_ROWS: usize = 234;

use super::flex::View as Mat;

/// Whether the zoo's matrix products use this kernel: on CPUs with AVX2 and FMA but without
/// AVX-512, and on any AVX2 CPU with `ZOO_ISA=avx2`; where AVX-512 may be used the gemm crate's
/// AVX-512 kernels run instead. Read once.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f") && super::flex::avx512_allowed();
        avx2 && !avx512
    })
}

thread_local! {
    /// Packing buffers, reused across calls (taken while in use, so a nested call on the same
    /// thread allocates its own).
    static PACK_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer from `slot`, of at least `len` floats.
fn with_buffer<R>(
    slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(Cell::take);
    if buf.len() < len {
        buf = vec![0.0; len];
    }
    let r = f(&mut buf[..len]);
    slot.with(|s| s.set(buf));
    r
}

/// `dst = scale * a b`, or `dst += scale * a b` with `accumulate`, for `a` `[m, k]`, `b` `[k, n]`
/// and `dst` `[m, n]` with unit column stride, on all of rayon's threads when `threaded`.
///
/// # Safety
/// The CPU must have AVX2 and FMA (as when [`enabled`]); the matrices must describe live buffers of
/// these shapes, and `dst` must not overlap the others.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat<*const f32>,
    b: Mat<*const f32>,
    scale: f32,
    threaded: bool,
) {
    unsafe { product([m, n, k], dst, dst_rs, accumulate, Left::View(a), b, scale, threaded) }
}

/// [`sgemm`] with a left operand packed before the call ([`PackedA`], `[m, k]`), on this thread.
///
/// # Safety
/// As [`sgemm`]'s.
pub unsafe fn sgemm_packed(n: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, a: &PackedA, b: Mat<*const f32>) {
    unsafe { product([a.m, n, a.k], dst, dst_rs, accumulate, Left::Packed(a), b, 1.0, false) }
}

/// A left operand packed once for many products (a convolution's weights, against each block
/// of its input): for each block of `KC` depths, all its panels of `MR` rows, as [`sgemm`]
/// packs a block of rows for itself.
pub struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// Packs the `[m, k]` matrix `a`, row panels spread over rayon's threads.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `a` must describe a live `[m, k]` matrix.
    pub unsafe fn new(a: Mat<*const f32>, [m, k]: [usize; 2]) -> Self {
        /// Row panels packed per task.
        const PANELS: usize = 16;
        let mp = m.next_multiple_of(MR);
        let mut data = vec![0.0; mp * k];
        for (block, packed) in data.chunks_mut(mp * KC).enumerate() {
            let (p0, kc) = (block * KC, KC.min(k - block * KC));
            packed.par_chunks_mut(PANELS * MR * kc).enumerate().for_each(|(g, panels)| {
                let i0 = g * PANELS * MR;
                // SAFETY: as the caller promises; `panels` holds the panels of rows i0..
                unsafe { pack_a(a, i0, p0, (m - i0).min(PANELS * MR), kc, panels) };
            });
        }
        PackedA { data, m, k }
    }

    /// The panels of rows from `i0` (a multiple of MR) at depths from `p0` (a multiple of KC).
    fn panels(&self, i0: usize, p0: usize) -> *const f32 {
        let kc = KC.min(self.k - p0);
        self.data[p0 * self.m.next_multiple_of(MR) + i0 * kc..].as_ptr()
    }
}

/// [`sgemm`] and [`sgemm_packed`].
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Left<'_>,
    b: Mat<*const f32>,
    scale: f32,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
            }
        }
        return;
    }
    let threads = if threaded { rayon::current_num_threads() } else { 1 };
    // Each thread takes a share of the columns (when there are fewer rows than columns) or of
    // the rows and packs what it needs of both operands itself: the operand it shares in full
    // is the smaller one, packed once per thread, and there is one fork and join per call.
    let split_columns = n >= m;
    let parts = threads.min(if split_columns { n.div_ceil(NR) } else { m.div_ceil(MR) });
    let product = Product { k, dst, dst_rs, accumulate, a, b, scale };
    let task = |t: usize| {
        let (rows, cols) = if split_columns { (0..m, share(t, parts, n, NR)) } else { (share(t, parts, m, MR), 0..n) };
        // SAFETY: tasks write disjoint tiles of `dst`; the rest as the caller promises.
        unsafe { product.block([rows, cols]) };
    };
    if parts > 1 {
        (0..parts).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Part `t` of `parts` of `0..len`, in whole units of `unit`.
fn share(t: usize, parts: usize, len: usize, unit: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(unit);
    (t * units / parts * unit).min(len)..((t + 1) * units / parts * unit).min(len)
}

/// Where a product reads its left operand.
#[derive(Clone, Copy)]
enum Left<'a> {
    /// In place, packed block by block as the product goes.
    View(Mat<*const f32>),
    /// Packed before.
    Packed(&'a PackedA),
}

/// The arguments of one [`sgemm`] call, shared by its tasks (which write disjoint tiles).
#[derive(Clone, Copy)]
struct Product<'a> {
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Left<'a>,
    b: Mat<*const f32>,
    scale: f32,
}

unsafe impl Send for Product<'_> {}
unsafe impl Sync for Product<'_> {}

impl Product<'_> {
    /// Runs `f` on the packed panels (`kc x MR` each, one after another) of rows `i0..i0 + mc`
    /// and depths `p0..p0 + kc` of `a`: packed now into this thread's buffer, or as packed before.
    unsafe fn with_packed_a<R>(
        &self,
        [i0, mc]: [usize; 2],
        [p0, kc]: [usize; 2],
        f: impl FnOnce(*const f32) -> R,
    ) -> R {
        match self.a {
            Left::View(a) => with_buffer(&PACK_A, mc.next_multiple_of(MR) * kc, |packed| {
                unsafe { pack_a(a, i0, p0, mc, kc, packed) };
                f(packed.as_ptr())
            }),
            Left::Packed(a) => f(a.panels(i0, p0)),
        }
    }

    /// The product's rows `rows` and columns `cols` of `dst`, on this thread.
    unsafe fn block(&self, [rows, cols]: [std::ops::Range<usize>; 2]) {
        let Product { k, dst, dst_rs, accumulate, a, b, scale } = *self;
        for j0 in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - j0);
            let panels = nc.div_ceil(NR);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let keep = accumulate || p0 > 0;
                // The micro-kernel on rows i0 + r (MR of them, of a block of mc) and column
                // panel q.
                let run = |a_panel: APanel, [i0, mc, r]: [usize; 3], q: usize, panel: &[f32]| {
                    let c = unsafe { dst.add((i0 + r) * dst_rs + j0 + q * NR) };
                    let tile = Tile { ptr: c, rs: dst_rs, rows: MR.min(mc - r), cols: NR.min(nc - q * NR) };
                    unsafe { kernel(kc, a_panel, panel.as_ptr(), tile, scale, keep) };
                };
                let pack_b_panel =
                    |q: usize, panel: &mut [f32]| unsafe { pack_b(b, p0, j0 + q * NR, kc, nc - q * NR, panel) };
                let narrow = matches!(a, Left::View(a) if a.cs == 1) && panels * NR * kc <= NARROW_B;
                if !narrow && rows.len() <= FEW_ROWS {
                    // Few rows (a ViT's tokens at batch 1): `a`'s block packed whole (in L2),
                    // each column panel of `b` packed just before its products (into L1), so
                    // that reading `b` from memory overlaps the products instead of preceding
                    // them, and each panel is read once.
                    let (i0, mc) = (rows.start, rows.len());
                    let with_packed_a = |f| unsafe { self.with_packed_a([i0, mc], [p0, kc], f) };
                    with_packed_a(|packed_a: *const f32| {
                        with_buffer(&PACK_B, NR * kc, |panel| {
                            let row_panels = mc.div_ceil(MR);
                            for q in 0..panels {
                                pack_b_panel(q, panel);
                                for (t, r) in (0..mc).step_by(MR).enumerate() {
                                    if q + 1 < panels {
                                        // The next panel's share of `b`, on its way to L1.
                                        let cols = j0 + (q + 1) * NR..(j0 + (q + 2) * NR).min(cols.end);
                                        let part = share(t, row_panels, kc, 1);
                                        let depths = p0 + part.start..p0 + part.end;
                                        unsafe { prefetch(b, depths, cols) };
                                    }
                                    run(APanel::Packed(unsafe { packed_a.add(r * kc) }), [i0, mc, r], q, panel);
                                }
                            }
                        });
                    });
                    continue;
                }
                with_buffer(&PACK_B, panels * NR * kc, |packed_b| {
                    for (q, panel) in packed_b.chunks_exact_mut(NR * kc).enumerate() {
                        pack_b_panel(q, panel);
                    }
                    for i0 in rows.clone().step_by(MC) {
                        let mc = MC.min(rows.end - i0);
                        if let (true, Left::View(a)) = (narrow, a) {
                            // A narrow `b` (TNT's pixel-level layers: 24 to 96 columns), whose
                            // packed block stays in L1: each MR rows of a row-major `a` are read
                            // once, in place, against every column panel in turn, where packing
                            // them would cost about as much as the products.
                            for r in (0..mc).step_by(MR) {
                                let rows = unsafe { a.ptr.offset((i0 + r) as isize * a.rs + p0 as isize) };
                                for (q, panel) in packed_b.chunks_exact(NR * kc).enumerate() {
                                    run(APanel::Rows(rows, a.rs), [i0, mc, r], q, panel);
                                }
                            }
                        } else {
                            // Column panel after column panel, each (in L1) against the packed
                            // block of `a` (in L2).
                            let with_packed_a = |f| unsafe { self.with_packed_a([i0, mc], [p0, kc], f) };
                            with_packed_a(|packed_a: *const f32| {
                                for (q, panel) in packed_b.chunks_exact(NR * kc).enumerate() {
                                    for r in (0..mc).step_by(MR) {
                                        let a_panel = APanel::Packed(unsafe { packed_a.add(r * kc) });
                                        run(a_panel, [i0, mc, r], q, panel);
                                    }
                                }
                            });
                        }
                    }
                });
            }
        }
    }
}

/// Fetches rows `depths` and columns `cols` of `b` into L1, a cache line at a time, where `b` has
/// a unit stride either way (any other layout is left to the hardware's prefetchers).
#[target_feature(enable = "avx2,fma")]
unsafe fn prefetch(b: Mat<*const f32>, depths: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
    use std::arch::x86_64::*;
    let at = |p: usize, j: usize| unsafe { b.ptr.offset(p as isize * b.rs + j as isize * b.cs) as *const i8 };
    if depths.is_empty() {
        return;
    }
    if b.cs == 1 {
        for p in depths {
            _mm_prefetch::<_MM_HINT_T0>(at(p, cols.start));
            _mm_prefetch::<_MM_HINT_T0>(at(p, cols.end - 1));
        }
    } else if b.rs == 1 {
        for j in cols {
            for p in depths.clone().step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(at(p, j));
            }
            _mm_prefetch::<_MM_HINT_T0>(at(depths.end - 1, j));
        }
    }
}

/// Packs rows `p0..p0 + kc` and columns `j0..j0 + cols` (at most NR) of `b` into `panel`
/// (`kc x NR`, row after row), zeros past `cols`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(b: Mat<*const f32>, p0: usize, j0: usize, kc: usize, cols: usize, panel: &mut [f32]) {
    let origin = unsafe { b.ptr.offset(p0 as isize * b.rs + j0 as isize * b.cs) };
    unsafe { pack_panel::<NR>(origin, [b.rs, b.cs], cols.min(NR), kc, panel) };
}

/// Packs rows `i0..i0 + mc` and columns `p0..p0 + kc` of `a` into panels of MR rows
/// (`kc x MR` each, column after column), zeros past row `mc`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(a: Mat<*const f32>, i0: usize, p0: usize, mc: usize, kc: usize, packed: &mut [f32]) {
    for (t, panel) in packed.chunks_exact_mut(MR * kc).enumerate() {
        let origin = unsafe { a.ptr.offset((i0 + t * MR) as isize * a.rs + p0 as isize * a.cs) };
        unsafe { pack_panel::<MR>(origin, [a.cs, a.rs], MR.min(mc - t * MR), kc, panel) };
    }
}

/// Packs `kc` depths of `lanes` (at most `W`) lanes into `panel` (`kc x W`, depth after depth),
/// zeros past `lanes`, where element `(p, l)` is at `origin + p * sp + l * sl`. Both operands'
/// panels: `a`'s lanes are its rows (`W = MR`), `b`'s its columns (`W = NR`).
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_panel<const W: usize>(
    origin: *const f32,
    [sp, sl]: [isize; 2],
    lanes: usize,
    kc: usize,
    panel: &mut [f32],
) {
    use std::arch::x86_64::*;
    let at = |p: usize, l: usize| unsafe { origin.offset(p as isize * sp + l as isize * sl) };
    if sl == 1 {
        // Lanes contiguous: one copy per depth.
        for (p, row) in panel.chunks_exact_mut(W).enumerate() {
            if lanes == W {
                // A fixed-size copy the compiler inlines (vector moves, no call).
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(at(p, 0), W) });
            } else {
                row[..lanes].copy_from_slice(unsafe { std::slice::from_raw_parts(at(p, 0), lanes) });
                row[lanes..].fill(0.0);
            }
        }
        return;
    }
    let mut p = 0;
    if sp == 1 {
        // Depths contiguous (a row-major `a`, a transposed `b`): eight depths of eight lanes at a
        // time, transposed in registers, lanes past `lanes` loaded as zeros. Each depth's eight
        // lanes are stored whole: in a panel `W = 6` wide the last two spill onto the next
        // depth's place, which is written after. Only a store that would spill past the panel's
        // end goes under a mask (masked stores are slow on AMD's cores).
        while p + 8 <= kc {
            for g in (0..W).step_by(8) {
                let depths = unsafe {
                    transpose8(std::array::from_fn(|l| {
                        if g + l < lanes { _mm256_loadu_ps(at(p, g + l)) } else { _mm256_setzero_ps() }
                    }))
                };
                let width = _mm256_set1_epi32((W - g).min(8) as i32);
                let mask = _mm256_cmpgt_epi32(width, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                for (d, depth) in depths.iter().enumerate() {
                    let to = (p + d) * W + g;
                    if to + 8 <= panel.len() {
                        unsafe { _mm256_storeu_ps(panel.as_mut_ptr().add(to), *depth) };
                    } else {
                        unsafe { _mm256_maskstore_ps(panel.as_mut_ptr().add(to), mask, *depth) };
                    }
                }
            }
            p += 8;
        }
    }
    for p in p..kc {
        for l in 0..W {
            panel[p * W + l] = if l < lanes { unsafe { *at(p, l) } } else { 0.0 };
        }
    }
}

/// The transpose of the 8 x 8 matrix whose rows are `rows`: element `d` of the result's
/// vector `r` is element `r` of `rows[d]`.
#[target_feature(enable = "avx2,fma")]
fn transpose8(rows: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped across.
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Where a micro-kernel writes: `rows x cols` (at most MR x NR) floats at `ptr`, rows `rs` apart.
struct Tile {
    ptr: *mut f32,
    rs: usize,
    rows: usize,
    cols: usize,
}

/// Where a micro-kernel reads its MR rows of the left operand.
#[derive(Clone, Copy)]
enum APanel {
    /// A packed `kc x MR` panel, depth after depth.
    Packed(*const f32),
    /// Rows of a row-major matrix in place, `rs` floats apart (either way, as the view's row
    /// stride); rows past the tile's are not read (the last one is read again instead).
    Rows(*const f32, isize),
}

/// `tile = scale * a b (+ tile with keep)` for the `MR x kc` left panel `a` and a `kc x NR`
/// packed panel `b`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(kc: usize, a: APanel, b: *const f32, tile: Tile, scale: f32, keep: bool) {
    use std::arch::x86_64::*;
    // The tile's rows are far apart in memory: fetch them while the products run.
    for r in 0..tile.rows {
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(tile.ptr.add(r * tile.rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(tile.ptr.add(r * tile.rs + NR - 1) as *const i8);
        }
    }
    let c = match a {
        APanel::Packed(a) => unsafe { accumulate(kc, |p, r| a.add(p * MR + r), true, b) },
        APanel::Rows(a, rs) => {
            let rows: [*const f32; MR] =
                std::array::from_fn(|r| unsafe { a.offset(r.min(tile.rows - 1) as isize * rs) });
            unsafe { accumulate(kc, |p, r| rows[r].add(p), false, b) }
        }
    };
    unsafe { store(c, tile, scale, keep) };
}

/// The MR x NR sums `Σ_p a(p, r) b[p]` in registers, `a(p, r)` the address of row r's depth p.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn accumulate(
    kc: usize,
    a: impl Fn(usize, usize) -> *const f32,
    prefetch_a: bool,
    b: *const f32,
) -> [[std::arch::x86_64::__m256; 2]; MR] {
    use std::arch::x86_64::*;
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    let step = |c: &mut [[__m256; 2]; MR], p: usize| unsafe {
        let (b0, b1) = (_mm256_loadu_ps(b.add(p * NR)), _mm256_loadu_ps(b.add(p * NR + 8)));
        for (r, acc) in c.iter_mut().enumerate() {
            let ar = _mm256_broadcast_ss(&*a(p, r));
            acc[0] = _mm256_fmadd_ps(ar, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(ar, b1, acc[1]);
        }
    };
    let mut p = 0;
    while p + 4 <= kc {
        if prefetch_a {
            _mm_prefetch::<_MM_HINT_T0>(a(p + 10, 4) as *const i8);
        }
        step(&mut c, p);
        step(&mut c, p + 1);
        step(&mut c, p + 2);
        step(&mut c, p + 3);
        p += 4;
    }
    while p < kc {
        step(&mut c, p);
        p += 1;
    }
    c
}

/// `tile = scale * c (+ tile with keep)`, whole 8-column halves by vector stores.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store(c: [[std::arch::x86_64::__m256; 2]; MR], tile: Tile, scale: f32, keep: bool) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(scale);
    for (r, acc) in c.iter().enumerate().take(tile.rows) {
        let row = unsafe { tile.ptr.add(r * tile.rs) };
        for (h, v) in acc.iter().enumerate() {
            let (out, v) = (unsafe { row.add(8 * h) }, _mm256_mul_ps(*v, s));
            if tile.cols >= 8 * (h + 1) {
                let v = if keep { _mm256_add_ps(v, unsafe { _mm256_loadu_ps(out) }) } else { v };
                unsafe { _mm256_storeu_ps(out, v) };
            } else if tile.cols > 8 * h {
                let mut buf = [0.0f32; 8];
                unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), v) };
                let out = unsafe { std::slice::from_raw_parts_mut(out, tile.cols - 8 * h) };
                for (o, v) in out.iter_mut().zip(buf) {
                    *o = if keep { *o + v } else { v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout of both operands (row-major or transposed views), with and without
    /// accumulation, on one thread, on all, and with `a` packed before the call, against a
    /// float64 product; the shapes cover partial tiles, several depth blocks, row blocks and
    /// column blocks.
    #[test]
    fn matches_a_float64_product() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        for [m, k, n] in [
            [1, 1, 1],
            [7, 3, 17],
            [13, 300, 35],
            [197, 513, 47],
            [40, 64, 4200],
            [5, 700, 33],
            [50, 96, 24],
            [300, 600, 70],
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i * 7 % 13) as f32 * 0.1 - 0.6).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i * 5 % 11) as f32 * 0.1 - 0.5).collect();
            let init: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
            for a_transposed in [false, true] {
                for b_transposed in [false, true] {
                    let (a_rs, a_cs) = if a_transposed { (1, m) } else { (k, 1) };
                    let (b_rs, b_cs) = if b_transposed { (1, k) } else { (n, 1) };
                    let a_mat = Mat { ptr: a.as_ptr(), rs: a_rs as isize, cs: a_cs as isize };
                    let b_mat = Mat { ptr: b.as_ptr(), rs: b_rs as isize, cs: b_cs as isize };
                    // SAFETY: the CPU has AVX2 and FMA, the view lies inside the buffer.
                    let packed = unsafe { PackedA::new(a_mat, [m, k]) };
                    for accumulate in [false, true] {
                        for mode in ["one thread", "threaded", "packed"] {
                            let mut c = init.clone();
                            let scale = if mode == "packed" { 1.0 } else { 0.5 };
                            // SAFETY: the CPU has AVX2 and FMA, the views lie inside the buffers.
                            unsafe {
                                match mode {
                                    "packed" => sgemm_packed(n, c.as_mut_ptr(), n, accumulate, &packed, b_mat),
                                    _ => sgemm(
                                        [m, n, k],
                                        c.as_mut_ptr(),
                                        n,
                                        accumulate,
                                        a_mat,
                                        b_mat,
                                        scale,
                                        mode == "threaded",
                                    ),
                                }
                            }
                            for i in 0..m {
                                for j in 0..n {
                                    let dot: f64 = (0..k)
                                        .map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64)
                                        .sum();
                                    let want =
                                        scale as f64 * dot + if accumulate { init[i * n + j] as f64 } else { 0.0 };
                                    let got = c[i * n + j] as f64;
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                        "{m}x{k}x{n} a^T {a_transposed} b^T {b_transposed} accumulate {accumulate} \
                                         {mode} at ({i}, {j}): {got} != {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
