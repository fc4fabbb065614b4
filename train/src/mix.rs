//! Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on a host batch, with label
//! smoothing, as timm's `Mixup` in batch mode: each image is mixed with the batch reversed.

use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Beta, Distribution};

#[derive(Debug, Clone, Copy)]
pub struct MixConfig {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    pub prob: f64,
    pub switch_prob: f64,
    pub smoothing: f64,
}

fn beta(alpha: f64, rng: &mut StdRng) -> f64 {
    Beta::new(alpha, alpha).expect("alpha > 0").sample(rng)
}

/// Smoothed one-hot rows: `1 - smoothing + smoothing / classes` on the label, `smoothing / classes` elsewhere.
pub fn smoothed_one_hot(labels: &[usize], classes: usize, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let mut t = vec![off as f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l] = (1.0 - smoothing + off) as f32;
    }
    t
}

/// Mixes `images` (`[B, 3, S, S]` values) in place and returns the soft targets `[B, classes]`.
pub fn mix_batch(
    images: &mut [f32],
    labels: &[usize],
    classes: usize,
    size: usize,
    cfg: &MixConfig,
    rng: &mut StdRng,
) -> Vec<f32> {
    let b = labels.len();
    let target = smoothed_one_hot(labels, classes, cfg.smoothing);
    let active = cfg.mixup_alpha > 0.0 || cfg.cutmix_alpha > 0.0;
    if !active || b < 2 || !rng.random_bool(cfg.prob) {
        return target;
    }
    let use_cutmix = match (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0) {
        (true, true) => rng.random_bool(cfg.switch_prob),
        (false, true) => true,
        _ => false,
    };
    let mut lam = beta(if use_cutmix { cfg.cutmix_alpha } else { cfg.mixup_alpha }, rng);
    let plane = size * size;
    let original = images.to_vec();
    let partner = |i: usize| b - 1 - i;
    if use_cutmix {
        // A box of area (1 - lam) at a uniform centre, clipped; lam becomes the kept fraction.
        let cut = (1.0 - lam).sqrt();
        let (ch, cw) = ((size as f64 * cut) as usize, (size as f64 * cut) as usize);
        let (cy, cx) = (rng.random_range(0..size), rng.random_range(0..size));
        let (y0, y1) = (cy.saturating_sub(ch / 2), (cy + ch / 2).min(size));
        let (x0, x1) = (cx.saturating_sub(cw / 2), (cx + cw / 2).min(size));
        for i in 0..b {
            for c in 0..3 {
                for y in y0..y1 {
                    let row = ((i * 3 + c) * size + y) * size;
                    let src = ((partner(i) * 3 + c) * size + y) * size;
                    images[row + x0..row + x1].copy_from_slice(&original[src + x0..src + x1]);
                }
            }
        }
        lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / plane as f64;
    } else {
        let n = 3 * plane;
        for i in 0..b {
            for k in 0..n {
                images[i * n + k] =
                    (original[i * n + k] as f64 * lam + original[partner(i) * n + k] as f64 * (1.0 - lam)) as f32;
            }
        }
    }
    let mut mixed = vec![0f32; b * classes];
    for i in 0..b {
        for c in 0..classes {
            mixed[i * classes + c] =
                (target[i * classes + c] as f64 * lam + target[partner(i) * classes + c] as f64 * (1.0 - lam)) as f32;
        }
    }
    mixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn targets_are_distributions_and_match_the_mix() {
        let mut rng = StdRng::seed_from_u64(3);
        let (b, classes, size) = (4, 5, 8);
        let labels = [0, 1, 2, 3];
        for (mixup, cutmix) in [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)] {
            let cfg =
                MixConfig { mixup_alpha: mixup, cutmix_alpha: cutmix, prob: 1.0, switch_prob: 0.5, smoothing: 0.1 };
            // Image i is constant i: the mean of a mixed image tells its lam.
            let mut images: Vec<f32> = (0..b).flat_map(|i| vec![i as f32; 3 * size * size]).collect();
            let t = mix_batch(&mut images, &labels, classes, size, &cfg, &mut rng);
            for i in 0..b {
                let row = &t[i * classes..(i + 1) * classes];
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                let mean = images[i * 3 * size * size..(i + 1) * 3 * size * size].iter().sum::<f32>()
                    / (3 * size * size) as f32;
                let j = b - 1 - i;
                // lam from the target of the own label (smoothing spreads 0.1 evenly).
                let lam = (row[labels[i]] - 0.02) / 0.9;
                let expected = lam * i as f32 + (1.0 - lam) * j as f32;
                assert!((mean - expected).abs() < 1e-4, "mix {mixup}/{cutmix}: image {i} mean {mean} vs {expected}");
            }
        }
    }
}
