"""Speed of the zoo against PyTorch on this machine, in one run: writes BENCHMARKS.md.

    python scripts/benchmarks.py [--zoo target/release/zoo] [--devices flex] [--only ViT]
    python scripts/benchmarks.py --devices tch:cuda:0,wgpu:0 --torch-device cuda --precision bf16 \
        --section "GPU, bf16"

For each case (model, batch, inference or training step) it times PyTorch eager (timm /
transformers, no_grad for inference; forward + cross-entropy + backward + AdamW for a training
step; in float32, or under `torch.autocast(dtype=torch.bfloat16)` with `--precision bf16`) and
`zoo bench --json --precision P` on each device, with the same warm-up and iteration counts, both
taking the median time per iteration, and reports images/s and the ratio ours / PyTorch (above 1
means the zoo is faster). `--section` writes the table as that section of the output file,
keeping the rest of it, instead of writing the whole file.

Each PyTorch case runs in a process of its own, so that its peak RSS (the `ru_maxrss` of that
process: torch, the model, the step) is the case's alone, as the zoo's is (one `zoo bench` per case).

`--isa avx2` restricts both sides to AVX2 on a CPU that has AVX-512: PyTorch with
`ATEN_CPU_CAPABILITY=avx2` and `MKL_ENABLE_INSTRUCTIONS=AVX2`, the zoo with `ZOO_ISA=avx2` on a
binary built without the `avx512` feature (`--zoo`, e.g. `ZOO_FEATURES=flex` build copied aside);
the table says which capability PyTorch reported.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# Everything is built locally; transformers must not ask the Hub whether "resnet50" is a repository.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

CASES = [
    # (label, config, batch, train, torch builder)
    ("ViT-B/16", "configs/vit_b16.toml", 1, False, "vit"),
    ("ViT-B/16", "configs/vit_b16.toml", 8, False, "vit"),
    ("TNT-S", "configs/tnt_s.toml", 1, False, "tnt"),
    ("TNT-S", "configs/tnt_s.toml", 8, False, "tnt"),
    ("DETR-R50 800x1066", "configs/detr_r50.toml", 1, False, "detr"),
    ("ViT-B/16", "configs/vit_b16.toml", 8, True, "vit"),
    ("TNT-S", "configs/tnt_s.toml", 8, True, "tnt"),
    ("DETR-R50 800x1066", "configs/detr_r50.toml", 2, True, "detr"),
]


def torch_model(kind):
    if kind == "vit":
        import timm
        return timm.create_model("vit_base_patch16_224"), (3, 224, 224)
    if kind == "tnt":
        import timm
        return timm.create_model("tnt_s_patch16_224"), (3, 224, 224)
    from transformers import DetrForObjectDetection
    from parity import detr_config
    # Auxiliary losses on every decoder layer, as DETR trains.
    return DetrForObjectDetection(detr_config(num_labels=91, auxiliary_loss=True)), (3, 800, 1066)


def torch_bench(kind, batch, train, warmup, iters, device="cpu", precision="f32"):
    model, shape = torch_model(kind)
    model = model.to(device)
    x = torch.randn(batch, *shape, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        y = torch.arange(batch, device=device) % 1000
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        # DETR: five boxes per image, the same as `zoo bench --train`.
        labels = [{"class_labels": torch.tensor([1 + (7 * i + 13 * k) % 90 for k in range(5)], device=device),
                   "boxes": torch.tensor([[0.1 + 0.15 * k, 0.3 + 0.1 * i, 0.1, 0.2] for k in range(5)], device=device)}
                  for i in range(batch)]

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = model(pixel_values=x, labels=labels).loss if kind == "detr" else loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sync()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(x)
            sync()
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t)
    return batch / statistics.median(seconds)


# The environment each side runs under, by `--isa`.
ISA_ENV = {
    "native": ({}, {}),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"ZOO_ISA": "avx2"}),
}


def torch_bench_process(kind, batch, train, warmup, iters, device, precision, isa):
    """`torch_bench` in a fresh process: (images/s, peak RSS MiB, PyTorch's CPU capability)."""
    cmd = [sys.executable, __file__, "--torch-case", json.dumps([kind, batch, train, warmup, iters, device, precision])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **ISA_ENV[isa][0]})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["images_per_sec"], r["peak_rss_mb"], r["capability"]


def torch_case(spec):
    kind, batch, train, warmup, iters, device, precision = json.loads(spec)
    torch.set_num_threads(os.cpu_count())
    ips = torch_bench(kind, batch, train, warmup, iters, device, precision)
    print(json.dumps({"images_per_sec": ips, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "capability": torch.backends.cpu.get_cpu_capability()}))


