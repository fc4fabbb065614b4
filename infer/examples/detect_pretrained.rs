//! Detect objects with DETR-R50 from the Hugging Face Hub (`facebook/detr-resnet-50`):
//!
//!     cargo run --release -p zoo-infer --example detect_pretrained -- street.jpg
//!
//! Prints each detection scoring at least 0.7 with its COCO category name and box.

use burn::prelude::*;
use zoo_infer::Inputs;
use zoo_infer::detect::detect;
use zoo_infer::pretrained::FromPretrained;
use zoo_models::detr::Detr;

fn main() -> anyhow::Result<()> {
    let images: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    anyhow::ensure!(!images.is_empty(), "usage: detect_pretrained IMAGE...");
    let device = Device::default();
    let name = "facebook/detr-resnet-50";
    let (model, pretrained) = Detr::from_pretrained(name, &device)?;
    let (result, _pictures) =
        detect(&model, &pretrained.config, &pretrained.config_file, &Inputs::Images(images), 0.7, &device)?;
    print!("{}", result.to_text());
    Ok(())
}
