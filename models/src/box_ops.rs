//! Box conversions and overlap measures, as facebookresearch/detr's `util/box_ops.py`. A box is
//! four numbers in one of three forms: `cxcywh` (centre, width, height: what DETR predicts, and
//! its targets, normalised to the image), `xyxy` (corners `x0, y0, x1, y1`) and COCO's `xywh`
//! (top-left corner, width, height).

use std::ops::{Add, Sub};

use burn::prelude::*;

/// (cx, cy, w, h) -> corners.
pub fn box_cxcywh_to_xyxy([cx, cy, w, h]: [f32; 4]) -> [f32; 4] {
    [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
}

/// Corners -> (cx, cy, w, h).
pub fn box_xyxy_to_cxcywh([x0, y0, x1, y1]: [f32; 4]) -> [f32; 4] {
    [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
}

/// Corners -> COCO's `[x, y, width, height]`.
pub fn box_xyxy_to_xywh<T: Copy + Sub<Output = T>>([x0, y0, x1, y1]: [T; 4]) -> [T; 4] {
    [x0, y0, x1 - x0, y1 - y0]
}

/// COCO's `[x, y, width, height]` -> corners.
pub fn box_xywh_to_xyxy<T: Copy + Add<Output = T>>([x, y, w, h]: [T; 4]) -> [T; 4] {
    [x, y, x + w, y + h]
}

/// Corners scaled by `sx` horizontally and `sy` vertically (a resize, or normalised to pixels).
pub fn scale_box([x0, y0, x1, y1]: [f32; 4], sx: f32, sy: f32) -> [f32; 4] {
    [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
}

/// Corners clamped to an image of `width` by `height`.
pub fn clip_box([x0, y0, x1, y1]: [f32; 4], width: f32, height: f32) -> [f32; 4] {
    [x0.clamp(0.0, width), y0.clamp(0.0, height), x1.clamp(0.0, width), y1.clamp(0.0, height)]
}

/// Whether corners enclose a positive area (`x1 > x0` and `y1 > y0`).
pub fn box_has_area([x0, y0, x1, y1]: [f32; 4]) -> bool {
    x1 > x0 && y1 > y0
}

/// Whether two corner boxes share a positive area (edges that only touch do not).
pub fn boxes_overlap<T: PartialOrd>(a: [T; 4], b: [T; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

pub fn box_area([x0, y0, x1, y1]: [f32; 4]) -> f32 {
    (x1 - x0) * (y1 - y0)
}

/// IoU of two corner boxes and their union's area.
fn iou_and_union(a: [f32; 4], b: [f32; 4]) -> (f32, f32) {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = box_area(a) + box_area(b) - inter;
    (inter / union, union)
}

/// Intersection over union of two corner boxes.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    iou_and_union(a, b).0
}

/// Generalised IoU (Rezatofighi et al. 2019) of two corner boxes: IoU - (C - U) / C, with U the
/// union and C the smallest box enclosing both. 1 for identical boxes, below 0 for disjoint ones.
pub fn generalized_box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let (iou, union) = iou_and_union(a, b);
    let enclosing = (a[2].max(b[2]) - a[0].min(b[0])) * (a[3].max(b[3]) - a[1].min(b[1]));
    iou - (enclosing - union) / enclosing
}

/// The four coordinate columns of `[N, 4]` boxes, each `[N, 1]`.
fn columns(boxes: Tensor<2>) -> [Tensor<2>; 4] {
    std::array::from_fn(|i| boxes.clone().slice(s![.., i..i + 1]))
}

/// [`box_cxcywh_to_xyxy`] on every row of `[N, 4]` boxes.
pub fn box_cxcywh_to_xyxy_tensor(boxes: Tensor<2>) -> Tensor<2> {
    let [cx, cy, w, h] = columns(boxes);
    Tensor::cat(vec![cx.clone() - w.clone() * 0.5, cy.clone() - h.clone() * 0.5, cx + w * 0.5, cy + h * 0.5], 1)
}

/// [`generalized_box_iou`] of matching rows of two `[N, 4]` tensors of corner boxes (the
/// diagonal of detr's pairwise `generalized_box_iou`): `[N]`, differentiable.
pub fn generalized_box_iou_rows(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let n = a.dims()[0];
    let [ax0, ay0, ax1, ay1] = columns(a);
    let [bx0, by0, bx1, by1] = columns(b);
    let area_a = (ax1.clone() - ax0.clone()) * (ay1.clone() - ay0.clone());
    let area_b = (bx1.clone() - bx0.clone()) * (by1.clone() - by0.clone());
    let iw = (ax1.clone().min_pair(bx1.clone()) - ax0.clone().max_pair(bx0.clone())).clamp_min(0.0);
    let ih = (ay1.clone().min_pair(by1.clone()) - ay0.clone().max_pair(by0.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = area_a + area_b - inter.clone();
    let ew = ax1.max_pair(bx1) - ax0.min_pair(bx0);
    let eh = ay1.max_pair(by1) - ay0.min_pair(by0);
    let enclosing = ew * eh;
    (inter / union.clone() - (enclosing.clone() - union) / enclosing).reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let cxcywh = [0.5, 0.25, 0.5, 0.25];
        let xyxy = box_cxcywh_to_xyxy(cxcywh);
        assert_eq!(xyxy, [0.25, 0.125, 0.75, 0.375]);
        assert_eq!(box_xyxy_to_cxcywh(xyxy), cxcywh);
        assert_eq!(box_xyxy_to_xywh([10.0, 20.0, 40.0, 25.0]), [10.0, 20.0, 30.0, 5.0]);
        assert_eq!(box_xywh_to_xyxy([10u32, 20, 30, 5]), [10, 20, 40, 25]);
        assert_eq!(scale_box(xyxy, 100.0, 8.0), [25.0, 1.0, 75.0, 3.0]);
        assert_eq!(clip_box([-5.0, 2.0, 130.0, 90.0], 100.0, 80.0), [0.0, 2.0, 100.0, 80.0]);
    }

    #[test]
    fn areas_and_overlaps() {
        assert_eq!(box_area([1.0, 2.0, 4.0, 6.0]), 12.0);
        assert!(box_has_area([1.0, 2.0, 4.0, 6.0]));
        assert!(!box_has_area([1.0, 2.0, 1.0, 6.0]));
        assert!(boxes_overlap([0, 0, 10, 10], [9, 9, 20, 20]));
        assert!(!boxes_overlap([0, 0, 10, 10], [10, 0, 20, 10]), "touching edges do not overlap");
    }

    #[test]
    fn iou_and_giou_of_known_boxes() {
        // Two 2x2 squares overlapping in a 1x2 strip: union 4 + 4 - 2 = 6, enclosing 3x2 = 6.
        let (a, b) = ([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]);
        assert_eq!(box_iou(a, b), 2.0 / 6.0);
        assert_eq!(generalized_box_iou(a, b), 2.0 / 6.0);
        // Disjoint 1x1 squares 1 apart: IoU 0, enclosing 3x1, GIoU = -(3 - 2) / 3.
        let (a, b) = ([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]);
        assert_eq!(box_iou(a, b), 0.0);
        assert_eq!(generalized_box_iou(a, b), -1.0 / 3.0);
        assert!(generalized_box_iou(a, b) < 0.0);
        assert_eq!(generalized_box_iou(a, a), 1.0);
    }

    #[test]
    fn tensor_forms_match_the_scalar_ones() {
        let device = Device::flex();
        let a = [[0.5, 0.5, 0.4, 0.2], [0.3, 0.6, 0.2, 0.5], [0.2, 0.2, 0.1, 0.1]];
        let b = [[0.45, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.5], [0.8, 0.8, 0.2, 0.2]];
        let tensor = |rows: [[f32; 4]; 3]| Tensor::<2>::from_data(TensorData::new(rows.concat(), [3, 4]), &device);
        let xyxy = box_cxcywh_to_xyxy_tensor(tensor(a));
        let expected: Vec<f32> = a.iter().flat_map(|&r| box_cxcywh_to_xyxy(r)).collect();
        assert_eq!(xyxy.clone().into_data().try_into_vec::<f32>().unwrap(), expected);
        let giou = generalized_box_iou_rows(xyxy, box_cxcywh_to_xyxy_tensor(tensor(b)));
        let expected: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(&p, &t)| generalized_box_iou(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(t)))
            .collect();
        assert_eq!(giou.into_data().try_into_vec::<f32>().unwrap(), expected);
        assert_eq!(expected[1], 1.0);
        assert!(expected[2] < 0.0);
    }
}
