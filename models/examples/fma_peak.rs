//! The CPU's peak float32 rate in 256-bit fused multiply-adds (AVX2 and FMA), one thread per
//! core: twelve independent accumulators per thread, enough to cover the FMA units' latency,
//! nothing read from memory. The bound no matrix product on this CPU can pass, against which the
//! kernels' rates in BENCHMARKS.md are read:
//!
//! ```text
//! cargo run --release -p zoo-models --example fma_peak
//! ```

#[cfg(target_arch = "x86_64")]
fn main() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("this CPU has no AVX2 and FMA");
        return;
    }
    const ROUNDS: u64 = 200_000_000;
    /// Floating-point operations of one round on one thread: 12 accumulators x 8 lanes x 2.
    const FLOP_PER_ROUND: f64 = 12.0 * 8.0 * 2.0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let mut rates: Vec<f64> = (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                let workers: Vec<_> = (0..threads)
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    .map(|_| std::thread::spawn(|| unsafe { fma_rounds(ROUNDS) }))
                    .collect();
                let sum: f32 = workers.into_iter().map(|w| w.join().expect("a worker")).sum();
                assert!(sum.is_finite());
                threads as f64 * ROUNDS as f64 * FLOP_PER_ROUND / start.elapsed().as_secs_f64() / 1e9
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!("{threads} thread(s): {:.1} GFLOP/s (best of 3; median {:.1})", rates[2], rates[1]);
    }
}

/// `rounds` rounds of twelve independent 8-lane fused multiply-adds; the sum of the lanes, so
/// that the work is not optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rounds(rounds: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    let mut sum = 0.0;
    for x in acc {
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
        sum += lanes.iter().sum::<f32>();
    }
    sum
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("this example measures x86-64's AVX2 fused multiply-adds");
}
