//! Every compiled-in backend runs the same tiny models on the same inputs: ViT and TNT must agree
//! with timm, DETR (a padded batch of two sizes, so its masks matter) with Hugging Face
//! transformers; the ops that differ most between backends (masked attention, the sine position
//! embedding of a padding mask) are checked against plain host arithmetic; and one training step
//! of each tiny model (loss and the gradient of its first layer) must agree with timm's for ViT
//! and TNT, with flex's for DETR.
//! In the build that enables every backend, `ZOO_REQUIRE_BACKENDS=flex,ndarray,wgpu,tch` makes a
//! missing one a failure.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use zoo_infer::device::{Precision, compiled_backends, select_device};
use zoo_models::detr::{Detr, sine_position_embedding};
use zoo_models::{Classifier, ModelConfig, load_weights};
use zoo_train::classification::soft_cross_entropy;
use zoo_train::detr_loss::{DetrTarget, SetCriterion};

mod common;
use common::{max_abs_diff, relative_diff};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(case)
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn devices() -> Vec<(&'static str, Device)> {
    compiled_backends().into_iter().map(|name| (name, select_device(Some(name), Precision::F32).unwrap())).collect()
}

fn classifier(case: &str, device: &Device) -> Classifier {
    let dir = fixture(case);
    let config = ModelConfig::from_file(dir.join("config.toml")).unwrap();
    Classifier::init(&config, device).unwrap().load(&dir.join("model.safetensors")).unwrap()
}

fn npy_tensor<const D: usize>(path: &Path, device: &Device) -> Tensor<D> {
    let (shape, x) = read_npy::<f32>(path);
    Tensor::from_data(TensorData::new(x, shape), device)
}

/// The DETR fixture, without dropout so that a training step is deterministic.
fn detr(device: &Device) -> Detr {
    let dir = fixture("detr_tiny");
    let ModelConfig::Detr(mut config) = ModelConfig::from_file(dir.join("config.toml")).unwrap() else {
        panic!("detr_tiny is not a DETR config")
    };
    config.dropout = 0.0;
    load_weights(config.init(device), &dir.join("model.safetensors")).unwrap()
}

/// The DETR fixture's padded batch: images `[2, 3, 96, 128]` and the padding mask (true = padding).
fn detr_input(device: &Device) -> (Tensor<4>, Tensor<3, Bool>) {
    let dir = fixture("detr_tiny");
    let (shape, valid) = read_npy::<u8>(&dir.join("valid_mask.npy"));
    let padding: Vec<bool> = valid.iter().map(|v| *v == 0).collect();
    (npy_tensor(&dir.join("input.npy"), device), Tensor::from_data(TensorData::new(padding, shape), device))
}

#[test]
fn required_backends_are_compiled_in() {
    let required = std::env::var("ZOO_REQUIRE_BACKENDS").unwrap_or_else(|_| "flex".into());
    let compiled = compiled_backends();
    for name in required.split(',').filter(|s| !s.is_empty()) {
        assert!(compiled.contains(&name), "backend {name} required but not compiled in ({compiled:?})");
    }
}

#[test]
fn every_backend_agrees_with_timm() {
    for case in ["vit_tiny", "tnt_tiny"] {
        let (_, reference) = read_npy::<f32>(&fixture(case).join("output.npy"));
        for (backend, device) in devices() {
            let x = npy_tensor(&fixture(case).join("input.npy"), &device);
            let logits = values(classifier(case, &device).forward(x));
            let diff = max_abs_diff(&logits, &reference);
            println!("{case} on {backend}: max |ours - timm| = {diff:e}");
            assert!(diff < 1e-4, "{case} on {backend}: max |ours - timm| = {diff:e}");
        }
    }
}

#[test]
fn detr_agrees_with_transformers_on_every_backend() {
    let dir = fixture("detr_tiny");
    let (_, logits_ref) = read_npy::<f32>(&dir.join("pred_logits.npy"));
    let (_, boxes_ref) = read_npy::<f32>(&dir.join("pred_boxes.npy"));
    for (backend, device) in devices() {
        let (images, mask) = detr_input(&device);
        let out = detr(&device).forward(images, mask);
        let logits = max_abs_diff(&values(out.logits), &logits_ref);
        let boxes = max_abs_diff(&values(out.boxes), &boxes_ref);
        println!("detr_tiny on {backend}: max |ours - transformers| pred_logits {logits:e}, pred_boxes {boxes:e}");
        assert!(logits < 1e-4 && boxes < 1e-5, "detr_tiny on {backend}: pred_logits {logits:e}, pred_boxes {boxes:e}");
    }
}

