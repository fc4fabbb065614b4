//! DETR's set criterion: each decoder layer's predictions are matched one-to-one to the targets
//! (class + 5 L1 + 2 GIoU cost, Hungarian), then scored with a weighted cross-entropy over every
//! query (unmatched ones must say "no object", weighted 0.1) and, on the matched pairs, the L1
//! and 1 - GIoU of the boxes, both divided by the number of target boxes in the batch.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use zoo_models::box_ops::{
    box_cxcywh_to_xyxy, box_cxcywh_to_xyxy_tensor, generalized_box_iou, generalized_box_iou_rows,
};
use zoo_models::detr::DetrOutput;

use crate::matcher::hungarian_match;
pub use zoo_datasets::DetrTarget;

/// The weights of DETR's criterion (its paper's values by default).
#[derive(Debug, Clone, Copy)]
pub struct SetCriterion {
    pub cost_class: f32,
    pub cost_bbox: f32,
    pub cost_giou: f32,
    pub weight_ce: f64,
    pub weight_bbox: f64,
    pub weight_giou: f64,
    /// Cross-entropy weight of the "no object" class.
    pub eos_coef: f32,
}

impl Default for SetCriterion {
    fn default() -> Self {
        Self {
            cost_class: 1.0,
            cost_bbox: 5.0,
            cost_giou: 2.0,
            weight_ce: 1.0,
            weight_bbox: 5.0,
            weight_giou: 2.0,
            eos_coef: 0.1,
        }
    }
}

/// One decoder layer's assignment: per image, the matched `(query, target)` pairs.
pub type LayerMatching = Vec<Vec<(usize, usize)>>;

/// The three losses of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerLosses {
    pub ce: Tensor<1>,
    pub bbox: Tensor<1>,
    pub giou: Tensor<1>,
}

impl SetCriterion {
    /// Query-target pairs of every image for one layer, from detached predictions.
    pub fn match_layer(&self, out: &DetrOutput, targets: &[DetrTarget]) -> Result<LayerMatching> {
        let q = out.logits.dims()[1];
        self.cost_matrices(out, targets)?
            .iter()
            .zip(targets)
            .map(|(cost, t)| Ok(hungarian_match(cost, q, t.labels.len())?))
            .collect()
    }

    /// The matching cost of every image for one layer, `[queries, targets]` row-major:
    /// `cost_bbox * L1 - cost_class * p(class) - cost_giou * GIoU`, from detached predictions.
    pub fn cost_matrices(&self, out: &DetrOutput, targets: &[DetrTarget]) -> Result<Vec<Vec<f32>>> {
        let [b, q, k] = out.logits.dims();
        let host = |t: Tensor<3>| t.detach().into_data().convert::<f32>().try_into_vec::<f32>();
        let probs = host(softmax(out.logits.clone(), 2)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let boxes = host(out.boxes.clone()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((0..b)
            .map(|bi| {
                let t = &targets[bi];
                let n = t.labels.len();
                let mut cost = vec![0f32; q * n];
                for qi in 0..q {
                    let p = &probs[(bi * q + qi) * k..][..k];
                    let pb: [f32; 4] = boxes[(bi * q + qi) * 4..][..4].try_into().expect("4 coordinates");
                    for (ti, (&label, &tb)) in t.labels.iter().zip(&t.boxes).enumerate() {
                        let l1: f32 = pb.iter().zip(&tb).map(|(a, b)| (a - b).abs()).sum();
                        cost[qi * n + ti] = self.cost_bbox * l1
                            - self.cost_class * p[label]
                            - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pb), box_cxcywh_to_xyxy(tb));
                    }
                }
                cost
            })
            .collect())
    }

