//! DETR against Hugging Face transformers' `DetrForObjectDetection` on a padded batch of two
//! images of different sizes, from both checkpoint layouts (HF safetensors and the original
//! facebookresearch/detr `.pth` with fused attention projections).

mod common;

use burn::prelude::*;
use common::{fixture, max_abs_diff, npy_tensor};
use zoo_models::{ModelConfig, load_weights};

fn check(weights: &str) {
    let device = Device::flex();
    let dir = fixture("detr_tiny");
    let config = ModelConfig::from_file(dir.join("config.toml")).unwrap();
    let ModelConfig::Detr(detr) = config else { panic!("not a DETR config") };
    let model = load_weights(detr.init(&device), &dir.join(weights)).unwrap();

    let images = npy_tensor::<4>(&dir.join("input.npy"), &device);
    let bytes = std::fs::read(dir.join("valid_mask.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let valid: Vec<u8> = npy.into_vec().unwrap();
    let padding: Vec<bool> = valid.iter().map(|v| *v == 0).collect();
    let mask = Tensor::<3, Bool>::from_data(TensorData::new(padding, shape), &device);

    let out = model.forward(images, mask);
    let logits = max_abs_diff(out.logits, &dir.join("pred_logits.npy"));
    let boxes = max_abs_diff(out.boxes, &dir.join("pred_boxes.npy"));
    assert!(logits < 1e-4, "{weights}: pred_logits max |ours - reference| = {logits:e}");
    assert!(boxes < 1e-5, "{weights}: pred_boxes max |ours - reference| = {boxes:e}");
}

#[test]
fn detr_matches_reference_from_hf_safetensors() {
    check("model.safetensors");
}

#[test]
fn detr_matches_reference_from_original_pth() {
    check("detr_original.pth");
}

/// A torchvision-layout ResNet checkpoint (with `fc` and `num_batches_tracked`, as torchvision
/// saves ImageNet weights) initialises DETR's backbone to the same tensors as the full checkpoint.
#[test]
fn backbone_loads_from_a_torchvision_checkpoint() {
    let device = Device::flex();
    let dir = fixture("detr_tiny");
    let config = ModelConfig::from_file(dir.join("config.toml")).unwrap();
    let ModelConfig::Detr(detr) = config else { panic!("not a DETR config") };
    let full = load_weights(detr.init(&device), &dir.join("detr_original.pth")).unwrap();
    let backbone = load_weights(detr.init(&device).backbone, &dir.join("resnet_backbone.pth")).unwrap();
    let x = Tensor::<4>::random([1, 3, 64, 96], burn::tensor::Distribution::Default, &device);
    let diff =
        (full.backbone.forward_features(x.clone()) - backbone.forward_features(x)).abs().max().into_scalar::<f32>();
    assert_eq!(diff, 0.0);
}
