//! COCO bounding-box evaluation, reproducing pycocotools' `COCOeval` (version 2.0.11) with
//! `iouType="bbox"`: the same twelve summary statistics from the same float64 arithmetic.
//!
//! The stages follow the Python API: `COCO.loadRes` checks the detections against the ground
//! truth ([`load_detections`]), `evaluateImg` greedily matches detections to ground truth for every
//! image, category and area range, `accumulate` builds the precision/recall curves of every
//! category, and `summarize` averages them ([`evaluate`]). Unlike pycocotools, ground truth and
//! detections are filed by (image, category) with one sort, the per-image matching and the
//! per-category accumulation run in parallel, each category's detections are ranked once for all
//! area ranges and detection limits, and precision is computed only where recall rises.
//!
//! Numbers are parsed by serde_json. Without its `float_roundtrip` feature, a decimal with more
//! than about 16 significant digits may parse one ulp away from Python's value; short decimals
//! (as detectors and the COCO annotation files write them) parse exactly.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;
use zoo_models::box_ops::box_xywh_to_xyxy;

/// Number of IoU thresholds, `.50:.05:.95`.
const NUM_IOU_THRS: usize = 10;
/// Number of recall thresholds, `0:.01:1`.
const NUM_REC_THRS: usize = 101;
/// `Params.maxDets`: detections kept per image and category.
const MAX_DETS: [usize; 3] = [1, 10, 100];
/// `Params.areaRng`, bounds inclusive: all, small, medium, large.
const AREA_RANGES: [[f64; 2]; 4] = [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];
const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];
/// Index of the `all` area range and of the 100-detection limit.
const AREA_ALL: usize = 0;
const MAX_DETS_100: usize = 2;
/// One bit per IoU threshold.
const ALL_THRS: u16 = (1 << NUM_IOU_THRS) - 1;

const T: usize = NUM_IOU_THRS;
const R: usize = NUM_REC_THRS;
const A: usize = AREA_RANGES.len();
const M: usize = MAX_DETS.len();

/// Errors from loading ground truth or detections. Each names its origin: the file path, or
/// `<ground-truth JSON>` / `<detections JSON>` when parsing a string.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Invalid JSON, or JSON that is not a COCO instances / results document. serde's message
    /// carries the line and column.
    #[error("{origin}: {kind}: {source}")]
    Json {
        origin: String,
        kind: &'static str,
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{origin}: detection {index} has image_id {image_id}, which is not an image of the \
         ground truth (results do not correspond to current coco set)"
    )]
    UnknownImage { origin: String, index: usize, image_id: u64 },
    #[error(
        "{origin}: detection {index} has category_id {category_id}, which is not a category of \
         the ground truth"
    )]
    UnknownCategory { origin: String, index: usize, category_id: u64 },
    #[error("{origin}: {item} has a non-finite {field}")]
    NonFinite { origin: String, item: String, field: &'static str },
    #[error("{origin}: {item} has a bbox of {len} numbers, expected 4 (x, y, width, height)")]
    BadBbox { origin: String, item: String, len: usize },
}

impl CocoError {
    fn json(origin: &str, source: serde_json::Error) -> Self {
        let kind = match source.classify() {
            serde_json::error::Category::Data => "not a valid COCO document",
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "malformed JSON",
        };
        CocoError::Json { origin: origin.to_string(), kind, line: source.line(), column: source.column(), source }
    }
}

/// One detection of a COCO results file: `bbox` is `[x, y, width, height]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// A ground-truth annotation as `COCOeval._prepare` sees it.
#[derive(Debug, Clone)]
struct GtAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    /// The annotation's `area` field (the segmentation area), not the box area.
    area: f64,
    /// `int(iscrowd) != 0`: a crowd region matches any number of detections, and its IoU uses
    /// the detection's area as the union.
    crowd: bool,
    /// `_prepare` sets `ignore` to the truth of `iscrowd`, overriding any `ignore` field.
    ignore: bool,
}

/// A COCO instances file: its images, categories and box annotations.
#[derive(Debug, Clone)]
pub struct CocoGroundTruth {
    /// Sorted, distinct image ids (`Params.imgIds`).
    image_ids: Vec<u64>,
    /// Sorted, distinct category ids with their names (`Params.catIds`).
    categories: Vec<(u64, String)>,
    /// Each image's `file_name`, by id (empty where the file does not give one).
    file_names: HashMap<u64, String>,
    /// The annotations `_prepare` loads, in its order: images by id, each image's annotations in
    /// file order, only those of known images and categories.
    annotations: Vec<GtAnnotation>,
    /// `(annotation id, category_id)` of the annotations left out because their category is not
    /// in `categories` (pycocotools leaves them out silently).
    unknown_category: Vec<(u64, u64)>,
}

