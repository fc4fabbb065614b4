//! Times ResNet-50's 3x3 stride-1 convolutions at the sizes they have in DETR-R50 on an
//! 800 x 1066 image (one per stage: 64 channels at 200 x 267 to 512 at 25 x 34), batch 1, through
//! `zoo_models::ops::conv2d` on flex, as the models call it. On a CPU where the zoo's AVX2 kernel
//! runs the matrix products they go by Winograd's F(2x2, 3x3); run it again with
//! `ZOO_WINOGRAD=0` for the nine products over shifted views:
//!
//! ```text
//! cargo run --release -p zoo-models --example conv3x3
//! ZOO_WINOGRAD=0 cargo run --release -p zoo-models --example conv3x3
//! ```
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;

fn main() {
    // The calling thread joins rayon's pool, as `zoo` does (see `zoo_models::ops`).
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().expect("the first pool");
    let device = Device::flex();
    for (c, h, w) in [(64, 200, 267), (128, 100, 134), (256, 50, 67), (512, 25, 34)] {
        let conv = Conv2dConfig::new([c, c], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&device);
        let x = Tensor::<4>::random([1, c, h, w], Distribution::Default, &device);
        let _warm_up = zoo_models::ops::conv2d(&conv, x.clone()).into_data();
        let mut ms: Vec<f64> = (0..7)
            .map(|_| {
                let start = std::time::Instant::now();
                let _y = zoo_models::ops::conv2d(&conv, x.clone()).into_data();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        // Direct convolution's multiply-adds, whichever algorithm ran.
        let gflop = 2.0 * 9.0 * (c * c * h * w) as f64 / 1e9;
        println!(
            "{c:>3} -> {c:>3} channels, {h} x {w}: median {:.1} ms, best {:.1} ms ({:.0} GFLOP/s of direct convolution)",
            ms[3],
            ms[0],
            gflop / ms[0] * 1e3
        );
    }
}
