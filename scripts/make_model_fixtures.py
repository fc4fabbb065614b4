"""Makes the small reference fixtures that `cargo test` checks the models against.

Each fixture is a tiny randomly initialised model built by the reference implementation
(timm), its weights as written by the reference (`.safetensors`, `.pth`), a fixed input and
the reference's output on it. Run with a Python that has torch, timm and safetensors:

    python scripts/make_model_fixtures.py models/tests/fixtures
"""
import json
import os
import sys

import numpy as np
import timm
import torch
from safetensors.torch import save_file


def perturb(model, seed):
    """Random init leaves biases at zero and norms at one; spread every parameter so that a
    wrongly mapped or transposed tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def save_case(out, name, model, x, config, extra_state=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    sd = {k: v.contiguous() for k, v in (extra_state or model.state_dict()).items()}
    save_file(sd, os.path.join(d, "model.safetensors"))
    # Nested under "model", as training scripts save them; the loader must find it there.
    torch.save({"model": sd, "epoch": 3}, os.path.join(d, "model.pth"))
    np.save(os.path.join(d, "input.npy"), x.numpy())
    with torch.no_grad():
        y = model(x)
    np.save(os.path.join(d, "output.npy"), y.numpy())
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write(config)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, output {tuple(y.shape)}")


def vit_config(img, patch, dim, depth, heads, classes, pool="token"):
    return f"""# Made by scripts/make_model_fixtures.py with timm {timm.__version__}
[model]
arch = "vit"
image_size = {img}
patch_size = {patch}
num_classes = {classes}
embed_dim = {dim}
depth = {depth}
num_heads = {heads}
global_pool = "{pool}"
"""


def vit_cases(out):
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    torch.manual_seed(0)
    kw = dict(patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    m = perturb(VisionTransformer(img_size=32, **kw), 1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    save_case(out, "vit_tiny", m, x, vit_config(32, 8, 48, 2, 3, 10))

    m_avg = perturb(VisionTransformer(img_size=32, global_pool="avg", **kw), 3)
    save_case(out, "vit_tiny_avg", m_avg, x, vit_config(32, 8, 48, 2, 3, 10, "avg"))

    # The 32px checkpoint loaded into a 48px model: timm resamples pos_embed (bicubic, antialias).
    m48 = VisionTransformer(img_size=48, **kw).eval()
    m48.load_state_dict(checkpoint_filter_fn(m.state_dict(), m48))
    x48 = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    save_case(out, "vit_tiny_resampled", m48, x48, vit_config(48, 8, 48, 2, 3, 10),
              extra_state=m.state_dict())


def tnt_config(img, patch, dim, inner, depth, heads_in, heads_out, classes):
    return f"""# Made by scripts/make_model_fixtures.py with timm {timm.__version__}
[model]
arch = "tnt"
image_size = {img}
patch_size = {patch}
num_classes = {classes}
embed_dim = {dim}
inner_dim = {inner}
depth = {depth}
num_heads_inner = {heads_in}
num_heads_outer = {heads_out}
"""


def tnt_cases(out):
    from timm.models.tnt import TNT

    torch.manual_seed(0)
    # TNT-S's structure (patch 16, pixel embed 7x7 stride 4, inner dim 24 with 4 heads, bias-free
    # qk/v and block projection), narrower and shallower.
    kw = dict(patch_size=16, embed_dim=48, inner_dim=24, depth=2, num_heads_inner=4,
              num_heads_outer=4, qkv_bias=False, num_classes=10)
    m = perturb(TNT(img_size=32, **kw), 5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    save_case(out, "tnt_tiny", m, x, tnt_config(32, 16, 48, 24, 2, 4, 4, 10))


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    torch.set_num_threads(2)
    vit_cases(out)
    tnt_cases(out)