#[derive(Deserialize)]
#[serde(expecting = "a COCO instances object (images, annotations, categories)")]
struct RawDataset {
    #[serde(default)]
    images: Vec<RawImage>,
    #[serde(default)]
    annotations: Vec<RawAnnotation>,
    #[serde(default)]
    categories: Vec<RawCategory>,
}

#[derive(Deserialize)]
struct RawImage {
    id: u64,
    #[serde(default)]
    file_name: String,
}

#[derive(Deserialize)]
struct RawCategory {
    id: u64,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(expecting = "a COCO annotation object")]
struct RawAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    area: f64,
    /// pycocotools fails without it; absent counts as 0 here.
    #[serde(default)]
    iscrowd: Option<CrowdFlag>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "expected iscrowd to be a number or a boolean")]
enum CrowdFlag {
    Bool(bool),
    Number(f64),
}

#[derive(Deserialize)]
#[serde(expecting = "a COCO result object (image_id, category_id, bbox, score)")]
struct RawDetection {
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    score: f64,
}

/// Checks a JSON bbox: four finite numbers.
fn parse_bbox(values: &[f64], origin: &str, item: impl Fn() -> String) -> Result<[f64; 4], CocoError> {
    let bbox: [f64; 4] = values.try_into().map_err(|_| CocoError::BadBbox {
        origin: origin.to_string(),
        item: item(),
        len: values.len(),
    })?;
    check_finite(&bbox, origin, &item, "bbox")?;
    Ok(bbox)
}

fn check_finite(values: &[f64], origin: &str, item: impl Fn() -> String, field: &'static str) -> Result<(), CocoError> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(CocoError::NonFinite { origin: origin.to_string(), item: item(), field })
    }
}

fn read_file(path: &Path) -> Result<String, CocoError> {
    std::fs::read_to_string(path).map_err(|source| CocoError::Io { path: path.to_path_buf(), source })
}

impl CocoGroundTruth {
    /// Loads a COCO instances JSON file (`images`, `annotations`, `categories`).
    pub fn from_file(path: &Path) -> Result<Self, CocoError> {
        Self::parse(&read_file(path)?, &path.display().to_string())
    }

    /// Parses a COCO instances JSON document.
    pub fn from_json_str(s: &str) -> Result<Self, CocoError> {
        Self::parse(s, "<ground-truth JSON>")
    }

    fn parse(s: &str, origin: &str) -> Result<Self, CocoError> {
        // serde reads a struct from a JSON array too (its fields in order): `[]` would be an
        // empty ground truth that scores -1 everywhere instead of an error.
        if s.trim_start().starts_with('[') {
            use serde::de::{Error, Unexpected};
            let e = serde_json::Error::invalid_type(
                Unexpected::Seq,
                &"a COCO instances object (images, annotations, categories)",
            );
            return Err(CocoError::json(origin, e));
        }
        let raw: RawDataset = serde_json::from_str(s).map_err(|e| CocoError::json(origin, e))?;

        let mut image_ids: Vec<u64> = raw.images.iter().map(|image| image.id).collect();
        image_ids.sort_unstable();
        image_ids.dedup();

        // `COCO.cats` is keyed by id: a repeated id keeps its last entry.
        let names: HashMap<u64, String> = raw.categories.into_iter().map(|c| (c.id, c.name)).collect();
        let mut categories: Vec<(u64, String)> = names.into_iter().collect();
        categories.sort_unstable_by_key(|&(id, _)| id);

        let mut annotations = Vec::with_capacity(raw.annotations.len());
        for (index, ann) in raw.annotations.iter().enumerate() {
            let item = || format!("annotation {index} (id {})", ann.id);
            let bbox = parse_bbox(&ann.bbox, origin, item)?;
            check_finite(&[ann.area], origin, item, "area")?;
            let (crowd, ignore) = match ann.iscrowd {
                None => (false, false),
                Some(CrowdFlag::Bool(b)) => (b, b),
                Some(CrowdFlag::Number(x)) => (x.trunc() != 0.0, x != 0.0),
            };
            annotations.push(GtAnnotation {
                id: ann.id,
                image_id: ann.image_id,
                category_id: ann.category_id,
                bbox,
                area: ann.area,
                crowd,
                ignore,
            });
        }

        // `getAnnIds(imgIds, catIds)` lists annotations image by image in id order, keeping those
        // of known categories; `loadAnns` then looks each id up in a dict, so an annotation id that
        // occurs twice stands for its last occurrence both times.
        let image_rank: HashMap<u64, usize> = image_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let category_set: HashSet<u64> = categories.iter().map(|&(id, _)| id).collect();
        let last_with_id: HashMap<u64, usize> = annotations.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
        let mut listed: Vec<(usize, usize)> = annotations
            .iter()
            .enumerate()
            .filter(|(_, a)| category_set.contains(&a.category_id))
            .filter_map(|(i, a)| image_rank.get(&a.image_id).map(|&rank| (rank, i)))
            .collect();
        listed.sort_by_key(|&(rank, _)| rank); // stable: file order within an image
        let annotations = listed.iter().map(|&(_, i)| annotations[last_with_id[&annotations[i].id]].clone()).collect();

        let unknown_category = raw
            .annotations
            .iter()
            .filter(|a| !category_set.contains(&a.category_id))
            .map(|a| (a.id, a.category_id))
            .collect();
        let file_names = raw.images.into_iter().map(|image| (image.id, image.file_name)).collect();
        Ok(CocoGroundTruth { image_ids, categories, file_names, annotations, unknown_category })
    }