    /// The three losses of one layer given its matching; `num_boxes` is the batch's target count.
    pub fn layer_losses(
        &self,
        out: &DetrOutput,
        targets: &[DetrTarget],
        pairs: &[Vec<(usize, usize)>],
        num_boxes: f64,
    ) -> LayerLosses {
        let [b, q, k] = out.logits.dims();
        let device = out.logits.device();
        let no_object = k - 1;
        // Target class of every query, and its cross-entropy weight.
        let mut classes = vec![no_object as i64; b * q];
        let mut matched_rows = Vec::new();
        let mut matched_boxes = Vec::new();
        for (bi, image_pairs) in pairs.iter().enumerate() {
            for &(qi, ti) in image_pairs {
                classes[bi * q + qi] = targets[bi].labels[ti] as i64;
                matched_rows.push((bi * q + qi) as i64);
                matched_boxes.extend_from_slice(&targets[bi].boxes[ti]);
            }
        }
        let weights: Vec<f32> =
            classes.iter().map(|&c| if c as usize == no_object { self.eos_coef } else { 1.0 }).collect();
        let weight_sum: f32 = weights.iter().sum();
        let log_probs = log_softmax(out.logits.clone(), 2).reshape([b * q, k]);
        let class_idx = Tensor::<2, Int>::from_data(TensorData::new(classes, [b * q, 1]), &device);
        let picked = log_probs.gather(1, class_idx).reshape([b * q]);
        let w = Tensor::<1>::from_data(TensorData::new(weights, [b * q]), &device);
        let ce = (picked * w).sum().neg() / weight_sum as f64;

        let n = matched_rows.len();
        let (bbox, giou_loss) = if n == 0 {
            let zero = out.boxes.clone().sum() * 0.0;
            (zero.clone(), zero)
        } else {
            let rows = Tensor::<1, Int>::from_data(TensorData::new(matched_rows, [n]), &device);
            let pred = out.boxes.clone().reshape([b * q, 4]).select(0, rows);
            let target = Tensor::<2>::from_data(TensorData::new(matched_boxes, [n, 4]), &device);
            let l1 = (pred.clone() - target.clone()).abs().sum() / num_boxes;
            let giou = generalized_box_iou_rows(box_cxcywh_to_xyxy_tensor(pred), box_cxcywh_to_xyxy_tensor(target));
            let g = (giou.neg() + 1.0).sum() / num_boxes;
            (l1, g)
        };
        LayerLosses { ce: ce.reshape([1]), bbox: bbox.reshape([1]), giou: giou_loss.reshape([1]) }
    }

    /// The total loss over every decoder layer (the last and the auxiliary ones), and each
    /// layer's three losses.
    pub fn loss(&self, outputs: &[DetrOutput], targets: &[DetrTarget]) -> Result<(Tensor<1>, Vec<LayerLosses>)> {
        if outputs.is_empty() {
            bail!("no decoder outputs");
        }
        if targets.len() != outputs[0].logits.dims()[0] {
            bail!("{} targets for a batch of {}", targets.len(), outputs[0].logits.dims()[0]);
        }
        let matching = outputs.iter().map(|out| self.match_layer(out, targets)).collect::<Result<Vec<_>>>()?;
        Ok(self.loss_matched(outputs, targets, &matching))
    }

    /// [`SetCriterion::loss`] with every layer's matching given (one `match_layer` result per
    /// output), e.g. to compare two computations of the loss under the same assignment.
    pub fn loss_matched(
        &self,
        outputs: &[DetrOutput],
        targets: &[DetrTarget],
        matching: &[LayerMatching],
    ) -> (Tensor<1>, Vec<LayerLosses>) {
        let num_boxes = (targets.iter().map(|t| t.labels.len()).sum::<usize>() as f64).max(1.0);
        let mut total: Option<Tensor<1>> = None;
        let mut per_layer = Vec::new();
        for (out, pairs) in outputs.iter().zip(matching) {
            let l = self.layer_losses(out, targets, pairs, num_boxes);
            let weighted =
                l.ce.clone() * self.weight_ce + l.bbox.clone() * self.weight_bbox + l.giou.clone() * self.weight_giou;
            total = Some(match total {
                Some(t) => t + weighted,
                None => weighted,
            });
            per_layer.push(l);
        }
        (total.expect("at least one layer"), per_layer)
    }
}
