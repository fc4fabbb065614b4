//! Time of `ops::gelu` per element on one core, on a float32 tensor of 16,384 elements (one
//! task of the element-wise kernels, so one thread) that lies in cache, values spread over
//! [-4, 4]; the best of five runs of 20,000 calls:
//!
//! ```text
//! cargo run --release -p zoo-models --example gelu_time
//! ```

use burn::tensor::{Device, Tensor, TensorData};

fn main() {
    const N: usize = 16_384;
    const CALLS: usize = 20_000;
    let device = Device::flex();
    let values: Vec<f32> = (0..N).map(|i| ((i * 7919) % 2000) as f32 / 250.0 - 4.0).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut seconds = 0.0;
        for _ in 0..CALLS {
            // A tensor of its own each call, made outside the timing: GELU then runs in place.
            let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [N]), &device);
            let start = std::time::Instant::now();
            let y = zoo_models::ops::gelu(x);
            seconds += start.elapsed().as_secs_f64();
            drop(y);
        }
        best = best.min(seconds / (CALLS * N) as f64 * 1e9);
    }
    println!("GELU: {best:.2} ns per element on one thread (best of 5 runs of {CALLS} calls on {N} elements)");
}
