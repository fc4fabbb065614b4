//! DETR's box head (detr's `MLP`) and its `PostProcess`: model outputs to detections in pixels.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};

use super::DetrOutput;
use crate::box_ops::{box_cxcywh_to_xyxy, scale_box};
use crate::ops::linear;

/// Three linear layers with ReLU between them: the box regression head.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub layers: Vec<Linear>,
}

impl BoxHead {
    /// `d -> d -> d -> 4`, PyTorch's default initialisation.
    pub fn new(d: usize, device: &Device) -> Self {
        Self { layers: [(d, d), (d, d), (d, 4)].map(|(i, o)| LinearConfig::new(i, o).init(device)).into() }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = linear(layer, x);
            if i < last { relu(y) } else { y }
        })
    }
}

/// One detection, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Class index (a COCO category id for COCO checkpoints).
    pub label: usize,
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]`.
    pub bbox_xyxy: [f32; 4],
}

/// DETR's `PostProcess`: softmax over the classes, the "no object" column dropped, each query's
/// best class and its probability; boxes from normalised (cx, cy, w, h) to absolute corners of
/// each image's original `(height, width)`. Every query is kept (thresholds are for display).
pub fn postprocess(output: &DetrOutput, sizes: &[(usize, usize)]) -> Vec<Vec<Detection>> {
    let [b, q, c] = output.logits.dims();
    assert_eq!(b, sizes.len(), "one original size per image");
    let probs: Vec<f32> = softmax(output.logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("probabilities are floats");
    let boxes: Vec<f32> = output.boxes.clone().into_data().convert::<f32>().try_into_vec().expect("boxes are floats");
    (0..b)
        .map(|bi| {
            let (h, w) = (sizes[bi].0 as f32, sizes[bi].1 as f32);
            (0..q)
                .map(|qi| {
                    let p = &probs[(bi * q + qi) * c..][..c - 1];
                    // The first maximum, as torch.max returns it.
                    let (label, score) = p
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                    let cxcywh = boxes[(bi * q + qi) * 4..][..4].try_into().expect("4 coordinates");
                    Detection { label, score, bbox_xyxy: scale_box(box_cxcywh_to_xyxy(cxcywh), w, h) }
                })
                .collect()
        })
        .collect()
}