    /// `(annotation id, category_id)` of the annotations whose category the file does not list;
    /// they are not scored (as pycocotools does) and not trained on.
    pub fn unknown_category_annotations(&self) -> &[(u64, u64)] {
        &self.unknown_category
    }

    /// The name of a category, if the ground truth has it.
    pub fn category_name(&self, id: u64) -> Option<&str> {
        let i = self.categories.binary_search_by_key(&id, |&(cid, _)| cid).ok()?;
        Some(&self.categories[i].1)
    }

    /// Sorted, distinct image ids.
    pub fn image_ids(&self) -> Vec<u64> {
        self.image_ids.clone()
    }

    /// The `file_name` of an image, if the ground truth gives one.
    pub fn file_name(&self, image_id: u64) -> Option<&str> {
        self.file_names.get(&image_id).map(String::as_str).filter(|n| !n.is_empty())
    }

    /// Sorted, distinct category ids.
    pub fn category_ids(&self) -> Vec<u64> {
        self.categories.iter().map(|&(id, _)| id).collect()
    }

    /// Sorted, distinct categories with their names.
    pub fn categories(&self) -> &[(u64, String)] {
        &self.categories
    }

    /// The box annotations of known images and categories, image by image (ids ascending), each
    /// image's in file order: `(image_id, category_id, [x, y, width, height], iscrowd)`.
    pub fn boxes(&self) -> impl Iterator<Item = (u64, u64, [f64; 4], bool)> + '_ {
        self.annotations.iter().map(|a| (a.image_id, a.category_id, a.bbox, a.crowd))
    }

    fn has_image(&self, id: u64) -> bool {
        self.image_ids.binary_search(&id).is_ok()
    }
}

/// Loads a COCO results file (a JSON list of `{image_id, category_id, bbox, score}`), checked
/// against the ground truth: every image and category must exist in it.
pub fn load_detections(path: &Path, gt: &CocoGroundTruth) -> Result<Vec<Detection>, CocoError> {
    parse_detections(&read_file(path)?, gt, &path.display().to_string())
}

/// Parses a COCO results JSON document; see [`load_detections`].
pub fn detections_from_json_str(s: &str, gt: &CocoGroundTruth) -> Result<Vec<Detection>, CocoError> {
    parse_detections(s, gt, "<detections JSON>")
}

