//! DETR's training transform moves the boxes with the image: after random flips, resizes and
//! crops, each target box still frames the pixels of its object. Also COCO annotations to
//! targets (crowd, clamping, degenerate boxes), the generated objects set, and the errors of a
//! bad detection set.

use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use zoo_datasets::coco::CocoBox;
use zoo_datasets::config::{DataConfig, DetrAugmentConfig};
use zoo_datasets::generate_detection::generate_objects;
use zoo_datasets::{CocoDetection, DetrTrainTransform, PixelBoxes};

const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];

/// A black 240x180 image with a red and a green rectangle.
fn scene() -> (RgbImage, PixelBoxes) {
    let boxes = [[30.0, 20.0, 110.0, 90.0], [140.0, 100.0, 220.0, 170.0]];
    let img = RgbImage::from_fn(240, 180, |x, y| {
        let (x, y) = (x as f32 + 0.5, y as f32 + 0.5);
        let within = |b: [f32; 4]| x > b[0] && x < b[2] && y > b[1] && y < b[3];
        Rgb(if within(boxes[0]) {
            RED
        } else if within(boxes[1]) {
            GREEN
        } else {
            [0, 0, 0]
        })
    });
    (img, PixelBoxes { labels: vec![1, 2], boxes: boxes.to_vec() })
}

/// The extent `[x0, y0, x1, y1]` of the pixels whose `channel` is the brightest, if any.
fn extent(values: &[f32], (h, w): (usize, usize), channel: usize) -> Option<[f32; 4]> {
    let mut found: Option<[f32; 4]> = None;
    for y in 0..h {
        for x in 0..w {
            let v = |c: usize| values[(c * h + y) * w + x];
            // Identity normalisation: values are pixel / 255.
            if v(channel) > 0.5 && (0..3).filter(|&c| c != channel).all(|c| v(c) < 0.5) {
                let (fx, fy) = (x as f32, y as f32);
                found = Some(match found {
                    None => [fx, fy, fx + 1.0, fy + 1.0],
                    Some(b) => [b[0].min(fx), b[1].min(fy), b[2].max(fx + 1.0), b[3].max(fy + 1.0)],
                });
            }
        }
    }
    found
}

#[test]
fn boxes_follow_the_pixels() {
    let (img, boxes) = scene();
    let augment = DetrAugmentConfig {
        scales: vec![96, 128, 160],
        max_size: 220,
        crop_scales: vec![120, 150],
        crop_size: [60, 110],
    };
    let data = DataConfig { mean: [0.0; 3], std: [1.0; 3], ..DataConfig::default() };
    let transform = DetrTrainTransform::new(&augment, 0.5, &data);
    let (mut flipped, mut cropped_away) = (0, 0);
    for seed in 0..60 {
        let (out, target) = transform.apply(&img, &boxes, &mut StdRng::seed_from_u64(seed));
        assert!(out.height.min(out.width) <= 160 && out.height.max(out.width) <= 220, "{}x{}", out.height, out.width);
        for (label, channel) in [(1, 0), (2, 1)] {
            let pixels = extent(&out.values, (out.height, out.width), channel);
            let Some(i) = target.labels.iter().position(|&l| l == label) else {
                // A box dropped by the crop: its object is (almost) out of the picture.
                assert!(
                    pixels.is_none_or(|p| (p[2] - p[0]) * (p[3] - p[1]) < 9.0),
                    "seed {seed}: label {label} dropped, pixels {pixels:?}"
                );
                cropped_away += 1;
                continue;
            };
            let [cx, cy, bw, bh] = target.boxes[i];
            let (w, h) = (out.width as f32, out.height as f32);
            let b = [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h];
            let p = pixels.unwrap_or_else(|| panic!("seed {seed}: no pixels of label {label} for box {b:?}"));
            // Bilinear resampling blurs edges by about a pixel.
            for k in 0..4 {
                assert!((p[k] - b[k]).abs() <= 2.0, "seed {seed} label {label}: box {b:?}, pixels {p:?}");
            }
            if label == 1 && b[0] > w / 2.0 {
                flipped += 1;
            }
        }
    }
    // The random choices were all exercised.
    assert!(flipped > 5 && cropped_away > 0, "flipped {flipped}, cropped away {cropped_away}");
}

#[test]
fn coco_annotations_become_targets() {
    let ann = |bbox: [f64; 4], crowd: bool| CocoBox { category_id: 7, bbox, crowd };
    let boxes = PixelBoxes::from_coco(
        &[
            ann([10.0, 10.0, 20.0, 30.0], false),
            ann([0.0, 0.0, 50.0, 50.0], true),
            ann([90.0, -5.0, 30.0, 20.0], false),
            ann([40.0, 40.0, 0.0, 10.0], false),
        ],
        (60, 100),
    );
    // Crowd left out, the third clamped to the image, the empty fourth dropped.
    assert_eq!(boxes.labels, vec![7, 7]);
    assert_eq!(boxes.boxes, vec![[10.0, 10.0, 30.0, 40.0], [90.0, 0.0, 100.0, 15.0]]);
    let t = boxes.to_target((60, 100));
    assert_eq!(t.boxes[0], [0.2, 25.0 / 60.0, 0.2, 0.5]);
}

#[test]
fn generated_objects_are_where_their_boxes_say() {
    let dir = tempfile::tempdir().unwrap();
    let [train, val] = generate_objects(dir.path(), 6, 2, 1).unwrap();
    let set = CocoDetection::open(&train, &dir.path().join("train")).unwrap();
    assert_eq!(set.samples.len(), 6);
    assert_eq!(CocoDetection::open(&val, &dir.path().join("val")).unwrap().samples.len(), 2);
    assert_eq!(set.categories().iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["square", "disc", "triangle"]);
    for sample in &set.samples {
        assert!(!sample.annotations.is_empty());
        let img = image::open(&sample.path).unwrap().to_rgb8();
        for a in &sample.annotations {
            // The object's colour channel is bright at the centre of a square or disc, and near
            // the bottom centre of a triangle.
            let [x, y, w, h] = a.bbox;
            let py = if a.category_id == 3 { y + 0.8 * h } else { y + 0.5 * h };
            let px = img.get_pixel((x + 0.5 * w) as u32, py as u32);
            assert!(px[a.category_id as usize - 1] > 140, "{:?} at {:?}: {px:?}", sample.path, a.bbox);
        }
    }
}

#[test]
fn bad_detection_sets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let [train, _] = generate_objects(dir.path(), 2, 1, 1).unwrap();
    std::fs::remove_file(dir.path().join("train/000002.png")).unwrap();
    let err = CocoDetection::open(&train, &dir.path().join("train")).unwrap_err().to_string();
    assert!(
        err.contains("instances_train.json") && err.contains("000002.png") && err.contains("does not exist"),
        "{err}"
    );

    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"images": [], "annotations": [], "categories": []}"#).unwrap();
    let err = CocoDetection::open(&empty, dir.path()).unwrap_err().to_string();
    assert!(err.contains("empty.json") && err.contains("no images"), "{err}");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1"#)
        .unwrap();
    let err = CocoDetection::open(&broken, dir.path()).unwrap_err().to_string();
    assert!(err.contains("broken.json"), "{err}");
}
