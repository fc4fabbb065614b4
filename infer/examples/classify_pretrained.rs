//! Classify images with a pretrained ViT from the Hugging Face Hub:
//!
//!     cargo run --release -p zoo-infer --example classify_pretrained -- cat.jpg [more.jpg ...]
//!
//! The model is downloaded once into the Hub's cache (`~/.cache/huggingface/hub`, shared with
//! Python's huggingface_hub) and read from there afterwards, also without a network.

use burn::prelude::*;
use zoo_infer::Inputs;
use zoo_infer::classify::classify;
use zoo_infer::pretrained::FromPretrained;
use zoo_models::Classifier;

fn main() -> anyhow::Result<()> {
    let images: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    anyhow::ensure!(!images.is_empty(), "usage: classify_pretrained IMAGE...");
    let device = Device::default();
    // The config holds the model's preprocessing (resize, crop, mean, std) and its class names.
    let (model, pretrained) = Classifier::from_pretrained("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", &device)?;
    let result = classify(&model, &pretrained.config, &Inputs::Images(images), 5, &device)?;
    for (image, top) in result.inputs.iter().zip(&result.top_k) {
        let best = &top[0];
        println!("{image}: {} ({:.1}%)", best.label.as_deref().unwrap_or("?"), 100.0 * best.probability);
    }
    Ok(())
}
