"""A torchvision-layout ResNet checkpoint for the backbone-initialisation test: the tiny DETR
fixture's backbone (`backbone.0.body.*` in facebookresearch/detr's layout, which is
torchvision's `resnet50().state_dict()` naming) saved as torchvision saves an ImageNet ResNet,
with BatchNorm `num_batches_tracked` counters and an `fc` classifier that DETR does not use.

    python scripts/make_backbone_fixture.py   # writes models/tests/fixtures/detr_tiny/resnet_backbone.pth
"""
import os

import torch

here = os.path.join(os.path.dirname(__file__), "..", "models", "tests", "fixtures", "detr_tiny")
detr = torch.load(os.path.join(here, "detr_original.pth"), map_location="cpu")["model"]
prefix = "backbone.0.body."
backbone = {k[len(prefix):]: v for k, v in detr.items() if k.startswith(prefix)}
for k in [k for k in backbone if k.endswith("running_var")]:
    backbone[k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
out_channels = backbone[max(k for k in backbone if k.startswith("layer4") and k.endswith("conv3.weight"))].shape[0]
g = torch.Generator().manual_seed(0)
backbone["fc.weight"] = torch.randn(10, out_channels, generator=g)
backbone["fc.bias"] = torch.zeros(10)
torch.save(backbone, os.path.join(here, "resnet_backbone.pth"))
print(f"{len(backbone)} tensors, layer4 output {out_channels} channels")
