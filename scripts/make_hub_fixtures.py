"""Makes the model repositories that the tests' local Hugging Face Hub serves.

Each repository is laid out as on the Hub under its real name and written by the reference
library's own functions, with a tiny randomly initialised model of the named architecture:
timm's `save_for_hf` (`config.json` with `architecture`, `num_classes`, `model_args` and the tag's
`pretrained_cfg`, then `model.safetensors`) and transformers' `save_pretrained` (DETR's
`config.json` with `id2label`, and `model.safetensors`). Beside each repository, under
`references/`, an input batch and the reference's output on it, computed by the library reading
the written repository back (`timm.create_model("local-dir:...")`,
`DetrForObjectDetection.from_pretrained(...)`). Run with torch, timm, transformers, safetensors:

    python scripts/make_hub_fixtures.py infer/tests/data/hub
"""
import json
import os
import shutil
import sys

import numpy as np
import timm
import torch
import transformers
from timm.models._hub import save_for_hf

# COCO's categories (any instances JSON has them).
COCO_ANNOTATIONS = os.path.join(os.path.dirname(__file__), "..", "infer", "tests", "data", "coco_val2014_100", "instances.json")


def perturb(model, seed):
    """Spread every parameter (random init leaves biases at zero, norms at one) so that a
    wrongly mapped tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def save_reference(out, repo, x, y):
    d = os.path.join(out, "references", repo.replace("/", "--"))
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "input.npy"), x.numpy())
    for name, value in y.items():
        np.save(os.path.join(d, f"{name}.npy"), value.detach().numpy())


def timm_repo(out, repo, model_args, seed):
    """A tiny model under a real timm name: the named architecture's pretrained_cfg (mean, std,
    crop_pct, interpolation, input size), narrower and shallower by `model_args` as
    `timm.create_model(name, **model_args)` builds it."""
    name = repo.split("/", 1)[1]
    torch.manual_seed(seed)
    model = perturb(timm.create_model(name, pretrained=False, **model_args), seed)
    d = os.path.join(out, "repos", repo)
    shutil.rmtree(d, ignore_errors=True)
    save_for_hf(model, d, model_args=model_args, safe_serialization=True)
    # What a user of timm gets from the repository.
    back = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
    size = model_args.get("img_size", 224)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        y = back(x)
        assert torch.equal(y, model(x)), f"{repo}: timm does not read back what it wrote"
    save_reference(out, repo, x, {"logits": y})
    print(f"{repo}: {sum(p.numel() for p in model.parameters())} params, logits {tuple(y.shape)}")


def detr_repo(out, repo, seed):
    """DETR as transformers builds it from its own config.json: a ResNet backbone of Hugging
    Face's `ResNetConfig` (bottleneck blocks, one per stage, narrow) so that the repository alone
    describes the model, 2 + 2 layers of width 32, 10 queries, and COCO's id2label."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    # facebook/detr-resnet-50's labels: COCO's category ids, "N/A" for the unused ones.
    cats = json.load(open(COCO_ANNOTATIONS))["categories"]
    id2label = {i: "N/A" for i in range(91)}
    id2label.update({c["id"]: c["name"] for c in cats})
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=32, encoder_layers=2,
                     decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, id2label=id2label)
    torch.manual_seed(seed)
    model = DetrForObjectDetection(cfg)
    with torch.no_grad():
        # Frozen batch norm's statistics start at 0 / 1: spread them too.
        g = torch.Generator().manual_seed(seed)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(torch.randn(b.shape, generator=g) * 0.05)
            elif name.endswith("running_var"):
                b.mul_(1 + torch.rand(b.shape, generator=g) * 0.1)
    model = perturb(model, seed)
    d = os.path.join(out, "repos", repo)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    back = DetrForObjectDetection.from_pretrained(d).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        o = back(pixel_values=x)
    save_reference(out, repo, x, {"pred_logits": o.logits, "pred_boxes": o.pred_boxes})
    print(f"{repo}: {sum(p.numel() for p in model.parameters())} params, logits {tuple(o.logits.shape)}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "infer/tests/data/hub"
    torch.set_num_threads(2)
    vit = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    timm_repo(out, "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", vit, 10)
    timm_repo(out, "timm/tnt_s_patch16_224.in1k",
              dict(img_size=32, embed_dim=48, inner_dim=24, depth=2, num_heads_inner=4, num_heads_outer=4), 20)
    detr_repo(out, "facebook/detr-resnet-50", 30)