/// Deterministic values in [-1, 1) for test inputs.
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Multi-head attention with a key padding mask, in f64 on the host: `[B, N, C]` row-major.
#[allow(clippy::too_many_arguments)]
fn host_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    padding: &[bool],
    b: usize,
    nq: usize,
    nk: usize,
    c: usize,
    heads: usize,
) -> Vec<f32> {
    let dh = c / heads;
    let mut out = vec![0f32; b * nq * c];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..nq {
                let scores: Vec<f64> = (0..nk)
                    .map(|j| {
                        if padding[bi * nk + j] {
                            return f64::NEG_INFINITY;
                        }
                        let dot: f64 = (0..dh)
                            .map(|e| {
                                q[(bi * nq + i) * c + h * dh + e] as f64 * k[(bi * nk + j) * c + h * dh + e] as f64
                            })
                            .sum();
                        dot / (dh as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..dh {
                    let y: f64 = (0..nk).map(|j| weights[j] / total * v[(bi * nk + j) * c + h * dh + e] as f64).sum();
                    out[(bi * nq + i) * c + h * dh + e] = y as f32;
                }
            }
        }
    }
    out
}

/// The models' attention with a key padding mask (DETR's), inside and outside autodiff, against
/// the host: libtorch once read Burn's mask (true = ignore) as its own (true = attend).
#[test]
fn masked_attention_agrees_with_the_host_on_every_backend() {
    let (b, nq, nk, c, heads) = (2, 5, 7, 16, 4);
    let (q, k, v) = (pseudo_random(b * nq * c, 1), pseudo_random(b * nk * c, 2), pseudo_random(b * nk * c, 3));
    // The second sequence has its last three keys padded.
    let padding: Vec<bool> = (0..b * nk).map(|i| i >= nk && i % nk >= nk - 3).collect();
    let expected = host_attention(&q, &k, &v, &padding, b, nq, nk, c, heads);
    for (backend, device) in devices() {
        for device in [device.clone(), device.autodiff()] {
            let t = |x: &[f32], n: usize| Tensor::<3>::from_data(TensorData::new(x.to_vec(), [b, n, c]), &device);
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(padding.clone(), [b, nk]), &device);
            let y = zoo_models::ops::attention(t(&q, nq), t(&k, nk), t(&v, nk), heads, Some(mask));
            let diff = max_abs_diff(&values(y), &expected);
            println!("masked attention on {backend} ({device:?}): max |ours - host| = {diff:e}");
            assert!(diff < 1e-5, "masked attention on {backend}: max |ours - host| = {diff:e}");
        }
    }
}

/// DETR's sine position embedding of a padding mask, against DETR's formula on the host
/// (`PositionEmbeddingSine(normalize=True)`): wgpu stores masks as u32, which reading them as
/// native booleans on the host did not survive.
#[test]
fn sine_position_embedding_agrees_with_the_host_on_every_backend() {
    let (b, h, w, d) = (2, 5, 6, 8);
    let padding: Vec<bool> = (0..b * h * w).map(|i| i >= h * w && (i % w >= 4 || (i / w) % h >= 3)).collect();
    let feats = d / 2;
    let mut expected = vec![0f32; b * d * h * w];
    for bi in 0..b {
        let valid = |y: usize, x: usize| !padding[(bi * h + y) * w + x] as u8 as f64;
        for y in 0..h {
            for x in 0..w {
                let y_embed: f64 = (0..=y).map(|yy| valid(yy, x)).sum();
                let y_total: f64 = (0..h).map(|yy| valid(yy, x)).sum();
                let x_embed: f64 = (0..=x).map(|xx| valid(y, xx)).sum();
                let x_total: f64 = (0..w).map(|xx| valid(y, xx)).sum();
                let scale = 2.0 * std::f64::consts::PI;
                for (half, e) in
                    [y_embed / (y_total + 1e-6) * scale, x_embed / (x_total + 1e-6) * scale].iter().enumerate()
                {
                    for k in 0..feats {
                        let t = e / 10000f64.powf((2 * (k / 2)) as f64 / feats as f64);
                        let value = if k % 2 == 0 { t.sin() } else { t.cos() };
                        expected[((bi * d + half * feats + k) * h + y) * w + x] = value as f32;
                    }
                }
            }
        }
    }
    for (backend, device) in devices() {
        let mask = Tensor::<3, Bool>::from_data(TensorData::new(padding.clone(), [b, h, w]), &device);
        let diff = max_abs_diff(&values(sine_position_embedding(&mask, d)), &expected);
        println!("sine position embedding on {backend}: max |ours - host| = {diff:e}");
        assert!(diff < 1e-5, "sine position embedding on {backend}: max |ours - host| = {diff:e}");
    }
}

