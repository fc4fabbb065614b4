#!/usr/bin/env python3
"""Times pycocotools' COCOeval (bbox) against a Rust COCO evaluator command on a synthetic,
COCO val-sized set: 5000 images, about 36k ground-truth boxes over the 80 COCO categories and 100
detections per image (500k), generated from a seed.

What is timed:
- pycocotools: `evaluate() + accumulate() + summarize()` on already loaded data; loading
  (`COCO(...)` and `loadRes(...)`) is timed and reported separately.
- Rust: the wall time of the whole command, process start and JSON loading included (best of
  --repeats runs). If the command's JSON output has `load_s` / `eval_s`, they are shown too.

The command must print a JSON object with "stats" (the 12 stats) on its last JSON line; its
arguments may contain {annotations} and {detections}, otherwise
`--annotations A --detections D` is appended. Example:
    python scripts/bench_coco_eval.py --command "target/release/zoo coco-eval --json"
"""

import argparse
import contextlib
import io
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

COCO_CATEGORY_IDS = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
]


def round2(a):
    return np.round(a, 2).tolist()


def synthetic_coco(num_images: int, gt_per_image: float, dets_per_image: int, seed: int):
    rng = np.random.default_rng(seed)
    cats = np.array(COCO_CATEGORY_IDS)
    # A skewed category frequency, as in COCO (one very frequent class, a long tail).
    freq = 1.0 / np.arange(1, len(cats) + 1) ** 0.8
    freq[0] *= 8
    freq /= freq.sum()

    images, annotations, detections = [], [], []
    ann_id = 1
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        n = rng.poisson(gt_per_image)
        wh = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))  # all area ranges
        xy = rng.uniform(0, 1, (n, 2)) * np.maximum(np.array([640, 480]) - wh, 1)
        gt_boxes = np.concatenate([xy, wh], axis=1)
        gt_cats = rng.choice(cats, n, p=freq)
        crowd = rng.random(n) < 0.01
        for box, cat, is_crowd in zip(gt_boxes, gt_cats, crowd):
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(cat), "bbox": round2(box),
                "area": round(float(box[2] * box[3] * rng.uniform(0.4, 0.9)), 2),
                "iscrowd": int(is_crowd), "segmentation": [],
            })
            ann_id += 1

        # Detections: up to two jittered copies of each box, then random boxes up to the quota.
        copies = np.repeat(np.arange(n), rng.integers(0, 3, n))[:dets_per_image]
        m = len(copies)
        jittered = gt_boxes[copies].copy()
        noise = rng.normal(0, rng.choice([0.03, 0.1, 0.25], m)[:, None], (m, 4))
        jittered[:, :2] += noise[:, :2] * jittered[:, 2:]
        jittered[:, 2:] *= np.exp(noise[:, 2:])
        wrong = rng.random(m) < 0.1
        det_cats = np.where(wrong, rng.choice(cats, m, p=freq), gt_cats[copies])
        det_scores = rng.beta(4, 2, m)
        k = dets_per_image - m
        wh = np.exp(rng.uniform(np.log(4), np.log(300), (k, 2)))
        xy = rng.uniform(0, 1, (k, 2)) * np.maximum(np.array([640, 480]) - wh, 1)
        boxes = np.concatenate([jittered, np.concatenate([xy, wh], axis=1)])
        all_cats = np.concatenate([det_cats, rng.choice(cats, k, p=freq)])
        scores = np.concatenate([det_scores, rng.beta(1.5, 6, k)])
        for box, cat, score in zip(np.round(boxes, 2).tolist(), all_cats.tolist(), np.round(scores, 3).tolist()):
            detections.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})

    categories = [{"id": int(c), "name": f"category_{c}", "supercategory": "thing"} for c in cats]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def time_pycocotools(annotations: Path, detections: Path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = COCO(str(annotations))
        coco_dt = coco_gt.loadRes(str(detections))
        t1 = time.perf_counter()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, [float(s) for s in ev.stats]


def time_command(command: str, annotations: Path, detections: Path, repeats: int):
    args = shlex.split(command)
    if any("{annotations}" in a or "{detections}" in a for a in args):
        args = [a.format(annotations=annotations, detections=detections) for a in args]
    else:
        args += ["--annotations", str(annotations), "--detections", str(detections)]
    best, output = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"command failed ({done.returncode}): {' '.join(args)}\n{done.stderr}")
        if elapsed < best:
            best, output = elapsed, done.stdout
    result = None
    for line in reversed(output.splitlines()):
        if line.lstrip().startswith("{"):
            result = json.loads(line)
            if "stats" in result:
                break
    if result is None or "stats" not in result:
        raise SystemExit("the command printed no JSON line with \"stats\"")
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description="pycocotools vs a Rust COCO evaluator, COCO val-sized")
    parser.add_argument("--command", required=True, help="the Rust evaluator command (see module doc)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--gt-per-image", type=float, default=7.3)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the Rust command (best is kept)")
    parser.add_argument("--keep", type=Path, help="write the JSON files here instead of a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        dataset, detections = synthetic_coco(args.images, args.gt_per_image, args.dets_per_image, args.seed)
        annotations_path, detections_path = out / "instances.json", out / "detections.json"
        annotations_path.write_text(json.dumps(dataset, separators=(",", ":")))
        detections_path.write_text(json.dumps(detections, separators=(",", ":")))
        print(f"generated {len(dataset['images'])} images, {len(dataset['annotations'])} gt boxes, "
              f"{len(dataset['categories'])} categories, {len(detections)} detections "
              f"in {time.perf_counter() - t0:.1f}s ({out})")

        py_load, py_eval, py_stats = time_pycocotools(annotations_path, detections_path)
        rust_wall, rust = time_command(args.command, annotations_path, detections_path, args.repeats)

    diff = max(abs(a - b) for a, b in zip(py_stats, rust["stats"]))
    print(f"pycocotools: evaluate+accumulate+summarize {py_eval:.2f}s (loading {py_load:.2f}s more)")
    internal = ""
    if "load_s" in rust and "eval_s" in rust:
        internal = f" (of which loading {rust['load_s']:.2f}s, evaluation {rust['eval_s']:.2f}s)"
    print(f"rust:        whole command {rust_wall:.2f}s{internal}")
    print(f"speed-up:    {py_eval / rust_wall:.1f}x (pycocotools evaluation vs whole Rust command), "
          f"{(py_load + py_eval) / rust_wall:.1f}x (both with loading)")
    print(f"stats:       max |pycocotools - rust| = {diff:.3g}")
    print(f"pycocotools stats: {py_stats}")


if __name__ == "__main__":
    main()