fn parse_detections(s: &str, gt: &CocoGroundTruth, origin: &str) -> Result<Vec<Detection>, CocoError> {
    let raw: Vec<RawDetection> = serde_json::from_str(s).map_err(|e| CocoError::json(origin, e))?;
    raw.iter()
        .enumerate()
        .map(|(index, det)| {
            if !gt.has_image(det.image_id) {
                return Err(CocoError::UnknownImage { origin: origin.to_string(), index, image_id: det.image_id });
            }
            if gt.category_name(det.category_id).is_none() {
                let category_id = det.category_id;
                return Err(CocoError::UnknownCategory { origin: origin.to_string(), index, category_id });
            }
            let item = || format!("detection {index}");
            let bbox = parse_bbox(&det.bbox, origin, item)?;
            check_finite(&[det.score], origin, item, "score")?;
            Ok(Detection { image_id: det.image_id, category_id: det.category_id, bbox, score: det.score })
        })
        .collect()
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CocoEvalResult {
    /// `COCOeval.stats`: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.
    pub stats: [f64; 12],
    /// Per category in id order: (id, name, AP@[.50:.95] over all areas with 100 detections),
    /// the mean of `precision[:, :, k, 0, 2]` over entries > -1; -1 for a category without
    /// ground truth.
    pub per_category_ap: Vec<(u64, String, f64)>,
}

/// One line of `summarize`: average precision or recall, at one IoU threshold or over all,
/// for an area range and a detection limit (indices into `AREA_RANGES` and `MAX_DETS`).
struct StatSpec {
    precision: bool,
    iou: Option<f64>,
    area: usize,
    max_dets: usize,
}

const fn stat(precision: bool, iou: Option<f64>, area: usize, max_dets: usize) -> StatSpec {
    StatSpec { precision, iou, area, max_dets }
}

/// `_summarizeDets`, in `stats` order.
const STATS: [StatSpec; 12] = [
    stat(true, None, 0, 2),
    stat(true, Some(0.5), 0, 2),
    stat(true, Some(0.75), 0, 2),
    stat(true, None, 1, 2),
    stat(true, None, 2, 2),
    stat(true, None, 3, 2),
    stat(false, None, 0, 0),
    stat(false, None, 0, 1),
    stat(false, None, 0, 2),
    stat(false, None, 1, 2),
    stat(false, None, 2, 2),
    stat(false, None, 3, 2),
];

impl CocoEvalResult {
    /// `{"stats": [12 numbers], "per_category_ap": [{"id", "name", "ap"}, ...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let per_category: Vec<serde_json::Value> = self
            .per_category_ap
            .iter()
            .map(|(id, name, ap)| serde_json::json!({ "id": id, "name": name, "ap": ap }))
            .collect();
        serde_json::json!({ "stats": self.stats, "per_category_ap": per_category })
    }

    /// The twelve lines `COCOeval.summarize()` prints, joined by newlines (no trailing newline).
    pub fn summary(&self) -> String {
        let thrs = iou_thresholds();
        let lines: Vec<String> = STATS
            .iter()
            .zip(self.stats)
            .map(|(spec, value)| {
                let (title, kind) =
                    if spec.precision { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
                let iou = match spec.iou {
                    Some(t) => format!("{t:.2}"),
                    None => format!("{:.2}:{:.2}", thrs[0], thrs[T - 1]),
                };
                format!(
                    " {title:<18} {kind} @[ IoU={iou:<9} | area={:>6} | maxDets={:>3} ] = {value:.3}",
                    AREA_LABELS[spec.area], MAX_DETS[spec.max_dets]
                )
            })
            .collect();
        lines.join("\n")
    }
}

/// `np.linspace(start, stop, N)`: `i * step + start`, the last point exactly `stop`.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut points = [0.0; N];
    for (i, p) in points.iter_mut().enumerate() {
        *p = i as f64 * step + start;
    }
    points[N - 1] = stop;
    points
}

/// `Params.iouThrs`; the ninth is 0.8999999999999999, as in numpy.
fn iou_thresholds() -> [f64; T] {
    linspace::<T>(0.5, 0.95)
}

/// Sort key giving `np.argsort(-score, kind="mergesort")` under a stable sort: highest score
/// first, 0.0 and -0.0 equal, and a total order even for NaN.
fn descending(score: f64) -> f64 {
    -score + 0.0
}

fn by_descending_score(a: f64, b: f64) -> Ordering {
    descending(a).total_cmp(&descending(b))
}

/// `bbIou` of the COCO mask API (maskApi.c): IoU of every detection with every ground-truth box,
/// row-major by detection. For a crowd region the union is the detection's area. Not
/// [`box_iou`](zoo_models::box_ops::box_iou): besides crowds, maskApi.c works in f64 on
/// `[x, y, w, h]`, takes each area as `w * h` rather than from the corners, and gives 0 without
/// dividing when the boxes do not overlap; the statistics match pycocotools bit for bit only so.
fn bbox_ious(dts: &[&Detection], gts: &[&GtAnnotation]) -> Vec<f64> {
    let mut ious = Vec::with_capacity(dts.len() * gts.len());
    for d in dts {
        let [dx, dy, dw, dh] = d.bbox;
        let [_, _, dx1, dy1] = box_xywh_to_xyxy(d.bbox);
        let det_area = dw * dh;
        for g in gts {
            let [gx, gy, gw, gh] = g.bbox;
            let [_, _, gx1, gy1] = box_xywh_to_xyxy(g.bbox);
            let w = dx1.min(gx1) - dx.max(gx);
            let h = dy1.min(gy1) - dy.max(gy);
            let iou = if w <= 0.0 || h <= 0.0 {
                0.0
            } else {
                let inter = w * h;
                let union = if g.crowd { det_area } else { det_area + gw * gh - inter };
                inter / union
            };
            ious.push(iou);
        }
    }
    ious
}

/// A ground-truth annotation (`index` into the prepared annotations) or a detection (`index`
/// into the detections) filed under its (image, category) pair. The derived order sorts by pair,
/// then ground truth before detections, each in its original order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CellEntry {
    image: usize,
    category: usize,
    is_detection: bool,
    index: usize,
}

/// A detection after `evaluateImg`, per area range: bit t of `matched` is `dtMatches[t] != 0`,
/// bit t of `ignored` is `dtIgnore[t]`.
struct DetEval {
    score: f64,
    matched: [u16; A],
    ignored: [u16; A],
}

/// The result of `evaluateImg` for one (image, category) pair and every area range.
struct CellEval {
    /// Ground truth not ignored, per area range (this image's share of `npig`).
    num_regular_gt: [usize; A],
    /// At most 100 detections, highest score first.
    dets: Vec<DetEval>,
}