def zoo_bench(zoo, config, batch, train, warmup, iters, device, precision="f32", isa="native"):
    cmd = [zoo, "bench", "--config", config, "--batch", str(batch), "--iters", str(iters), "--warmup", str(warmup),
           "--device", device, "--precision", precision, "--json"] + (["--train"] if train else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ISA_ENV[isa][1]})
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def write_section(path, title, body):
    """Replaces `## title` (up to the next `## `) in the file, or appends it."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.strip() == f"## {title}"), None)
    if start is None:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{body}"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + f"## {title}\n\n{body}\n" + "".join(lines[end:])
    with open(path, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", default="target/release/zoo")
    p.add_argument("--devices", default="flex")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=10, help="timed iterations of inference")
    p.add_argument("--train-iters", type=int, default=3, help="timed iterations of a training step")
    p.add_argument("--rounds", type=int, default=5,
                   help="inference cases alternate PyTorch and zoo this many times (the median round counts), "
                        "so that a slow spell of the machine does not fall on one side only")
    p.add_argument("--train-rounds", type=int, default=3, help="the same for training steps")
    p.add_argument("--only", default="", help="run only the cases whose label contains this (no file written)")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"], help="where PyTorch runs")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                   help="bf16: PyTorch under autocast, the zoo with --precision bf16")
    p.add_argument("--section", default="", help="write the table as this section of --out, keeping the rest")
    p.add_argument("--isa", default="native", choices=sorted(ISA_ENV),
                   help="avx2: both sides restricted to AVX2 (--zoo must be a build without the avx512 feature)")
    p.add_argument("--torch-case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_case:
        return torch_case(args.torch_case)
    torch.set_num_threads(os.cpu_count())
    devices = args.devices.split(",")
    rows = []
    for label, config, batch, train, kind in CASES:
        if args.only and args.only not in label:
            continue
        iters = args.train_iters if train else args.iters
        rounds = args.train_rounds if train else args.rounds
        theirs_by_round, ours_by_round, torch_rss = [], {d: [] for d in devices}, []
        for _ in range(rounds):
            ips, rss, capability = torch_bench_process(kind, batch, train, args.warmup, iters, args.torch_device,
                                                       args.precision, args.isa)
            theirs_by_round.append(ips)
            torch_rss.append(rss)
            for device in devices:
                ours_by_round[device].append(
                    zoo_bench(args.zoo, config, batch, train, args.warmup, iters, device, args.precision, args.isa))
        theirs = sorted(theirs_by_round)[len(theirs_by_round) // 2]
        for device in devices:
            ours = sorted(ours_by_round[device], key=lambda r: r["images_per_sec"])[len(ours_by_round[device]) // 2]
            ratio = ours["images_per_sec"] / theirs
            mode = "train step" if train else "inference"
            rows.append((label, mode, batch, device, ours["images_per_sec"], theirs, ratio,
                         max(r["peak_rss_mb"] for r in ours_by_round[device]), max(torch_rss)))
            rounds_text = ", ".join(f"{r['images_per_sec']:.2f}/{t:.2f}" for r, t in zip(ours_by_round[device], theirs_by_round))
            print(f"{label} {mode} batch {batch} on {device}: zoo {ours['images_per_sec']:.2f} img/s, "
                  f"torch {theirs:.2f} img/s, ratio {ratio:.2f} (rounds zoo/torch: {rounds_text}); peak RSS MiB zoo "
                  f"{rows[-1][7]:.0f}, torch {rows[-1][8]:.0f}", flush=True)
    if args.only:
        return
    # The CPU's name and flags from the first processor of /proc/cpuinfo (where there is one).
    cpuinfo = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                cpuinfo.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = cpuinfo.get("model name") or platform.processor() or platform.machine()
    flags = set(cpuinfo.get("flags", "").split())
    native = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
    isa_text = (f"vector ISA: {native}, as the machine runs natively" if args.isa == "native" else
                f"CPU with {native}, both sides restricted to AVX2 (PyTorch `ATEN_CPU_CAPABILITY=avx2`, "
                "`MKL_ENABLE_INSTRUCTIONS=AVX2`; the zoo built without its `avx512` feature, `ZOO_ISA=avx2`)")
    torch_side = f"PyTorch {torch.__version__} eager " + ("bf16 autocast" if args.precision == "bf16" else "fp32")
    torch_side += f" (its CPU capability: {capability})"
    if args.torch_device == "cuda":
        torch_side += f" on {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        torch_side += f" with {torch.get_num_threads()} threads"
    command = " ".join(["python scripts/benchmarks.py", f"--devices {args.devices}"]
                       + ([f"--torch-device {args.torch_device}"] if args.torch_device != "cpu" else [])
                       + ([f"--precision {args.precision}"] if args.precision != "f32" else [])
                       + ([f"--isa {args.isa}"] if args.isa != "native" else []))
    table = (f"Measured by `{command}` in one run on {cpu} ({isa_text}), {os.cpu_count()} cores, {torch_side}; "
             f"the zoo in "
             f"{args.precision}; "
             f"{args.warmup} warm-up iteration, then the median of {args.iters} timed iterations for inference and "
             f"of {args.train_iters} for a training step, the same for both; each case alternates PyTorch and the "
             f"zoo, {args.rounds} times for inference and {args.train_rounds} for a training step, and reports the "
             "median round. Ratio = zoo / PyTorch "
             "images per second (above 1: the zoo is faster). Peak RSS: the largest of the case's processes on "
             "each side; RSS ratio = zoo / PyTorch (below 1: the zoo takes less). Random weights; speed does not "
             "depend on them.\n\n"
             "| model | mode | batch | zoo device | zoo img/s | PyTorch img/s | ratio | zoo peak RSS MiB "
             "| PyTorch peak RSS MiB | RSS ratio |\n"
             "|---|---|---|---|---|---|---|---|---|---|\n"
             + "".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.0f} "
                       f"| {r[8]:.0f} | {r[7] / r[8]:.2f} |\n" for r in rows))
    if args.section:
        write_section(args.out, args.section, table)
    else:
        with open(args.out, "w") as f:
            f.write("# Benchmarks\n\n" + table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