/// A classifier's training loss on the fixture input (labels `i % classes`) and the gradient of
/// its first layer's weight, on `device` with autodiff.
fn classifier_step(case: &str, device: &Device) -> (f32, Vec<f32>) {
    let device = device.clone().autodiff();
    let model = classifier(case, &device);
    let x = npy_tensor::<4>(&fixture(case).join("input.npy"), &device);
    let logits = model.forward(x);
    let [batch, classes] = logits.dims();
    let one_hot: Vec<f32> =
        (0..batch * classes).map(|i| (i % classes == (i / classes) % classes) as u8 as f32).collect();
    let targets = Tensor::from_data(TensorData::new(one_hot, [batch, classes]), &device);
    let loss = soft_cross_entropy(logits, targets);
    let grads = loss.backward();
    let grad = match &model {
        Classifier::Vit(m) => values(m.patch_embed.proj.weight.val().grad(&grads).unwrap()),
        Classifier::Tnt(m) => values(m.pixel_embed.proj.weight.val().grad(&grads).unwrap()),
    };
    (values(loss)[0], grad)
}

fn detr_targets() -> Vec<DetrTarget> {
    vec![
        DetrTarget { labels: vec![1, 3], boxes: vec![[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]] },
        DetrTarget { labels: vec![2], boxes: vec![[0.5, 0.5, 0.4, 0.4]] },
    ]
}

/// Every decoder layer's query-target matching on flex. With random weights, the first decoder
/// layer's queries are nearly alike (its input is zero), so their costs nearly tie and rounding
/// may pick another query on another backend: a different, equally good assignment whose
/// gradients differ. The backends are compared under this one.
fn detr_matching() -> Vec<Vec<Vec<(usize, usize)>>> {
    let (images, mask) = detr_input(&Device::flex());
    let outputs = detr(&Device::flex()).forward_all(images, mask);
    outputs.iter().map(|out| SetCriterion::default().match_layer(out, &detr_targets()).unwrap()).collect()
}

/// DETR's set loss (every decoder layer, under flex's matching) on the fixture's padded batch
/// and the gradient of the backbone's first convolution, on `device` with autodiff.
fn detr_step(device: &Device) -> (f32, Vec<f32>) {
    let device = device.clone().autodiff();
    let model = detr(&device);
    let (images, mask) = detr_input(&device);
    let outputs = model.forward_all(images, mask);
    let (loss, _) = SetCriterion::default().loss_matched(&outputs, &detr_targets(), &detr_matching());
    let grads = loss.backward();
    let grad = values(model.backbone.conv1.weight.val().grad(&grads).unwrap());
    (values(loss)[0], grad)
}

/// Checks a training step's loss and gradient on every backend against a reference.
fn check_step(case: &str, reference: &str, step: &dyn Fn(&Device) -> (f32, Vec<f32>), expected: (f32, &[f32])) {
    let (loss_ref, grad_ref) = expected;
    assert!(loss_ref.is_finite() && grad_ref.iter().any(|g| *g != 0.0), "{case}: no reference loss or gradient");
    let mut failures = Vec::new();
    for (backend, device) in devices() {
        let (loss, grad) = step(&device);
        let (loss_diff, grad_diff) = ((loss - loss_ref).abs() / loss_ref.abs(), relative_diff(&grad, grad_ref));
        println!(
            "{case} training step on {backend}: loss {loss}, relative to {reference}: loss {loss_diff:e}, gradient {grad_diff:e}"
        );
        if !(loss_diff < 1e-5 && grad_diff < 1e-5) {
            failures.push(format!("{case} on {backend}: loss {loss_diff:e}, gradient {grad_diff:e}"));
        }
    }
    assert!(failures.is_empty(), "relative to {reference}: {failures:?}");
}

