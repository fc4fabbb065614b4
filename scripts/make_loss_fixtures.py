"""Reference DETR set-criterion values from transformers' port of facebookresearch/detr's
`SetCriterion` (HungarianMatcher with scipy, ImageLoss): random predictions of 6 decoder layers
for a batch of 3 images (one without targets), and the loss of every layer.

    python scripts/make_loss_fixtures.py train/tests/data/detr_loss.json
"""
import json
import sys

import torch
from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

g = torch.Generator().manual_seed(0)
layers, batch, queries, num_classes = 6, 3, 12, 5
logits = torch.randn(layers, batch, queries, num_classes + 1, generator=g) * 2
boxes = torch.rand(layers, batch, queries, 4, generator=g) * 0.6 + 0.2
targets = []
for n in (4, 0, 2):
    cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    targets.append({"class_labels": torch.randint(0, num_classes, (n,), generator=g),
                    "boxes": torch.cat([cxcy, wh], 1)})
criterion = ImageLoss(matcher=HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2),
                      num_classes=num_classes, eos_coef=0.1, losses=["labels", "boxes"])
per_layer = []
total = 0.0
for l in range(layers):
    losses = criterion({"logits": logits[l], "pred_boxes": boxes[l]}, targets)
    d = {k: float(losses[k]) for k in ("loss_ce", "loss_bbox", "loss_giou")}
    per_layer.append(d)
    total += d["loss_ce"] + 5 * d["loss_bbox"] + 2 * d["loss_giou"]
with open(sys.argv[1], "w") as f:
    json.dump({"num_classes": num_classes, "logits": logits.tolist(), "boxes": boxes.tolist(),
               "targets": [{"labels": t["class_labels"].tolist(), "boxes": t["boxes"].tolist()} for t in targets],
               "per_layer": per_layer, "total": total}, f)
print("total", total, per_layer[0])
