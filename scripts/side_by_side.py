"""The demo's ViT and DETR trained side by side by the zoo and by the PyTorch references.

For each model: the reference makes the initial weights (timm's VisionTransformer; transformers'
DetrForObjectDetection on a timm ResNet-50-shaped backbone with frozen batch norm, as
make_model_fixtures.py builds the tiny DETR), the zoo trains from them (`train.init_from`) on the
demo's generated dataset (`zoo generate`) with the demo's config and augmentation off, recording
its batches (`zoo train --record-batches`); the reference then trains on the same batches in the
same order with the same recipe:

- ViT: timm's LabelSmoothingCrossEntropy, AdamW over param_groups_weight_decay, CosineLRScheduler
  (linear warmup from lr / 1000, per update), global gradient-norm clipping; validation loss
  (cross entropy) and top-1 on the validation set.
- DETR: facebookresearch/detr's set criterion on every decoder layer (transformers' port, on
  facebookresearch's auxiliary outputs, as scripts/make_train_step_fixtures.py), AdamW with the
  backbone group at train.backbone_lr, clipping at train.grad_clip, the config's schedule;
  images resized as DETR's RandomResize / eval transform do (PIL bilinear), padded batches with
  masks; COCO AP / AP50 from pycocotools on the validation set, as DETR's PostProcess keeps the
  detections.

Both curves of each model go on one picture (`side_by_side_vit.png`, `side_by_side_detr.png`)
and the per-epoch figures into `side_by_side.json`.

    python scripts/side_by_side.py --zoo target/release/zoo --out docs/side_by_side [--only vit]
"""
import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_config(path, config):
    """A config dict as TOML (tables of scalars and lists, one level of sub-tables)."""
    lines = []
    for table, fields in config.items():
        lines.append(f"[{table}]")
        subtables = {k: v for k, v in fields.items() if isinstance(v, dict)}
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items() if not isinstance(v, dict)]
        for name, sub in subtables.items():
            lines.append(f"[{table}.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def fresh(path):
    """`path` removed if it exists: each comparison trains from its first epoch."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_zoo(zoo, *args):
    started = time.time()
    subprocess.run([zoo, *args], check=True)
    return time.time() - started


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def normalise(img, mean, std):
    """An RGB PIL image as `[3, H, W]` normalised float32 values (ToTensor + Normalize)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def timm_schedule(opt, train, steps_per_epoch):
    """timm's CosineLRScheduler per update, as the zoo's warmup + cosine; None for a step drop."""
    from timm.scheduler import CosineLRScheduler

    total = train["epochs"] * steps_per_epoch
    warmup = train.get("warmup_epochs", 0) * steps_per_epoch
    return CosineLRScheduler(opt, t_initial=total - warmup, lr_min=train.get("min_lr", 0.0), warmup_t=warmup,
                             warmup_lr_init=train["lr"] / 1000, warmup_prefix=True, t_in_epochs=False)


def demo_setup(zoo, work, config_name, dataset):
    """The demo config (`configs/<config_name>`) and its dataset, generated under `work`; seeds torch."""
    with open(os.path.join(ROOT, "configs", config_name), "rb") as f:
        config = tomllib.load(f)
    data = os.path.join(work, dataset)
    run_zoo(zoo, "generate", dataset, "--out", data)
    torch.manual_seed(0)
    return config, data


# --- ViT --------------------------------------------------------------------------------------

def vit_side_by_side(zoo, work, epochs):
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim._param_groups import param_groups_weight_decay

    config, data = demo_setup(zoo, work, "demo_vit.toml", "textures")
    mc, train = config["model"], config["train"]
    m = VisionTransformer(img_size=mc["image_size"], patch_size=mc["patch_size"], embed_dim=mc["embed_dim"],
                          depth=mc["depth"], num_heads=mc["num_heads"], mlp_ratio=mc["mlp_ratio"],
                          num_classes=mc["num_classes"], global_pool=mc["global_pool"])
    init = os.path.join(work, "vit_init.safetensors")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, init)

    train.update(train_dir=os.path.join(data, "train"), val_dir=os.path.join(data, "val"),
                 output_dir=fresh(os.path.join(work, "zoo_vit")), init_from=init, hflip=0.0, scale_min=1.0)
    if epochs:
        train.update(epochs=epochs, warmup_epochs=min(train["warmup_epochs"], epochs - 1))
    cfg_path = os.path.join(work, "vit.toml")
    write_config(cfg_path, config)
    zoo_seconds = run_zoo(zoo, "train", "--config", cfg_path, "--record-batches")
    zoo_metrics = read_jsonl(os.path.join(train["output_dir"], "metrics.jsonl"))
    batches = read_jsonl(os.path.join(train["output_dir"], "batches.jsonl"))
    with open(os.path.join(train["output_dir"], "classes.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    mean, std = config["data"]["mean"], config["data"]["std"]

    def load(paths):
        x = torch.stack([normalise(Image.open(p).convert("RGB"), mean, std) for p in paths])
        y = torch.tensor([classes.index(os.path.basename(os.path.dirname(p))) for p in paths])
        return x, y

    val_dir = train["val_dir"]
    val_files = [os.path.join(val_dir, c, n) for c in sorted(os.listdir(val_dir))
                 for n in sorted(os.listdir(os.path.join(val_dir, c)))]
    val_x, val_y = load(val_files)

    started = time.time()
    m.train()
    groups = param_groups_weight_decay(m, train["weight_decay"], no_weight_decay_list=m.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=train["lr"], eps=1e-8)
    steps_per_epoch = math.ceil(len(batches[0]["files"]) / train["batch_size"])
    sched = timm_schedule(opt, train, steps_per_epoch)
    criterion = LabelSmoothingCrossEntropy(train["label_smoothing"])
    ref_metrics, updates = [], 0
    for epoch in batches:
        files, b = epoch["files"], epoch["batch_size"]
        loss_sum = 0.0
        for i in range(0, len(files), b):
            x, y = load(files[i:i + b])
            loss = criterion(m(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), train["grad_clip"])
            opt.step()
            updates += 1
            sched.step_update(num_updates=updates)
            loss_sum += loss.item() * len(y)
        m.eval()
        with torch.no_grad():
            logits = torch.cat([m(val_x[i:i + 256]) for i in range(0, len(val_x), 256)])
        m.train()
        ref_metrics.append({"epoch": epoch["epoch"], "train_loss": loss_sum / len(files),
                            "val_loss": torch.nn.functional.cross_entropy(logits, val_y).item(),
                            "val_top1": (logits.argmax(1) == val_y).float().mean().item()})
        print(f"timm epoch {epoch['epoch']}: {ref_metrics[-1]}", flush=True)
    return {"zoo": zoo_metrics, "reference": ref_metrics, "zoo_seconds": zoo_seconds,
            "reference_seconds": time.time() - started}


# --- DETR -------------------------------------------------------------------------------------

def build_detr(mc):
    """transformers' DETR with the config's sizes on a timm ResNet-50-shaped backbone (frozen
    batch norm), as make_model_fixtures.py builds the tiny DETR; the reference's own initialisation."""
    import timm
    from transformers import DetrConfig, DetrForObjectDetection
    from transformers.models.detr.modeling_detr import replace_batch_norm

    d = mc["hidden_dim"]
    cfg = DetrConfig(d_model=d, encoder_layers=mc["encoder_layers"], decoder_layers=mc["decoder_layers"],
                     encoder_attention_heads=mc["num_heads"], decoder_attention_heads=mc["num_heads"],
                     encoder_ffn_dim=mc["dim_feedforward"], decoder_ffn_dim=mc["dim_feedforward"],
                     num_queries=mc["num_queries"], num_labels=mc["num_classes"], dropout=mc.get("dropout", 0.1),
                     attention_dropout=0.0, activation_dropout=0.0, use_pretrained_backbone=False)
    m = DetrForObjectDetection(cfg)
    backbone = timm.create_model("resnet50", features_only=True, out_indices=[1, 2, 3, 4],
                                 layers=tuple(mc["backbone_layers"]), channels=tuple(mc["backbone_channels"]))
    stem = mc["backbone_stem_width"]
    if stem != backbone.conv1.out_channels:
        # timm's plain stem is 64 wide whatever stem_width says: narrow it, and give layer1's first
        # block the projection shortcut its wider output then needs (initialised as timm does).
        nn = torch.nn
        block = backbone.layer1[0]
        backbone.conv1, backbone.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem)
        block.conv1 = nn.Conv2d(stem, block.conv1.out_channels, 1, bias=False)
        out = block.conv3.out_channels
        block.downsample = nn.Sequential(nn.Conv2d(stem, out, 1, bias=False), nn.BatchNorm2d(out))
        for conv in (backbone.conv1, block.conv1, block.downsample[0]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    replace_batch_norm(backbone)
    m.model.backbone.model = backbone
    m.model.input_projection = torch.nn.Conv2d(4 * mc["backbone_channels"][-1], d, 1)
    return facebook_init(m)


def facebook_init(m):
    """facebookresearch/detr's initialisation, which trains from scratch (transformers' normal(0,
    0.02) everywhere is for fine-tuning: its 100 query embeddings start nearly equal): every
    transformer matrix Xavier-uniform with zero attention biases, the query embeddings N(0, 1),
    the heads and the input projection as torch's layers initialise themselves."""
    with torch.no_grad():
        for part in (m.model.encoder, m.model.decoder):
            for name, p in part.named_parameters():
                if p.dim() > 1:
                    torch.nn.init.xavier_uniform_(p)
                elif "_proj." in name:
                    p.zero_()
        m.model.query_position_embeddings.weight.normal_()
        for module in [m.model.input_projection, m.class_labels_classifier, *m.bbox_predictor.layers]:
            module.reset_parameters()
    return m


def detr_size(w, h, size, max_size):
    """facebookresearch/detr's get_size_with_aspect_ratio: (height, width)."""
    lo, hi = float(min(w, h)), float(max(w, h))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    return (int(size * h / w), size) if w < h else (size, int(size * w / h))


def pad(images):
    """DETR's NestedTensor: zero-padded to the largest height and width, mask true on pixels."""
    h, w = max(x.shape[1] for x in images), max(x.shape[2] for x in images)
    batch, mask = torch.zeros(len(images), 3, h, w), torch.zeros(len(images), h, w, dtype=torch.long)
    for i, x in enumerate(images):
        batch[i, :, :x.shape[1], :x.shape[2]] = x
        mask[i, :x.shape[1], :x.shape[2]] = 1
    return batch, mask


def detr_side_by_side(zoo, work, epochs):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
    from make_train_step_fixtures import legacy_names

    config, data = demo_setup(zoo, work, "demo_detr.toml", "objects")
    mc, train = config["model"], config["train"]
    m = build_detr(mc)
    init = os.path.join(work, "detr_init.safetensors")
    state = {k: v.contiguous() for k, v in m.state_dict().items() if "num_batches_tracked" not in k}
    save_file(legacy_names(state, m.state_dict()), init)

    scale = train["detection"]["scales"][len(train["detection"]["scales"]) // 2]
    max_size = train["detection"]["max_size"]
    train.update(train_dir=os.path.join(data, "train"), val_dir=os.path.join(data, "val"),
                 train_annotations=os.path.join(data, "annotations/instances_train.json"),
                 val_annotations=os.path.join(data, "annotations/instances_val.json"),
                 output_dir=fresh(os.path.join(work, "zoo_detr")), init_from=init, hflip=0.0)
    train["detection"].update(scales=[scale], crop_scales=[])
    if epochs:
        train["epochs"] = epochs
        if "lr_drop" in train:
            train["lr_drop"] = min(train["lr_drop"], epochs)
        if "warmup_epochs" in train:
            train["warmup_epochs"] = min(train["warmup_epochs"], epochs - 1)
    cfg_path = os.path.join(work, "detr.toml")
    write_config(cfg_path, config)
    zoo_seconds = run_zoo(zoo, "train", "--config", cfg_path, "--record-batches")
    zoo_metrics = read_jsonl(os.path.join(train["output_dir"], "metrics.jsonl"))
    batches = read_jsonl(os.path.join(train["output_dir"], "batches.jsonl"))
    mean, std = config["data"]["mean"], config["data"]["std"]

    def annotations(path):
        with open(path) as f:
            doc = json.load(f)
        by_file = {img["file_name"]: (img, []) for img in doc["images"]}
        by_id = {img["id"]: img["file_name"] for img in doc["images"]}
        for a in doc["annotations"]:
            by_file[by_id[a["image_id"]]][1].append(a)
        return by_file

    train_annotations = annotations(train["train_annotations"])

    def load_train(path):
        """DETR's ConvertCocoPolysToMask, RandomResize([scale], max_size), ToTensor, Normalize."""
        img = Image.open(path).convert("RGB")
        w, h = img.size
        anns = [a for a in train_annotations[os.path.basename(path)][1] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        boxes, labels = boxes[keep], labels[keep]
        oh, ow = detr_size(w, h, scale, max_size)
        img = img.resize((ow, oh), Image.BILINEAR)
        boxes = boxes * torch.tensor([ow / w, oh / h, ow / w, oh / h])
        cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                              boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        target = {"class_labels": labels, "boxes": cxcywh / torch.tensor([ow, oh, ow, oh], dtype=torch.float32)}
        return normalise(img, mean, std), target

    val_gt = COCO(train["val_annotations"])
    val_images = [(img["id"], os.path.join(train["val_dir"], img["file_name"]), img["width"], img["height"])
                  for img in val_gt.dataset["images"]]

    def evaluate():
        """COCO AP and AP50 of DETR's PostProcess detections (every query) on the validation set."""
        results = []
        m.eval()
        with torch.no_grad():
            for i in range(0, len(val_images), config["eval"]["batch_size"]):
                chunk = val_images[i:i + config["eval"]["batch_size"]]
                xs = []
                for _, path, w, h in chunk:
                    img = Image.open(path).convert("RGB")
                    oh, ow = detr_size(w, h, mc["eval_short_side"], mc["eval_max_side"])
                    xs.append(normalise(img.resize((ow, oh), Image.BILINEAR), mean, std))
                x, mask = pad(xs)
                o = m(pixel_values=x, pixel_mask=mask)
                scores, labels = o.logits.softmax(-1)[..., :-1].max(-1)
                for (image_id, _, w, h), s, lab, bx in zip(chunk, scores, labels, o.pred_boxes):
                    cx, cy, bw, bh = bx.unbind(-1)
                    x0, y0, x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
                    for q in range(len(s)):
                        results.append({"image_id": image_id, "category_id": int(lab[q]), "score": float(s[q]),
                                        "bbox": [float(x0[q]), float(y0[q]), float(x1[q] - x0[q]),
                                                 float(y1[q] - y0[q])]})
        m.train()
        dt = val_gt.loadRes(results)
        ev = COCOeval(val_gt, dt, "bbox")
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            finally:
                sys.stdout = stdout
        return float(ev.stats[0]), float(ev.stats[1])

    started = time.time()
    m.train()
    loss_config = copy.deepcopy(m.config)
    loss_config.auxiliary_loss = True
    backbone = m.model.backbone.model
    parts = train.get("frozen_backbone_parts", 2)
    stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)][:parts]
    frozen = [p for stage in stages for p in stage]
    for name, p in backbone.named_parameters():
        if any(name.startswith(f) for f in frozen):
            p.requires_grad_(False)
    is_backbone = {id(p) for p in backbone.parameters()}
    groups = [
        {"params": [p for p in m.parameters() if id(p) not in is_backbone and p.requires_grad]},
        {"params": [p for p in backbone.parameters() if p.requires_grad],
         "lr": train.get("backbone_lr", train["lr"] / 10)},
    ]
    opt = torch.optim.AdamW(groups, lr=train["lr"], weight_decay=train["weight_decay"])
    steps_per_epoch = math.ceil(len(batches[0]["files"]) / train["batch_size"])
    if "lr_drop" in train:
        sched = torch.optim.lr_scheduler.StepLR(opt, train["lr_drop"] * steps_per_epoch)
    else:
        sched = timm_schedule(opt, train, steps_per_epoch)
    ref_metrics, updates = [], 0
    for epoch in batches:
        files, b = epoch["files"], epoch["batch_size"]
        loss_sum = 0.0
        for i in range(0, len(files), b):
            loaded = [load_train(p) for p in files[i:i + b]]
            x, mask = pad([im for im, _ in loaded])
            labels = [t for _, t in loaded]
            o = m(pixel_values=x, pixel_mask=mask, output_hidden_states=True)
            # facebookresearch's auxiliary outputs: every decoder layer's output through the
            # shared final norm (transformers' own auxiliary path norms the inputs of the next).
            hidden = o.decoder_hidden_states
            normed = torch.stack([*(m.model.decoder.layernorm(h) for h in hidden[1:-1]), hidden[-1]])
            logits, boxes = m.class_labels_classifier(normed), m.bbox_predictor(normed).sigmoid()
            loss, _, _ = ForObjectDetectionLoss(logits[-1], labels, x.device, boxes[-1], loss_config, logits, boxes)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), train["grad_clip"])
            opt.step()
            updates += 1
            if "lr_drop" in train:
                sched.step()
            else:
                sched.step_update(num_updates=updates)
            loss_sum += loss.item()
        ap, ap50 = evaluate()
        n = math.ceil(len(files) / b)
        ref_metrics.append({"epoch": epoch["epoch"], "train_loss": loss_sum / n, "val_ap": ap, "val_ap50": ap50})
        print(f"transformers epoch {epoch['epoch']}: {ref_metrics[-1]}", flush=True)
    return {"zoo": zoo_metrics, "reference": ref_metrics, "zoo_seconds": zoo_seconds,
            "reference_seconds": time.time() - started}