/// `evaluateImg` for one (image, category) pair, given its entries, and every area range.
fn evaluate_cell(gt: &CocoGroundTruth, dets: &[Detection], cell: &[CellEntry], iou_thrs: &[f64; T]) -> CellEval {
    let split = cell.partition_point(|e| !e.is_detection);
    let gts: Vec<&GtAnnotation> = cell[..split].iter().map(|e| &gt.annotations[e.index]).collect();
    let mut dts: Vec<&Detection> = cell[split..].iter().map(|e| &dets[e.index]).collect();
    dts.sort_by(|a, b| by_descending_score(a.score, b.score));
    dts.truncate(MAX_DETS[M - 1]);

    let ious = bbox_ious(&dts, &gts);
    let num_gts = gts.len();
    let mut evals: Vec<DetEval> =
        dts.iter().map(|d| DetEval { score: d.score, matched: [0; A], ignored: [0; A] }).collect();
    let mut num_regular_gt = [0; A];
    let mut gt_ignore = vec![false; num_gts];
    let mut gt_order = Vec::with_capacity(num_gts);
    let mut gt_matched = vec![0u16; num_gts]; // bit t: `gtMatches[t] != 0`

    for (a, &[lo, hi]) in AREA_RANGES.iter().enumerate() {
        let outside = |area: f64| area < lo || area > hi;
        for (ignore, g) in gt_ignore.iter_mut().zip(&gts) {
            *ignore = g.ignore || outside(g.area);
        }
        // `np.argsort(gtIgnore, kind="mergesort")`: regular ground truth first, each group in order.
        gt_order.clear();
        gt_order.extend((0..num_gts).filter(|&g| !gt_ignore[g]));
        num_regular_gt[a] = gt_order.len();
        gt_order.extend((0..num_gts).filter(|&g| gt_ignore[g]));
        gt_matched.fill(0);

        for (t, &thr) in iou_thrs.iter().enumerate() {
            let bit = 1u16 << t;
            for (d, eval) in evals.iter_mut().enumerate() {
                let row = &ious[d * num_gts..(d + 1) * num_gts];
                // Best match so far: needs IoU >= thr (capped below 1), ties go to the later gt.
                let mut best_iou = thr.min(1.0 - 1e-10);
                let mut best: Option<usize> = None;
                for &g in &gt_order {
                    if gt_matched[g] & bit != 0 && !gts[g].crowd {
                        continue;
                    }
                    // Matched to a regular gt and reached the ignored ones: stop.
                    if best.is_some_and(|m| !gt_ignore[m]) && gt_ignore[g] {
                        break;
                    }
                    if row[g] < best_iou {
                        continue;
                    }
                    best_iou = row[g];
                    best = Some(g);
                }
                if let Some(g) = best {
                    gt_matched[g] |= bit;
                    if gt_ignore[g] {
                        eval.ignored[a] |= bit;
                    }
                    // `dtMatches` holds the gt id and `accumulate` tests it against 0, so a match
                    // to ground truth with id 0 counts as no match.
                    if gts[g].id != 0 {
                        eval.matched[a] |= bit;
                    }
                }
            }
        }
        // Unmatched detections outside the area range are ignored.
        for (eval, d) in evals.iter_mut().zip(&dts) {
            if outside(d.bbox[2] * d.bbox[3]) {
                eval.ignored[a] |= !eval.matched[a] & ALL_THRS;
            }
        }
    }
    CellEval { num_regular_gt, dets: evals }
}

