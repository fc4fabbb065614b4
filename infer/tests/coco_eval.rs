//! The COCO bbox evaluator against pycocotools 2.0.11: fixtures under tests/data, with expected
//! results written by scripts/make_coco_fixtures.py. Stats and per-category AP must be
//! bit-identical to pycocotools' float64 results.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use zoo_infer::coco_eval::*;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data")
}

/// A float written by the fixture script as the hex of its IEEE 754 bits.
fn from_bits(v: &Value) -> f64 {
    f64::from_bits(u64::from_str_radix(v.as_str().expect("hex string"), 16).expect("16 hex digits"))
}

/// Evaluates a fixture directory and compares with its expected.json, exactly.
fn check_case(dir: &Path) {
    let gt = CocoGroundTruth::from_file(&dir.join("instances.json")).unwrap();
    let dets = load_detections(&dir.join("detections.json"), &gt).unwrap();
    let result = evaluate(&gt, &dets);
    let expected: Value = serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();

    let stats: Vec<f64> = expected["stats_bits"].as_array().unwrap().iter().map(from_bits).collect();
    let max_diff = stats.iter().zip(result.stats).map(|(e, r)| (e - r).abs()).fold(0.0, f64::max);
    assert!(
        stats.iter().zip(result.stats).all(|(e, r)| e.to_bits() == r.to_bits()),
        "{}: stats differ from pycocotools (max |diff| {max_diff:e})\n expected {stats:?}\n      got {:?}",
        dir.display(),
        result.stats
    );

    let categories = expected["per_category_ap"].as_array().unwrap();
    assert_eq!(categories.len(), result.per_category_ap.len(), "{}", dir.display());
    for (e, (id, name, ap)) in categories.iter().zip(&result.per_category_ap) {
        assert_eq!(e["id"].as_u64(), Some(*id));
        assert_eq!(e["name"].as_str(), Some(name.as_str()));
        let expected_ap = from_bits(&e["ap_bits"]);
        assert_eq!(expected_ap.to_bits(), ap.to_bits(), "{}: category {id}: {expected_ap} vs {ap}", dir.display());
    }
}

#[test]
fn coco_val2014_100_matches_pycocotools() {
    let dir = data_dir().join("coco_val2014_100");
    check_case(&dir);

    // The summary prints what pycocotools prints.
    let gt = CocoGroundTruth::from_file(&dir.join("instances.json")).unwrap();
    let result = evaluate(&gt, &load_detections(&dir.join("detections.json"), &gt).unwrap());
    let summary = result.summary();
    assert_eq!(summary.lines().count(), 12);
    assert_eq!(
        summary.lines().next(),
        Some(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505")
    );
    assert_eq!(
        summary.lines().last(),
        Some(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.564")
    );
}

#[test]
fn random_cases_match_pycocotools() {
    let mut dirs: Vec<PathBuf> = fs::read_dir(data_dir().join("coco_random"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "expected the generated cases under tests/data/coco_random");
    for dir in &dirs {
        check_case(dir);
    }
}

/// Writes `contents` to a file in a fresh temporary directory.
fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, contents).unwrap();
    (dir, path)
}

const GT: &str = r#"{"images": [{"id": 1}, {"id": 2}],
 "categories": [{"id": 3, "name": "person"}],
 "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}]}"#;

fn detections_error(contents: &str) -> (String, String) {
    let gt = CocoGroundTruth::from_json_str(GT).unwrap();
    let (_dir, path) = temp_file("my_detections.json", contents);
    let message = load_detections(&path, &gt).unwrap_err().to_string();
    (path.display().to_string(), message)
}

#[test]
fn malformed_json_names_file_and_position() {
    let (path, message) =
        detections_error("[{\"image_id\": 1, \"category_id\": 3,\n  \"bbox\": [0, 0, 1, 1] \"score\": 0.5}]");
    assert!(message.starts_with(&format!("{path}: malformed JSON")), "{message}");
    assert!(message.contains("line 2 column 24"), "{message}");

    let (_dir, path) = temp_file("instances.json", "{\"images\": [{\"id\": 1},]}");
    let message = CocoGroundTruth::from_file(&path).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: malformed JSON", path.display())), "{message}");
    assert!(message.contains("line 1 column"), "{message}");
}

#[test]
fn unknown_image_is_an_error() {
    let (path, message) =
        detections_error(r#"[{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]"#);
    assert!(message.starts_with(&path), "{message}");
    assert!(message.contains("image_id 7"), "{message}");
    assert!(message.contains("results do not correspond to current coco set"), "{message}");
}

#[test]
fn unknown_category_is_an_error() {
    let (path, message) = detections_error(
        r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5},
            {"image_id": 2, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
    );
    assert!(message.starts_with(&path), "{message}");
    assert!(message.contains("detection 1 has category_id 4"), "{message}");
}

#[test]
fn bad_bbox_and_missing_fields_are_errors() {
    let (path, message) =
        detections_error(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1, 5], "score": 0.5}]"#);
    assert!(message.starts_with(&path) && message.contains("bbox of 5 numbers"), "{message}");
    let (path, message) = detections_error(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]"#);
    assert!(message.starts_with(&path) && message.contains("missing field `score`"), "{message}");
    let (_, message) = detections_error(r#"{"image_id": 1}"#);
    assert!(message.contains("not a valid COCO document"), "{message}");
}

#[test]
fn unreadable_file_is_an_error() {
    let missing = data_dir().join("no_such_file.json");
    let message = CocoGroundTruth::from_file(&missing).unwrap_err().to_string();
    assert!(message.starts_with(&format!("cannot read {}", missing.display())), "{message}");
}
