//! The image classifiers behind one type, so that commands and training take any of them.

use std::path::Path;

use burn::prelude::*;

use crate::config::ModelConfig;
use crate::import::{ImportError, load_weights, load_weights_for_finetuning, save_burnpack};
use crate::ops::AttentionMaps;
use crate::tnt::Tnt;
use crate::vit::Vit;

// One model per program: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    Vit(Vit),
    Tnt(Tnt),
}

impl Classifier {
    /// A randomly initialised classifier; `None` for configs of other kinds of model.
    pub fn init(config: &ModelConfig, device: &Device) -> Option<Self> {
        match config {
            ModelConfig::Vit(c) => Some(Classifier::Vit(c.init(device))),
            ModelConfig::Tnt(c) => Some(Classifier::Tnt(c.init(device))),
            ModelConfig::Detr(_) => None,
        }
    }

    /// Logits `[B, classes]` for normalised images `[B, 3, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Vit(m) => m.forward(images),
            Classifier::Tnt(m) => m.forward(images),
        }
    }

    /// Logits and every layer's attention probabilities: `attn` `[B, heads, 1 + N, 1 + N]` (the
    /// class token first), and for TNT `inner_attn` `[B * N, heads, pixels, pixels]`.
    pub fn forward_attention(&self, images: Tensor<4>) -> (Tensor<2>, AttentionMaps) {
        let maps = AttentionMaps::default();
        let logits = match self {
            Classifier::Vit(m) => m.forward_head(m.forward_features_recording(images, Some(&maps)), false),
            Classifier::Tnt(m) => m.forward_head(m.forward_features_recording(images, Some(&maps)), false),
        };
        (logits, maps)
    }

    /// Parameters trained without weight decay, as a regex over parameter paths.
    pub fn no_weight_decay(&self) -> &'static str {
        match self {
            Classifier::Vit(_) => Vit::no_weight_decay(),
            Classifier::Tnt(_) => Tnt::no_weight_decay(),
        }
    }

    /// The classifier head's name, left out of a checkpoint for another number of classes.
    pub fn classifier_head(&self) -> &'static str {
        match self {
            Classifier::Vit(_) => Vit::classifier_head(),
            Classifier::Tnt(_) => Tnt::classifier_head(),
        }
    }

    pub fn load(self, path: &Path) -> Result<Self, ImportError> {
        Ok(match self {
            Classifier::Vit(m) => Classifier::Vit(load_weights(m, path)?),
            Classifier::Tnt(m) => Classifier::Tnt(load_weights(m, path)?),
        })
    }

    /// Loads a checkpoint for fine-tuning to `num_classes` classes (a head of another size is
    /// left at its initialisation).
    pub fn load_for_finetuning(self, path: &Path, num_classes: usize) -> Result<Self, ImportError> {
        let head = self.classifier_head();
        Ok(match self {
            Classifier::Vit(m) => Classifier::Vit(load_weights_for_finetuning(m, path, head, num_classes)?),
            Classifier::Tnt(m) => Classifier::Tnt(load_weights_for_finetuning(m, path, head, num_classes)?),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ImportError> {
        match self {
            Classifier::Vit(m) => save_burnpack(m, path),
            Classifier::Tnt(m) => save_burnpack(m, path),
        }
    }
}