# --- the pictures -----------------------------------------------------------------------------

def plot(result, panels, reference_name, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    colours = ["tab:blue", "tab:green", "tab:red"]
    for ax, (label, keys) in zip(axes, panels):
        for key, colour in zip(keys, colours):
            # The zoo's curve wide and pale, the reference's thin with dots on top of it: where
            # they agree, the dots sit on the band.
            zoo, ref = result["zoo"], result["reference"]
            ax.plot([r["epoch"] for r in zoo], [r[key] for r in zoo], "-", color=colour, lw=5, alpha=0.35,
                    label=f"zoo {key}")
            ax.plot([r["epoch"] for r in ref], [r[key] for r in ref], "o-", color=colour, lw=1, ms=2.5,
                    label=f"{reference_name} {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def largest_differences(result, keys):
    """Per key, the largest |zoo - reference| over the epochs."""
    return {k: max(abs(a[k] - b[k]) for a, b in zip(result["zoo"], result["reference"])) for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release/zoo"))
    parser.add_argument("--out", default="docs/side_by_side")
    parser.add_argument("--work", default="out/side_by_side")
    parser.add_argument("--only", choices=["vit", "detr"])
    parser.add_argument("--epochs", type=int, help="fewer epochs than the demo configs' (a quick look)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count())
    os.makedirs(args.out, exist_ok=True)
    args.work = os.path.abspath(args.work)  # the configs' paths are relative to their own folder
    os.makedirs(args.work, exist_ok=True)
    summary_path = os.path.join(args.out, "side_by_side.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    import timm
    import transformers
    versions = f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}"
    if args.only in (None, "vit"):
        r = vit_side_by_side(args.zoo, args.work, args.epochs)
        r["largest_differences"] = largest_differences(r, ["train_loss", "val_loss", "val_top1"])
        print(f"ViT, largest |zoo - timm| over the epochs: {r['largest_differences']}")
        summary["vit"] = {**r, "versions": versions}
        plot(r, [("loss", ["train_loss", "val_loss"]), ("validation top-1", ["val_top1"])],
             "timm", "demo ViT: zoo and timm from the same weights on the same batches",
             os.path.join(args.out, "side_by_side_vit.png"))
    if args.only in (None, "detr"):
        r = detr_side_by_side(args.zoo, args.work, args.epochs)
        r["largest_differences"] = largest_differences(r, ["train_loss", "val_ap", "val_ap50"])
        print(f"DETR, largest |zoo - transformers| over the epochs: {r['largest_differences']}")
        summary["detr"] = {**r, "versions": versions}
        plot(r, [("training loss", ["train_loss"]), ("validation COCO AP", ["val_ap", "val_ap50"])],
             "transformers", "demo DETR: zoo and transformers (detr's criterion) from the same weights on the same batches",
             os.path.join(args.out, "side_by_side_detr.png"))
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
