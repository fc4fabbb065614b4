//! COCO's object categories.

/// COCO 2017 category names indexed by category id (0 and the ten unused ids are "N/A"), the
/// label space of DETR's COCO checkpoints (91 classes).
pub const COCO_CATEGORY_NAMES: [&str; 91] = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
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
