"""Full-size parity check against the reference implementations, on random weights.

    python scripts/parity.py vit|tnt|detr [--zoo target/release/zoo] [--dir /tmp/parity]
                             [--device flex,ndarray,wgpu,tch] [--precision f32|f16|bf16]

Builds the full-size model with its reference (timm for ViT-B/16 and TNT-S, Hugging Face
transformers for DETR-R50), perturbs every parameter so that no tensor is trivially zero or one,
saves its weights in each layout the zoo loads (timm: .safetensors and a .pth nested under
"model"; DETR: HF .safetensors and the original facebookresearch/detr .pth layout), runs the
reference and `zoo classify|detect --input-npy --json` on the same random input and prints the
largest absolute differences, once per `--device` (each passed to `zoo --device`; the binary
must be built with those backends, e.g. `ZOO_FEATURES=flex,avx512,ndarray,wgpu,tch just build`). Exits
non-zero if a difference is over the tolerance: float32 1e-4 (boxes 1e-5) absolute; with
`--precision f16|bf16` (the zoo computing in half precision against the float32 reference) the
difference relative to the largest reference value, at most 2e-2 for f16 and 1e-1 for bf16.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# Everything is built locally; transformers must not ask the Hub whether "resnet50" is a repository.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_model_fixtures import hf_to_facebook, perturb  # noqa: E402


def run_zoo(args, command, config, weights, npy):
    """`zoo COMMAND ... --json` on every device of `--device`: [(device, output, seconds)]; a device
    where the zoo fails (one without the asked precision) is reported and left out."""
    runs = []
    for device in args.device.split(",") if args.device else [None]:
        t = time.perf_counter()
        cmd = [args.zoo, command, "--config", config, "--weights", weights, "--input-npy", npy, "--json",
               "--precision", args.precision]
        out = subprocess.run(cmd + (["--device", device] if device else []), capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{command} on {device or 'default'} in {args.precision}: zoo failed: {out.stderr.strip()}")
            args.failed = True
            continue
        runs.append((device or "default", json.loads(out.stdout), time.perf_counter() - t))
    return runs


def within(args, ours, ref, f32_tolerance):
    """The difference to report and whether it passes: absolute in float32, relative otherwise."""
    diff = float(np.abs(np.asarray(ours, dtype=np.float32) - ref).max())
    if args.precision == "f32":
        return diff, diff <= f32_tolerance
    relative = diff / float(np.abs(ref).max())
    return relative, relative <= {"f16": 2e-2, "bf16": 1e-1}[args.precision]


def detr_config(**kwargs):
    """DETR-R50 as facebook/detr-resnet-50 (timm's resnet50 backbone), made without the Hub."""
    from transformers import DetrConfig
    from transformers.models.timm_backbone import TimmBackboneConfig
    backbone = TimmBackboneConfig(backbone="resnet50", out_indices=[1, 2, 3, 4])
    return DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, **kwargs)


def classifier(args, name, config):
    import timm
    torch.manual_seed(0)
    model = perturb(timm.create_model(name, pretrained=False), 1)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        ref = model(x).numpy()
        torch_s = time.perf_counter() - t
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    files = {"safetensors": os.path.join(args.dir, f"{name}.safetensors"),
             "pth": os.path.join(args.dir, f"{name}.pth")}
    save_file(sd, files["safetensors"])
    torch.save({"model": sd}, files["pth"])
    npy = os.path.join(args.dir, f"{name}_input.npy")
    np.save(npy, x.numpy())
    ok = True
    for fmt, path in files.items():
        for device, out, zoo_s in run_zoo(args, "classify", config, path, npy):
            diff, passed = within(args, out["logits"], ref, 1e-4)
            ok &= passed
            print(f"{name} from .{fmt} on {device} in {args.precision}: max |zoo - timm| logits = {diff:.3e} "
                  f"(torch forward {torch_s:.2f} s for 2 images; zoo process incl. load {zoo_s:.2f} s)")
    return ok


def detr(args):
    from transformers import DetrForObjectDetection
    torch.manual_seed(0)
    model = DetrForObjectDetection(detr_config(num_labels=91))
    perturb(model, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
    model.eval()
    x = torch.randn(1, 3, 480, 640, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 480, 640, dtype=torch.long)
    with torch.no_grad():
        t = time.perf_counter()
        o = model(pixel_values=x, pixel_mask=mask)
        torch_s = time.perf_counter() - t
    hf_dir = os.path.join(args.dir, "detr_hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    from safetensors.torch import load_file
    files = {"HF safetensors": os.path.join(hf_dir, "model.safetensors"),
             "original .pth": os.path.join(args.dir, "detr_original.pth")}
    torch.save({"model": hf_to_facebook(load_file(files["HF safetensors"]))}, files["original .pth"])
    npy = os.path.join(args.dir, "detr_input.npy")
    np.save(npy, x.numpy())
    ok = True
    for fmt, path in files.items():
        for device, out, zoo_s in run_zoo(args, "detect", "configs/detr_r50.toml", path, npy):
            dl, logits_ok = within(args, out["pred_logits"], o.logits.numpy(), 1e-4)
            db, boxes_ok = within(args, out["pred_boxes"], o.pred_boxes.numpy(), 1e-5)
            ok &= logits_ok and boxes_ok
            print(f"DETR-R50 480x640 from {fmt} on {device} in {args.precision}: max |zoo - HF| pred_logits = {dl:.3e}, "
                  f"pred_boxes = {db:.3e} (torch forward {torch_s:.2f} s; zoo process incl. load {zoo_s:.2f} s)")
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["vit", "tnt", "detr"])
    p.add_argument("--zoo", default="target/release/zoo")
    p.add_argument("--dir", default="/tmp/zoo-parity")
    p.add_argument("--device", default=None,
                   help="comma-separated zoo devices to compare, e.g. flex,ndarray,wgpu,tch (default: zoo's own)")
    p.add_argument("--precision", default="f32", choices=["f32", "f16", "bf16"],
                   help="the zoo's float type (the reference stays float32)")
    args = p.parse_args()
    args.failed = False
    os.makedirs(args.dir, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    if args.model == "vit":
        ok = classifier(args, "vit_base_patch16_224", "configs/vit_b16.toml")
    elif args.model == "tnt":
        ok = classifier(args, "tnt_s_patch16_224", "configs/tnt_s.toml")
    else:
        ok = detr(args)
    sys.exit(0 if ok and not args.failed else 1)


if __name__ == "__main__":
    main()
