"""Training-step parity at full size: ViT-B/16 and DETR-R50, three steps each, the zoo against
the references (the test `train/tests/train_step_parity.rs`, which `just test` runs on the tiny
fixtures, run here on full-size ones).

Makes in `--dir`: `vit/` (timm's vit_base_patch16_224, its own random initialisation, two
224x224 images) and `detr/` (transformers' DETR-R50 on timm's resnet50, its own initialisation,
two 320x416 images, the second padded to 256x352), each with the weights (every parameter
spread by 0.05 as the tiny fixtures are: a fresh model's zero biases would make the comparison
of those tensors one of AdamW's first updates alone, where the rounding of gradients near zero
decides the sign), the batch and, from
scripts/make_train_step_fixtures.py's recipes, the reference's three steps (losses, learning
rates, the matching, the weights after them); then runs the test in release with
ZOO_STEP_PARITY_DIR pointing at them. Both sides compute in float32 on this machine's CPU.

At this size float32 rounding alone moves the result: AdamW's first updates are nearly
lr * sign(gradient), so a gradient element within rounding of zero flips its step. The script
measures that on the reference itself (the same three steps with one thread instead of all,
which changes only the order of sums) and passes twice the larger of that spread and 1e-5 to the
test as its tolerance (ZOO_STEP_PARITY_TOLERANCE); both figures are printed.

    python scripts/step_parity_full.py [--dir out/step_parity_full] [--only vit|detr]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from make_train_step_fixtures import detr_steps, vit_steps  # noqa: E402
from make_model_fixtures import perturb  # noqa: E402
from parity import detr_config  # noqa: E402
from side_by_side import toml_value  # noqa: E402


def model_section(config_path):
    """The `[model]` table of one of the zoo's configs, as TOML."""
    with open(os.path.join(ROOT, config_path), "rb") as f:
        model = tomllib.load(f)["model"]
    return "[model]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in model.items())


def spread(root, case, make):
    """The reference against itself: its three steps again with one thread; the largest relative
    difference of a loss or a parameter tensor."""
    from safetensors.torch import load_file
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    make(root + "_1thread")
    torch.set_num_threads(threads)
    a, b = (os.path.join(r, case, "train_steps") for r in (root, root + "_1thread"))
    la, lb = (np.load(os.path.join(d, "losses.npy")).astype(np.float64) for d in (a, b))
    wa, wb = (load_file(os.path.join(d, "model.safetensors")) for d in (a, b))
    params = max(float((wa[k] - wb[k]).norm() / wa[k].norm().clamp_min(1e-30)) for k in wa if wa[k].is_floating_point())
    losses = float(np.max(np.abs(la - lb) / np.abs(la)))
    print(f"{case}: the reference against itself with 1 and {threads} threads: losses within {losses:.2e}, "
          f"parameters within {params:.2e} (relative)")
    return max(losses, params)


def vit_case(root):
    import timm
    d = os.path.join(root, "vit")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    m = perturb(timm.create_model("vit_base_patch16_224", pretrained=False), 1)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
    np.save(os.path.join(d, "input.npy"), torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)).numpy())
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write(model_section("configs/vit_b16.toml"))
    started = time.time()
    vit_steps(d, m)
    print(f"timm: three ViT-B/16 steps in {time.time() - started:.1f} s")


def save_pretrained_weights(m, path):
    """The weights as transformers' save_pretrained writes them (as the Hub has them)."""
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp, safe_serialization=True)
        os.replace(os.path.join(tmp, "model.safetensors"), path)


def detr_case(root):
    from transformers import DetrForObjectDetection
    d = os.path.join(root, "detr")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    m = perturb(DetrForObjectDetection(detr_config(num_labels=91, dropout=0.0)), 1)
    save_pretrained_weights(m, os.path.join(d, "model.safetensors"))
    x = torch.randn(2, 3, 320, 416, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 320, 416, dtype=torch.uint8)
    x[1, :, 256:, :] = 0
    x[1, :, :, 352:] = 0
    mask[1, 256:, :] = 0
    mask[1, :, 352:] = 0
    np.save(os.path.join(d, "input.npy"), x.numpy())
    np.save(os.path.join(d, "valid_mask.npy"), mask.numpy())
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write(model_section("configs/detr_r50.toml"))
    started = time.time()
    detr_steps(d, m, save=save_pretrained_weights)
    print(f"transformers: three DETR-R50 steps in {time.time() - started:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="out/step_parity_full")
    parser.add_argument("--only", choices=["vit", "detr"])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    root = os.path.abspath(args.dir)
    noise = 0.0
    if args.only in (None, "vit"):
        vit_case(root)
        noise = max(noise, spread(root, "vit", vit_case))
    if args.only in (None, "detr"):
        detr_case(root)
        noise = max(noise, spread(root, "detr", detr_case))
    tolerance = max(1e-5, 2 * noise)
    print(f"tolerance: {tolerance:.2e} relative", flush=True)
    tests = {"vit": "three_vit_training_steps", "detr": "three_detr_training_steps"}
    names = [tests[args.only]] if args.only else []
    command = ["cargo", "test", "--release", "-p", "zoo-train", "--test", "train_step_parity", "--", *names,
               "--nocapture", "--test-threads", "1"]
    print(" ".join(command), flush=True)
    env = {**os.environ, "ZOO_STEP_PARITY_DIR": root, "ZOO_STEP_PARITY_TOLERANCE": repr(tolerance)}
    sys.exit(subprocess.run(command, cwd=ROOT, env=env).returncode)


if __name__ == "__main__":
    main()
