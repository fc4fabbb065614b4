//! A small, learnable detection dataset in COCO's layout, made on the spot: one to three
//! objects (filled squares, discs and triangles, each category in its own colour family) at
//! random sizes and places on a noisy background, boxes known exactly. It stands in for COCO in
//! the tests and in `zoo demo`:
//!
//! ```text
//! <root>/train/000001.png ...        <root>/annotations/instances_train.json
//! <root>/val/000001.png ...          <root>/annotations/instances_val.json
//! ```

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use zoo_models::box_ops::{box_xywh_to_xyxy, boxes_overlap};

use crate::DataError;

/// Category names by category id (ids start at 1, as in COCO).
pub const OBJECTS: [&str; 3] = ["square", "disc", "triangle"];

/// One placed object: category id and `[x, y, width, height]` in pixels.
struct Object {
    category_id: u64,
    bbox: [u32; 4],
}

fn inside(category_id: u64, [x, y, w, h]: [u32; 4], px: u32, py: u32) -> bool {
    if px < x || py < y || px >= x + w || py >= y + h {
        return false;
    }
    // Offsets from the box's top-left corner, in [0, 1].
    let u = ((px - x) as f32 + 0.5) / w as f32;
    let v = ((py - y) as f32 + 0.5) / h as f32;
    match OBJECTS[category_id as usize - 1] {
        "square" => true,
        "disc" => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
        // Apex at the top centre, base along the bottom edge.
        _ => (u - 0.5).abs() <= 0.5 * v,
    }
}

/// An image with its objects, drawn from `rng`: `canvas` x `canvas` pixels, or of a random size.
fn scene(rng: &mut StdRng, canvas: Option<u32>) -> (RgbImage, Vec<Object>) {
    let (width, height) = match canvas {
        Some(side) => (side, side),
        None => (rng.random_range(96..=160u32), rng.random_range(96..=160u32)),
    };
    let mut objects: Vec<Object> = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        // A few tries to place an object that does not overlap the others.
        for _ in 0..20 {
            let (w, h) = (rng.random_range(24..=64u32), rng.random_range(24..=64u32));
            let bbox = [rng.random_range(0..=width - w), rng.random_range(0..=height - h), w, h];
            let overlaps = objects.iter().any(|o| boxes_overlap(box_xywh_to_xyxy(o.bbox), box_xywh_to_xyxy(bbox)));
            if !overlaps {
                objects.push(Object { category_id: rng.random_range(1..=OBJECTS.len() as u64), bbox });
                break;
            }
        }
    }
    // Each category's colour is one channel bright and the others dim; the background is gray.
    let colours: Vec<[f32; 3]> = objects
        .iter()
        .map(|o| {
            let mut c = [rng.random_range(0.0..90.0), rng.random_range(0.0..90.0), rng.random_range(0.0..90.0)];
            c[o.category_id as usize - 1] = rng.random_range(170.0..255.0);
            c
        })
        .collect();
    let gray = rng.random_range(90.0..170.0f32);
    let image = RgbImage::from_fn(width, height, |px, py| {
        let base = objects
            .iter()
            .zip(&colours)
            .find(|(o, _)| inside(o.category_id, o.bbox, px, py))
            .map_or([gray; 3], |(_, c)| *c);
        let noise: f32 = rng.random_range(-25.0..25.0);
        Rgb(base.map(|c| (c + noise).clamp(0.0, 255.0) as u8))
    });
    (image, objects)
}

/// Writes `train_images` + `val_images` images (96 to 160 pixels wide and high) and their COCO
/// instances files under `root`; returns the paths of the two annotation files. An annotation's
/// `area` is its box's. The same seed gives the same files.
pub fn generate_objects(
    root: &Path,
    train_images: usize,
    val_images: usize,
    seed: u64,
) -> Result<[PathBuf; 2], DataError> {
    write_objects(root, train_images, val_images, seed, None)
}

/// [`generate_objects`] with every image `side` x `side` pixels.
pub fn generate_objects_square(
    root: &Path,
    train_images: usize,
    val_images: usize,
    seed: u64,
    side: u32,
) -> Result<[PathBuf; 2], DataError> {
    write_objects(root, train_images, val_images, seed, Some(side))
}

fn write_objects(
    root: &Path,
    train_images: usize,
    val_images: usize,
    seed: u64,
    canvas: Option<u32>,
) -> Result<[PathBuf; 2], DataError> {
    let io =
        |path: &Path, e: &dyn std::fmt::Display| DataError::Invalid(format!("cannot write {}: {e}", path.display()));
    let annotations_dir = root.join("annotations");
    std::fs::create_dir_all(&annotations_dir).map_err(|e| io(&annotations_dir, &e))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let categories: Vec<_> = OBJECTS
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"id": i + 1, "name": name, "supercategory": "shape"}))
        .collect();
    let mut written = Vec::new();
    let mut annotation_id = 0;
    for (split, count) in [("train", train_images), ("val", val_images)] {
        let dir = root.join(split);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, &e))?;
        let (mut images, mut annotations) = (Vec::new(), Vec::new());
        for image_id in 1..=count {
            let (image, objects) = scene(&mut rng, canvas);
            let file_name = format!("{image_id:06}.png");
            let path = dir.join(&file_name);
            image.save(&path).map_err(|e| io(&path, &e))?;
            images.push(
                json!({"id": image_id, "file_name": file_name, "width": image.width(), "height": image.height()}),
            );
            for o in objects {
                annotation_id += 1;
                let [x, y, w, h] = o.bbox;
                annotations.push(json!({
                    "id": annotation_id, "image_id": image_id, "category_id": o.category_id,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                }));
            }
        }
        let path = annotations_dir.join(format!("instances_{split}.json"));
        let doc = json!({"images": images, "annotations": annotations, "categories": categories});
        std::fs::write(&path, doc.to_string()).map_err(|e| io(&path, &e))?;
        written.push(path);
    }
    Ok(written.try_into().expect("two splits"))
}
