//! COCO's object categories, and a COCO detection set (instances JSON + image folder) as
//! DETR's training reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::coco_eval::CocoGroundTruth;

/// One annotated box in pixels of its image.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoBox {
    pub category_id: u64,
    /// `[x, y, width, height]`, as the annotation file gives it.
    pub bbox: [f64; 4],
    pub crowd: bool,
}

/// One image of a detection set and its annotations.
#[derive(Debug, Clone)]
pub struct CocoSample {
    pub image_id: u64,
    pub path: PathBuf,
    pub annotations: Vec<CocoBox>,
}

/// A COCO detection set: every image the annotation file lists (ids ascending), with its boxes.
#[derive(Debug, Clone)]
pub struct CocoDetection {
    pub annotations_file: PathBuf,
    pub samples: Vec<CocoSample>,
    /// The annotation file as the COCO evaluation reads it, to score detections on this set.
    pub ground_truth: CocoGroundTruth,
}

impl CocoDetection {
    /// Reads `instances_*.json`; the images are `images/<file_name>`. Every listed image must
    /// exist, and the set must not be empty.
    pub fn open(annotations_json: &Path, images: &Path) -> Result<Self, DataError> {
        let gt = CocoGroundTruth::from_file(annotations_json).map_err(|e| DataError::Invalid(e.to_string()))?;
        let mut by_image: BTreeMap<u64, Vec<CocoBox>> = gt.image_ids().into_iter().map(|id| (id, vec![])).collect();
        for (image_id, category_id, bbox, crowd) in gt.boxes() {
            by_image.entry(image_id).or_default().push(CocoBox { category_id, bbox, crowd });
        }
        let samples = by_image
            .into_iter()
            .map(|(image_id, annotations)| {
                let name = gt.file_name(image_id).ok_or_else(|| {
                    DataError::Invalid(format!("{}: image {image_id} has no file_name", annotations_json.display()))
                })?;
                let path = images.join(name);
                if !path.is_file() {
                    return Err(DataError::Invalid(format!(
                        "{}: image {image_id} is {}, which does not exist",
                        annotations_json.display(),
                        path.display()
                    )));
                }
                Ok(CocoSample { image_id, path, annotations })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if samples.is_empty() {
            return Err(DataError::Invalid(format!("{} lists no images", annotations_json.display())));
        }
        Ok(Self { annotations_file: annotations_json.to_path_buf(), samples, ground_truth: gt })
    }

    /// A description of the annotations whose category is not in the file's `categories` (left
    /// out of training and of the scores), if there are any.
    pub fn unknown_categories(&self) -> Option<String> {
        let unknown = self.ground_truth.unknown_category_annotations();
        let &(id, category_id) = unknown.first()?;
        Some(format!(
            "{}: {} annotations have a category_id that its categories do not list (the first: annotation {id}, \
             category_id {category_id})",
            self.annotations_file.display(),
            unknown.len()
        ))
    }

    /// Category ids and names, ascending.
    pub fn categories(&self) -> &[(u64, String)] {
        self.ground_truth.categories()
    }

    /// The largest category id, which a detector's `num_classes` must exceed.
    pub fn max_category_id(&self) -> u64 {
        self.categories().iter().map(|&(id, _)| id).max().unwrap_or(0)
    }

    /// `(image_id, path)` of every image, in id order.
    pub fn files(&self) -> Vec<(u64, PathBuf)> {
        self.samples.iter().map(|s| (s.image_id, s.path.clone())).collect()
    }
}

/// COCO 2017 category names indexed by category id (0 and the ten unused ids are "N/A"), the
/// label space of DETR's COCO checkpoints (91 classes).
pub const COCO_CATEGORY_NAMES: [&str; 91] = [
    "N/A",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every category of a real COCO annotation file has its name at its id.
    #[test]
    fn names_match_real_coco_annotations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infer/tests/data/coco_val2014_100/instances.json");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let categories = json["categories"].as_array().unwrap();
        assert_eq!(categories.len(), 80);
        for c in categories {
            assert_eq!(COCO_CATEGORY_NAMES[c["id"].as_u64().unwrap() as usize], c["name"].as_str().unwrap());
        }
        assert_eq!(COCO_CATEGORY_NAMES.iter().filter(|n| **n != "N/A").count(), 80);
    }
}
