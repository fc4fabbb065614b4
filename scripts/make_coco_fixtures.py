#!/usr/bin/env python3
"""Writes the expected results of the COCO bbox evaluator's test fixtures, scored by pycocotools.

Fixtures live under infer/tests/data/:

- coco_val2014_100/: real COCO annotations and detections (committed inputs); this script only
  scores them.
- coco_random/case_N/: small synthetic cases generated here from a fixed seed, built to reach
  pycocotools' corner cases: crowd regions, an `ignore` field that pycocotools overrides, images
  without ground truth or without detections, a category without ground truth, tied scores,
  boxes of every area range and on the range bounds, more than 100 detections of one category in
  an image, integer coordinates, and (one case each) a repeated annotation id and an annotation
  with id 0.

Each case directory gets instances.json, detections.json and expected.json. expected.json holds
the 12 `COCOeval.stats` and the AP@[.50:.95] of every category (the mean of
`precision[:, :, k, 0, -1]` over entries > -1, or -1), each as a float and as the hex of its IEEE
754 bits, so that tests can compare exactly.

Run with an environment that has pycocotools and numpy:
    python scripts/make_coco_fixtures.py
"""

import argparse
import contextlib
import io
import json
import struct
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

DATA = Path(__file__).resolve().parents[1] / "infer" / "tests" / "data"
SEED = 20240611
NUM_RANDOM_CASES = 5


def bits(x: float) -> str:
    return struct.pack(">d", float(x)).hex()


