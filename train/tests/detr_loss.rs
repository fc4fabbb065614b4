//! DETR's set criterion against the reference implementation (transformers' port of
//! facebookresearch/detr's SetCriterion) on the same predictions and targets.

use burn::prelude::*;
use zoo_models::detr::DetrOutput;
use zoo_train::detr_loss::{DetrTarget, SetCriterion};

fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        n => vec![n.as_f64().unwrap() as f32],
    }
}

#[test]
fn losses_match_the_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/detr_loss.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Device::flex();
    let logits = flat(&json["logits"]);
    let boxes = flat(&json["boxes"]);
    let (layers, batch, queries, k) = (6, 3, 12, json["num_classes"].as_u64().unwrap() as usize + 1);
    let outputs: Vec<DetrOutput> = (0..layers)
        .map(|l| DetrOutput {
            logits: Tensor::from_data(
                TensorData::new(logits[l * batch * queries * k..][..batch * queries * k].to_vec(), [batch, queries, k]),
                &device,
            ),
            boxes: Tensor::from_data(
                TensorData::new(boxes[l * batch * queries * 4..][..batch * queries * 4].to_vec(), [batch, queries, 4]),
                &device,
            ),
        })
        .collect();
    let targets: Vec<DetrTarget> = json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| DetrTarget {
            labels: t["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect(),
            boxes: flat(&t["boxes"]).chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
        })
        .collect();
    let (total, per_layer) = SetCriterion::default().loss(&outputs, &targets).unwrap();
    for (l, (ours, reference)) in per_layer.iter().zip(json["per_layer"].as_array().unwrap()).enumerate() {
        for (name, value) in [("loss_ce", &ours.ce), ("loss_bbox", &ours.bbox), ("loss_giou", &ours.giou)] {
            let v = value.clone().into_scalar::<f64>();
            let r = reference[name].as_f64().unwrap();
            assert!((v - r).abs() < 1e-5, "layer {l} {name}: ours {v} vs reference {r}");
        }
    }
    let total = total.into_scalar::<f64>();
    let reference = json["total"].as_f64().unwrap();
    assert!((total - reference).abs() < 1e-4, "total: ours {total} vs reference {reference}");
}
