"""Reference assignments for the Hungarian matcher, from scipy's linear_sum_assignment.

    python scripts/make_matcher_fixtures.py train/tests/data/matcher_scipy.json

Random cost matrices [queries][targets] (DETR's orientation: 100 queries x up to 50 targets,
plus small ones with ties), with scipy's optimal total cost and its assignment.
"""
import json
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

rng = np.random.default_rng(0)
cases = []
for queries, targets, kind in [(100, 50, "uniform"), (100, 7, "uniform"), (100, 1, "uniform"),
                               (20, 20, "uniform"), (10, 4, "ties"), (100, 50, "detr-like")]:
    if kind == "ties":
        cost = rng.integers(0, 3, size=(queries, targets)).astype(np.float32)
    elif kind == "detr-like":
        # class (-prob) + 5 L1 + 2 (-GIoU) magnitudes
        cost = (-rng.random((queries, targets)) + 5 * rng.random((queries, targets)) * 0.5
                - 2 * (rng.random((queries, targets)) * 1.5 - 0.5)).astype(np.float32)
    else:
        cost = rng.uniform(-2, 8, size=(queries, targets)).astype(np.float32)
    rows, cols = linear_sum_assignment(cost)
    # Continuous random costs have a single optimum (almost surely); integer ones have ties.
    cases.append({"queries": queries, "targets": targets, "unique_optimum": kind != "ties",
                  "cost": cost.ravel().tolist(),
                  "scipy_pairs": [[int(r), int(c)] for r, c in zip(rows, cols)],
                  "scipy_total": float(cost[rows, cols].astype(np.float64).sum())})
with open(sys.argv[1], "w") as f:
    json.dump({"cases": cases}, f)
print(f"wrote {len(cases)} cases")