def score(case_dir: Path) -> dict:
    """Runs pycocotools on a case's instances.json and detections.json."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(case_dir / "instances.json"))
        coco_dt = coco_gt.loadRes(str(case_dir / "detections.json"))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_category = []
    for k, cat_id in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        valid = p[p > -1]
        ap = float(np.mean(valid)) if valid.size else -1.0
        name = coco_gt.cats[cat_id].get("name", "")
        per_category.append({"id": int(cat_id), "name": name, "ap": ap, "ap_bits": bits(ap)})
    stats = [float(s) for s in ev.stats]
    return {
        "generator": "scripts/make_coco_fixtures.py",
        "pycocotools": version("pycocotools"),
        "numpy": np.__version__,
        "stats": stats,
        "stats_bits": [bits(s) for s in stats],
        "per_category_ap": per_category,
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


def box(rng, size_class: str) -> list:
    """An [x, y, w, h] box of a tiny, small, medium or large size, 2-decimal coordinates."""
    lo, hi = {"tiny": (1, 12), "small": (8, 32), "medium": (30, 100), "large": (90, 400)}[size_class]
    w, h = rng.uniform(lo, hi, 2)
    x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
    return [round(float(v), 2) for v in (x, y, w, h)]


def jitter(rng, bbox: list, amount: float) -> list:
    x, y, w, h = bbox
    dx, dy = rng.normal(0, amount * w), rng.normal(0, amount * h)
    sw, sh = np.exp(rng.normal(0, amount, 2))
    return [round(float(v), 2) for v in (x + dx, y + dy, max(w * sw, 0.5), max(h * sh, 0.5))]


def box_iou(a: list, b: list) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def random_case(rng, index: int) -> tuple:
    num_images = int(rng.integers(20, 61))
    num_cats = int(rng.integers(3, 7))
    image_ids = [int(i) for i in rng.choice(np.arange(1, 600_000), num_images, replace=False)]
    cat_ids = [int(c) for c in rng.choice(np.arange(1, 91), num_cats, replace=False)]
    gt_cats = cat_ids[:-1]  # the last category never has ground truth
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"} for i in image_ids]
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in cat_ids]

    annotations, detections = [], []
    next_ann_id = int(rng.integers(1, 1000))
    sizes = ["tiny", "small", "medium", "large"]
    for image_id in image_ids:
        num_gt = 0 if rng.random() < 0.15 else int(rng.integers(1, 9))
        image_gts = []
        for _ in range(num_gt):
            bbox = box(rng, sizes[int(rng.integers(0, 4))])
            crowd = rng.random() < 0.08
            if crowd:
                bbox = box(rng, "large")
            area = round(bbox[2] * bbox[3] * float(rng.uniform(0.5, 1.0)), 2)
            if rng.random() < 0.05:
                area = float(rng.choice([1024, 9216]))  # exactly on a range bound (inclusive)
            ann = {
                "id": next_ann_id,
                "image_id": image_id,
                "category_id": gt_cats[int(rng.integers(0, len(gt_cats)))],
                "bbox": bbox,
                "area": area,
                "iscrowd": int(crowd),
                "segmentation": [[bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1], bbox[0], bbox[1] + bbox[3]]],
            }
            if rng.random() < 0.1:
                ann["ignore"] = int(rng.integers(0, 2))  # pycocotools replaces it with iscrowd
            next_ann_id += int(rng.integers(1, 4))
            annotations.append(ann)
            image_gts.append(ann)

        if rng.random() < 0.1:
            continue  # an image without detections
        for ann in image_gts:
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                detections.append({
                    "image_id": image_id,
                    "category_id": ann["category_id"] if rng.random() < 0.9 else cat_ids[int(rng.integers(0, num_cats))],
                    "bbox": jitter(rng, ann["bbox"], float(rng.choice([0.02, 0.08, 0.2]))),
                    "score": round(float(rng.uniform(0.05, 1.0)), 2),  # 2 decimals: many ties
                })
        for _ in range(int(rng.integers(0, 6))):
            detections.append({
                "image_id": image_id,
                "category_id": cat_ids[int(rng.integers(0, num_cats))],
                "bbox": box(rng, sizes[int(rng.integers(0, 4))]),
                "score": round(float(rng.uniform(0.0, 0.8)), 2),
            })

    # Clutter: more than 100 detections of one category in two images, to exercise maxDets.
    for image_id in rng.choice(image_ids, 2, replace=False):
        image_gts = [a for a in annotations if a["image_id"] == image_id]
        category = image_gts[0]["category_id"] if image_gts else gt_cats[0]
        targets = [a["bbox"] for a in image_gts if a["category_id"] == category]
        for j in range(int(rng.integers(101, 131))):
            bbox = jitter(rng, targets[j % len(targets)], 0.3) if targets and j % 3 == 0 else box(rng, "small")
            detections.append({
                "image_id": int(image_id),
                "category_id": category,
                "bbox": bbox,
                "score": round(float(rng.uniform(0.0, 0.6)), 3),
            })

    # Integer coordinates and an integer score, as some results files have them.
    if detections:
        detections[0]["bbox"] = [int(round(v)) for v in detections[0]["bbox"]]
        detections[0]["score"] = 1
    order = rng.permutation(len(detections))
    detections = [detections[i] for i in order]
    if index == 3 and len(annotations) > 10:
        annotations[10]["id"] = annotations[2]["id"]  # pycocotools keeps the later annotation
    if index == 4:
        # pycocotools stores the matched gt id and tests it against 0, so a match to id 0 counts as
        # no match: give id 0 to an annotation that some detection matches.
        matched = next(a for a in annotations if not a["iscrowd"] and any(
            d["image_id"] == a["image_id"] and d["category_id"] == a["category_id"]
            and box_iou(d["bbox"], a["bbox"]) > 0.7 for d in detections))
        matched["id"] = 0
    rng.shuffle(images)
    rng.shuffle(categories)
    dataset = {"info": {"description": f"synthetic case {index}"}, "images": images,
               "annotations": annotations, "categories": categories}
    return dataset, detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="test data directory")
    args = parser.parse_args()

    real = args.data / "coco_val2014_100"
    write_json(real / "expected.json", score(real))
    print(f"scored {real}")

    rng = np.random.default_rng(SEED)
    for index in range(NUM_RANDOM_CASES):
        case_dir = args.data / "coco_random" / f"case_{index}"
        case_dir.mkdir(parents=True, exist_ok=True)
        dataset, detections = random_case(rng, index)
        write_json(case_dir / "instances.json", dataset)
        write_json(case_dir / "detections.json", detections)
        expected = score(case_dir)
        write_json(case_dir / "expected.json", expected)
        print(f"scored {case_dir}: {len(dataset['images'])} images, {len(dataset['annotations'])} gt, "
              f"{len(detections)} detections, AP {expected['stats'][0]:.4f}")


if __name__ == "__main__":
    main()