/// `accumulate` for one category: precision `[A][M][T][R]` and recall `[A][M][T]`, -1 where the
/// category has no regular ground truth in the area range. `cells` are its images in id order.
fn accumulate_category(cells: &[&CellEval], rec_thrs: &[f64; R]) -> (Vec<f64>, Vec<f64>) {
    let mut precision = vec![-1.0; A * M * T * R];
    let mut recall = vec![-1.0; A * M * T];

    // All detections, concatenated image by image, sorted by descending score with a stable sort.
    // The detections within a limit of `maxDet` per image are a subsequence of these, so filtering
    // this order gives the order `accumulate` sorts them into for every limit.
    let mut ranked: Vec<(&DetEval, usize)> =
        cells.iter().flat_map(|c| c.dets.iter().enumerate().map(|(rank, d)| (d, rank))).collect();
    ranked.sort_by(|a, b| by_descending_score(a.0.score, b.0.score));

    let mut tp_fp: Vec<(u16, u16)> = Vec::with_capacity(ranked.len());
    let mut steps: Vec<(f64, f64)> = Vec::new();
    for a in 0..A {
        let npig: usize = cells.iter().map(|c| c.num_regular_gt[a]).sum();
        if npig == 0 {
            continue;
        }
        for (m, &max_det) in MAX_DETS.iter().enumerate() {
            tp_fp.clear();
            tp_fp.extend(ranked.iter().filter(|&&(_, rank)| rank < max_det).map(|&(d, _)| {
                let counted = !d.ignored[a] & ALL_THRS;
                (d.matched[a] & counted, !d.matched[a] & counted)
            }));
            for t in 0..T {
                // Along the ranked detections (cumulative sums of tps and fps), recall and
                // precision rise only at a true positive; a false positive lowers precision, an
                // ignored detection leaves both as they are. So the first detection to reach a
                // recall threshold is a true positive, and the maximum precision from any
                // detection on is found among it and the true positives after it: only those
                // points, the steps, need recall `tp / npig` and precision `tp / (fp + tp + eps)`.
                let bit = 1u16 << t;
                let (mut tp, mut fp) = (0u64, 0u64);
                steps.clear();
                for &(tps, fps) in &tp_fp {
                    if tps & bit != 0 {
                        tp += 1;
                        let (tp, fp) = (tp as f64, fp as f64);
                        steps.push((tp / npig as f64, tp / (fp + tp + f64::EPSILON))); // eps = np.spacing(1)
                    } else if fps & bit != 0 {
                        fp += 1;
                    }
                }
                let cell = (a * M + m) * T + t;
                recall[cell] = if tp_fp.is_empty() { 0.0 } else { tp as f64 / npig as f64 };
                // Interpolated precision: the maximum to the right.
                for i in (1..steps.len()).rev() {
                    if steps[i].1 > steps[i - 1].1 {
                        steps[i - 1].1 = steps[i].1;
                    }
                }
                // `np.searchsorted(rc, recThrs, side="left")`; recall thresholds beyond the final
                // recall keep precision 0.
                let q = &mut precision[cell * R..(cell + 1) * R];
                let mut i = 0;
                for (r, &thr) in rec_thrs.iter().enumerate() {
                    while i < steps.len() && steps[i].0 < thr {
                        i += 1;
                    }
                    q[r] = if i < steps.len() { steps[i].1 } else { 0.0 };
                }
            }
        }
    }
    (precision, recall)
}