/// One training step of the tiny ViT and TNT (loss, and the gradient of the first layer, which
/// passes through every op of the network) against timm's in float64
/// (`scripts/make_grad_fixtures.py`).
#[test]
fn a_classifier_training_step_agrees_with_timm_on_every_backend() {
    for case in ["vit_tiny", "tnt_tiny"] {
        let (_, loss) = read_npy::<f32>(&fixture(case).join("train_loss.npy"));
        let (_, grad) = read_npy::<f32>(&fixture(case).join("train_grad.npy"));
        check_step(case, "timm", &|d| classifier_step(case, d), (loss[0], &grad));
    }
}

/// One DETR training step (set loss over every decoder layer, the backbone's first convolution's
/// gradient) on every backend against flex's (whose loss is checked against the reference
/// criterion in `train/tests/detr_loss.rs`).
#[test]
fn a_detr_training_step_agrees_with_flex_on_every_backend() {
    let (loss, grad) = detr_step(&Device::flex());
    check_step("detr_tiny", "flex", &detr_step, (loss, &grad));
}

/// The models' recorded attention probabilities of every layer against the references' (timm's
/// `attn_drop` input, transformers' `output_attentions`; scripts/make_attention_fixtures.py):
/// each kind `{kind}_{i}.npy` in the fixture's `attention/` folder, every row a distribution.
fn check_attention(case: &str, backend: &str, maps: zoo_models::ops::AttentionMaps) -> Vec<(String, Vec<f32>)> {
    let mut checked = Vec::new();
    for (kind, layers) in maps.into_inner() {
        for (i, probs) in layers.into_iter().enumerate() {
            let dims = probs.dims();
            let ours = values(probs);
            let (shape, reference) = read_npy::<f32>(&fixture(case).join(format!("attention/{kind}_{i}.npy")));
            assert_eq!(dims.to_vec(), shape, "{case} {kind}_{i} on {backend}: shape");
            let diff = max_abs_diff(&ours, &reference);
            let worst_row = ours.chunks(dims[3]).map(|r| (r.iter().sum::<f32>() - 1.0).abs()).fold(0.0, f32::max);
            println!(
                "{case} {kind}_{i} on {backend}: max |ours - reference| = {diff:e}, rows sum to 1 within {worst_row:e}"
            );
            assert!(diff < 1e-5 && worst_row < 1e-5, "{case} {kind}_{i} on {backend}: {diff:e}, rows {worst_row:e}");
            checked.push((format!("{kind}_{i}"), ours));
        }
    }
    checked
}

#[test]
fn attention_probabilities_agree_with_the_references_on_every_backend() {
    for (backend, device) in devices() {
        for (case, kinds) in [("vit_tiny", 2), ("tnt_tiny", 4)] {
            let x = npy_tensor(&fixture(case).join("input.npy"), &device);
            let (logits, maps) = classifier(case, &device).forward_attention(x.clone());
            // Recording changes nothing of the output.
            let plain = values(classifier(case, &device).forward(x));
            assert!(max_abs_diff(&values(logits), &plain) < 1e-5, "{case} on {backend}: recorded logits differ");
            assert_eq!(check_attention(case, backend, maps).len(), kinds, "{case}: every layer recorded");
        }
        let (images, mask) = detr_input(&device);
        let result = detr(&device).forward_attention(images, mask);
        assert_eq!(result.feature_size, [3, 4]);
        let checked = check_attention("detr_tiny", backend, result.maps);
        assert_eq!(checked.len(), 6, "every DETR layer recorded");
        // The second image is valid on 64 x 96 of 96 x 128 pixels: on the 3 x 4 feature map its
        // third row and fourth column are padding, which no query may attend to.
        for (name, probs) in checked.iter().filter(|(n, _)| n.starts_with("encoder") || n.contains("cross")) {
            let rows = probs.len() / 2 / 12;
            for row in probs[rows * 12..].chunks(12) {
                for (key, p) in row.iter().enumerate() {
                    if key / 4 == 2 || key % 4 == 3 {
                        assert_eq!(*p, 0.0, "{name} on {backend}: padding key {key} has weight {p}");
                    }
                }
            }
        }
    }
}