/// `np.sum` of a contiguous float64 array: numpy's pairwise summation (eight running sums in
/// blocks up to 128 items, halves split at a multiple of 8 above that).
fn pairwise_sum(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 8 {
        v.iter().fold(0.0, |sum, &x| sum + x)
    } else if n <= 128 {
        let mut r: [f64; 8] = v[..8].try_into().expect("8 items");
        let whole = n - n % 8;
        for block in v[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[whole..] {
            sum += x;
        }
        sum
    } else {
        let half = n / 2 - (n / 2) % 8;
        pairwise_sum(&v[..half]) + pairwise_sum(&v[half..])
    }
}

/// `summarize`'s average: `np.mean(s[s > -1])`, or -1 when nothing is > -1.
fn mean_of_valid(values: impl Iterator<Item = f64>) -> f64 {
    let valid: Vec<f64> = values.filter(|&v| v > -1.0).collect();
    if valid.is_empty() { -1.0 } else { pairwise_sum(&valid) / valid.len() as f64 }
}

/// Evaluates bounding-box detections against the ground truth as `COCOeval(gt, dt, "bbox")`'s
/// `evaluate()`, `accumulate()` and `summarize()` do. Detections of images or categories that
/// the ground truth lacks are left out, as pycocotools leaves them out.
pub fn evaluate(gt: &CocoGroundTruth, dets: &[Detection]) -> CocoEvalResult {
    let iou_thrs = iou_thresholds();
    let rec_thrs = linspace::<R>(0.0, 1.0);
    let num_cats = gt.categories.len();

    // File ground truth and detections under their (image, category) pair, both as positions in
    // the sorted ids, with one sort. Pairs with neither are `None` in `evalImgs`: no cell. Image
    // order follows the usual order of both files, for memory locality.
    let image_index: HashMap<u64, usize> = gt.image_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let category_index: HashMap<u64, usize> = gt.categories.iter().enumerate().map(|(k, &(id, _))| (id, k)).collect();
    let entry = |category_id: u64, image_id: u64, is_detection: bool, index: usize| {
        let category = *category_index.get(&category_id)?;
        let image = *image_index.get(&image_id)?;
        Some(CellEntry { image, category, is_detection, index })
    };
    let mut entries: Vec<CellEntry> = (gt.annotations.iter().enumerate())
        .filter_map(|(i, a)| entry(a.category_id, a.image_id, false, i))
        .chain(dets.iter().enumerate().filter_map(|(i, d)| entry(d.category_id, d.image_id, true, i)))
        .collect();
    entries.par_sort_unstable();
    let cells: Vec<&[CellEntry]> = entries.chunk_by(|a, b| (a.image, a.category) == (b.image, b.category)).collect();

    let evals: Vec<CellEval> = cells.par_iter().map(|cell| evaluate_cell(gt, dets, cell, &iou_thrs)).collect();

    let mut by_category: Vec<Vec<&CellEval>> = vec![Vec::new(); num_cats];
    for (cell, eval) in cells.iter().zip(&evals) {
        by_category[cell[0].category].push(eval); // in image order
    }
    let per_category: Vec<(Vec<f64>, Vec<f64>)> =
        by_category.par_iter().map(|cells| accumulate_category(cells, &rec_thrs)).collect();

    // `summarize` reads `precision[T, R, K, A, M]` and `recall[T, K, A, M]` in C order.
    let precision_at =
        |t: usize, r: usize, k: usize, a: usize, m: usize| per_category[k].0[((a * M + m) * T + t) * R + r];
    let recall_at = |t: usize, k: usize, a: usize, m: usize| per_category[k].1[(a * M + m) * T + t];

    let mut stats = [0.0; 12];
    for (s, spec) in stats.iter_mut().zip(&STATS) {
        // `np.where(iouThr == p.iouThrs)`: an exact comparison.
        let thrs: Vec<usize> = match spec.iou {
            Some(v) => (0..T).filter(|&t| iou_thrs[t] == v).collect(),
            None => (0..T).collect(),
        };
        let (a, m) = (spec.area, spec.max_dets);
        *s = if spec.precision {
            mean_of_valid(
                thrs.iter()
                    .flat_map(|&t| (0..R).flat_map(move |r| (0..num_cats).map(move |k| (t, r, k))))
                    .map(|(t, r, k)| precision_at(t, r, k, a, m)),
            )
        } else {
            mean_of_valid(thrs.iter().flat_map(|&t| (0..num_cats).map(move |k| recall_at(t, k, a, m))))
        };
    }

    let per_category_ap = gt
        .categories
        .iter()
        .enumerate()
        .map(|(k, (id, name))| {
            let values = (0..T).flat_map(|t| (0..R).map(move |r| (t, r)));
            let ap = mean_of_valid(values.map(|(t, r)| precision_at(t, r, k, AREA_ALL, MAX_DETS_100)));
            (*id, name.clone(), ap)
        })
        .collect();

    CocoEvalResult { stats, per_category_ap }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: &str = r#"{
        "images": [{"id": 7}, {"id": 3}, {"id": 5}],
        "categories": [{"id": 2, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 9, "name": "unused"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 2, "bbox": [100, 100, 120, 90], "area": 10800, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [0, 0, 300, 300], "area": 90000, "iscrowd": 1}
        ]
    }"#;

    fn det(image_id: u64, category_id: u64, bbox: [f64; 4], score: f64) -> Detection {
        Detection { image_id, category_id, bbox, score }
    }

    fn gt() -> CocoGroundTruth {
        CocoGroundTruth::from_json_str(GT).unwrap()
    }

    #[test]
    fn thresholds_match_numpy_linspace() {
        let thrs = iou_thresholds();
        assert_eq!(thrs[8], 0.8999999999999999);
        assert_eq!(thrs[5], 0.75);
        assert_eq!(thrs[0], 0.5);
        let rec = linspace::<R>(0.0, 1.0);
        assert_eq!(rec[7], 0.07);
        assert_eq!(rec[29], 0.29);
        assert_eq!(rec[100], 1.0);
    }

    #[test]
    fn pairwise_sum_matches_numpy() {
        // `np.add.reduce(1 / np.arange(1, n + 1))` and `np.add.reduce(np.sqrt(np.arange(1, n + 1)))`;
        // a sequential sum differs from each in the last bits.
        let inverses = |n: usize| (1..=n).map(|i| 1.0 / i as f64).collect::<Vec<f64>>();
        assert_eq!(pairwise_sum(&inverses(300)), 6.282663880299504);
        assert_eq!(pairwise_sum(&inverses(1234)), 7.69563700102727);
        assert_eq!(pairwise_sum(&inverses(80800)), 11.876954097516766);
        let roots: Vec<f64> = (1..=1234).map(|i| (i as f64).sqrt()).collect();
        assert_eq!(pairwise_sum(&roots), 28916.268666224045);
    }

    #[test]
    fn bbox_iou_regular_and_crowd() {
        let d = det(3, 1, [0.0, 0.0, 10.0, 10.0], 1.0);
        let mut g = GtAnnotation {
            id: 1,
            image_id: 3,
            category_id: 1,
            bbox: [5.0, 0.0, 10.0, 10.0],
            area: 100.0,
            crowd: false,
            ignore: false,
        };
        assert_eq!(bbox_ious(&[&d], &[&g]), vec![50.0 / 150.0]);
        g.crowd = true;
        assert_eq!(bbox_ious(&[&d], &[&g]), vec![0.5]);
        g.bbox = [10.0, 0.0, 5.0, 5.0]; // touching edges do not overlap
        assert_eq!(bbox_ious(&[&d], &[&g]), vec![0.0]);
    }

    #[test]
    fn ground_truth_ids_and_names() {
        let gt = gt();
        assert_eq!(gt.image_ids(), vec![3, 5, 7]);
        assert_eq!(gt.category_ids(), vec![1, 2, 9]);
        assert_eq!(gt.category_name(2), Some("cat"));
        assert_eq!(gt.category_name(4), None);
        // `_prepare` order: image 3 before image 7.
        let ids: Vec<u64> = gt.annotations.iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert!(gt.annotations[3].crowd && gt.annotations[3].ignore);
    }

    // Expected values below are pycocotools 2.0.11's for the same ground truth and detections.

    #[test]
    fn perfect_detections() {
        let dets = [
            det(3, 1, [10.0, 10.0, 50.0, 40.0], 0.9),
            det(3, 2, [100.0, 100.0, 120.0, 90.0], 0.8),
            det(7, 1, [0.0, 0.0, 20.0, 20.0], 0.7),
        ];
        let result = evaluate(&gt(), &dets);
        // One true positive gives precision 1 / (1 + eps), two give exactly 1.
        let p1 = 0.9999999999999998;
        assert_eq!(result.stats, [1.0, 1.0, 1.0, p1, p1, p1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let aps: Vec<f64> = result.per_category_ap.iter().map(|c| c.2).collect();
        assert_eq!(aps, [1.0, p1, -1.0]);
    }

    #[test]
    fn crowd_matches_are_ignored() {
        // The first detection overlaps only the crowd region (ignored); the second misses.
        let dets = [det(7, 1, [100.0, 100.0, 50.0, 50.0], 0.9), det(7, 1, [200.0, 0.0, 10.0, 10.0], 0.5)];
        let result = evaluate(&gt(), &dets);
        assert_eq!(result.stats, [0.0; 12]);
    }

    #[test]
    fn no_detections() {
        let result = evaluate(&gt(), &[]);
        assert_eq!(result.stats, [0.0; 12]);
        let aps: Vec<f64> = result.per_category_ap.iter().map(|c| c.2).collect();
        assert_eq!(aps, [0.0, 0.0, -1.0]);
    }

    #[test]
    fn tied_scores_keep_file_order() {
        // Same score: whichever is listed first ranks first.
        let fp = det(3, 1, [300.0, 300.0, 10.0, 10.0], 0.5);
        let tp = det(3, 1, [10.0, 10.0, 50.0, 40.0], 0.5);
        let fp_first = evaluate(&gt(), &[fp, tp]);
        let tp_first = evaluate(&gt(), &[tp, fp]);
        assert_eq!(fp_first.stats[0], 0.12623762376237624);
        assert_eq!(fp_first.per_category_ap[0].2, 0.2524752475247525);
        assert_eq!(tp_first.stats[0], 0.2524752475247524);
        assert_eq!(tp_first.per_category_ap[0].2, 0.5049504950495048);
        assert_eq!(tp_first.stats[6..9], [0.25, 0.25, 0.25]);
        assert_eq!(fp_first.stats[6..9], [0.0, 0.25, 0.25]);
    }

    #[test]
    fn summary_format() {
        let result = CocoEvalResult {
            stats: [0.50458, 0.69697, 0.5729817, 0.0625, 0.5, 0.5, 0.3, 0.5, 0.5, -1.0, 0.5, 0.5],
            per_category_ap: vec![],
        };
        let summary = result.summary();
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), 12);
        assert_eq!(lines[0], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505");
        assert_eq!(lines[1], " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.697");
        assert_eq!(lines[3], " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 0.062");
        assert_eq!(lines[6], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.300");
        assert_eq!(lines[9], " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000");
    }

    #[test]
    fn detection_errors() {
        let gt = gt();
        let err = |s: &str| detections_from_json_str(s, &gt).unwrap_err().to_string();
        let msg = err(r#"[{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#);
        assert!(msg.contains("image_id 4") && msg.contains("do not correspond"), "{msg}");
        let msg = err(r#"[{"image_id": 3, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 0.5}]"#);
        assert!(msg.contains("category_id 4"), "{msg}");
        let msg = err(r#"[{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]"#);
        assert!(msg.contains("detection 0") && msg.contains("3 numbers"), "{msg}");
        let msg = err("[{\"image_id\": 3,\n \"category_id\": 1 \"bbox\": []}]");
        assert!(msg.contains("<detections JSON>: malformed JSON") && msg.contains("line 2 column 19"), "{msg}");
        let msg = err(r#"[{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1]}]"#);
        assert!(msg.contains("missing field `score`"), "{msg}");
        let msg = err(r#"[{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1e999}]"#);
        assert!(msg.contains("out of range"), "{msg}");
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let err = check_finite(&[1.0, f64::NAN], "x.json", || "detection 2".to_string(), "score").unwrap_err();
        assert_eq!(err.to_string(), "x.json: detection 2 has a non-finite score");
    }
}
