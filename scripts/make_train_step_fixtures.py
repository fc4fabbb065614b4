"""Three training steps of the tiny ViT fixture as timm trains it, for the zoo's training-step
parity test (train/tests/train_step_parity.rs).

From the fixture's weights and input (make_model_fixtures.py), with labels [3, 7]: timm's
LabelSmoothingCrossEntropy(0.1), backward, torch.nn.utils.clip_grad_norm_ (global norm),
torch.optim.AdamW over timm's param_groups_weight_decay (no decay on biases, norms, cls_token,
pos_embed), lr from timm's CosineLRScheduler per update (linear warmup from lr / 1000 over 2
updates, then cosine over the remaining 8 to min_lr: warmup_prefix=True, t_in_epochs=False),
stepped with step_update as timm's train loop does. In float32, as both train. Writes to
`models/tests/fixtures/vit_tiny/train_steps/`: `losses.npy` and `lrs.npy` (per step, the lr each
step used), `grad_norms.npy` (before clipping), `model.safetensors` (the weights after step 3)
and `labels.npy`.

The same for the tiny DETR fixture with facebookresearch/detr's set loss over every decoder
layer (transformers' port of it, on facebookresearch's auxiliary outputs) and facebookresearch/detr's optimizer (AdamW at 1e-4, the backbone
at 1e-5, the stem and layer1 frozen, clipping at 0.1): `detr_tiny/train_steps/` with the losses,
the weights after step 3 and the matching each step's loss used.

    python scripts/make_train_step_fixtures.py models/tests/fixtures
"""
import copy
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from timm.loss import LabelSmoothingCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim._param_groups import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

# The hyper-parameters the Rust test uses too (its config: 5 epochs of 2 steps, 1 warmup epoch).
LR, MIN_LR, WEIGHT_DECAY, CLIP, SMOOTHING = 1e-3, 1e-5, 0.05, 0.5, 0.1
WARMUP, TOTAL, STEPS = 2, 10, 3
LABELS = [3, 7]


def vit_steps(fixture, m):
    """timm's three steps of `m` on `fixture`/input.npy, written to `fixture`/train_steps."""
    m.train()
    x = torch.from_numpy(np.load(os.path.join(fixture, "input.npy")))
    y = torch.tensor(LABELS)
    groups = param_groups_weight_decay(m, WEIGHT_DECAY, no_weight_decay_list=m.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = CosineLRScheduler(opt, t_initial=TOTAL - WARMUP, lr_min=MIN_LR, warmup_t=WARMUP,
                              warmup_lr_init=LR / 1000, warmup_prefix=True, t_in_epochs=False)
    crit = LabelSmoothingCrossEntropy(SMOOTHING)
    losses, lrs, norms = [], [], []
    for step in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        loss = crit(m(x), y)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP)))
        opt.step()
        sched.step_update(num_updates=step + 1)
        losses.append(loss.item())
    d = os.path.join(fixture, "train_steps")
    os.makedirs(d, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
    np.save(os.path.join(d, "losses.npy"), np.array(losses, dtype=np.float32))
    np.save(os.path.join(d, "lrs.npy"), np.array(lrs, dtype=np.float64))
    np.save(os.path.join(d, "grad_norms.npy"), np.array(norms, dtype=np.float32))
    np.save(os.path.join(d, "labels.npy"), np.array(LABELS, dtype=np.int64))
    print(f"{fixture}: losses {losses}, lrs {lrs}, grad norms {norms}")


# DETR: facebookresearch/detr's recipe on the tiny fixture (lr 1e-4, backbone 1e-5, weight decay
# 1e-4, clipping at 0.1, the stem and layer1 frozen), HF's loss with the auxiliary losses.
DETR_LR, DETR_BACKBONE_LR, DETR_WEIGHT_DECAY, DETR_CLIP = 1e-4, 1e-5, 1e-4, 0.1
DETR_TARGETS = [([1, 3], [[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]), ([2], [[0.5, 0.5, 0.4, 0.4]])]


def legacy_names(state, model_keys):
    """The fixture's save_pretrained names (transformers 5.23) for this version's keys."""
    if "model.encoder.layers.0.mlp.fc1.weight" not in model_keys:
        return state
    def rename(k):
        k = k.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        return k.replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.").replace(".o_proj.", ".out_proj.")
    return {rename(k): v for k, v in state.items()}


def detr_steps(fixture, m, save=None):
    """The reference's three steps of transformers' DETR `m` on `fixture`/input.npy and
    valid_mask.npy, written to `fixture`/train_steps; `save(m, path)` writes the weights after
    them (default: save_pretrained's legacy names, as the tiny fixture has them)."""
    # The auxiliary outputs as facebookresearch/detr makes them: every decoder layer's output
    # through the shared final norm, the next layer taking the un-normed output. (transformers'
    # DetrDecoder with auxiliary_loss=True feeds the normed output on, and norms the last layer
    # twice; without it the model is facebookresearch's, as the inference fixtures check.) The
    # loss is transformers' port of detr's SetCriterion over those outputs.
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss, HungarianMatcher

    m.train()
    loss_config = copy.deepcopy(m.config)
    loss_config.auxiliary_loss = True
    # detr's main.py: the stem and layer1 of the backbone do not train.
    backbone = m.model.backbone.model
    for name, p in backbone.named_parameters():
        if not any(stage in name for stage in ("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    is_backbone = {id(p) for p in backbone.parameters()}
    groups = [
        {"params": [p for p in m.parameters() if id(p) not in is_backbone and p.requires_grad]},
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": DETR_BACKBONE_LR},
    ]
    opt = torch.optim.AdamW(groups, lr=DETR_LR, weight_decay=DETR_WEIGHT_DECAY)
    x = torch.from_numpy(np.load(os.path.join(fixture, "input.npy")))
    mask = torch.from_numpy(np.load(os.path.join(fixture, "valid_mask.npy")).astype(np.int64))
    labels = [{"class_labels": torch.tensor(c), "boxes": torch.tensor(b)} for c, b in DETR_TARGETS]
    # The assignment the loss used, per step, decoder layer and image: [[query, target], ...]. With
    # random weights the queries are nearly alike and their costs nearly tie (within 1e-5), so
    # the zoo's loss is compared under this one (its matcher is compared with scipy's elsewhere).
    matcher = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    losses, matchings = [], []
    for _ in range(STEPS):
        o = m(pixel_values=x, pixel_mask=mask, output_hidden_states=True)
        # decoder_hidden_states: each layer's input (the previous layer's output), then the
        # last layer's output through the norm.
        hidden = o.decoder_hidden_states
        assert len(hidden) == m.config.decoder_layers + 1 and torch.equal(hidden[-1], o.last_hidden_state)
        normed = torch.stack([*(m.model.decoder.layernorm(h) for h in hidden[1:-1]), hidden[-1]])
        logits, boxes = m.class_labels_classifier(normed), m.bbox_predictor(normed).sigmoid()
        loss, _, _ = ForObjectDetectionLoss(logits[-1], labels, x.device, boxes[-1], loss_config, logits, boxes)
        with torch.no_grad():
            layers = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]
            matchings.append([[[[int(q), int(t)] for q, t in zip(qs, ts)] for qs, ts in matcher(out, labels)]
                              for out in layers])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), DETR_CLIP)
        opt.step()
        losses.append(loss.item())
    d = os.path.join(fixture, "train_steps")
    os.makedirs(d, exist_ok=True)
    if save is None:
        state = legacy_names({k: v.detach().contiguous() for k, v in m.state_dict().items()}, m.state_dict())
        save_file(state, os.path.join(d, "model.safetensors"))
    else:
        save(m, os.path.join(d, "model.safetensors"))
    np.save(os.path.join(d, "losses.npy"), np.array(losses, dtype=np.float32))
    with open(os.path.join(d, "matchings.json"), "w") as f:
        json.dump(matchings, f)
    print(f"{fixture}: losses {losses}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    torch.set_num_threads(2)
    vit = os.path.join(out, "vit_tiny")
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    m.load_state_dict(load_file(os.path.join(vit, "model.safetensors")))
    vit_steps(vit, m)
    sys.path.insert(0, os.path.dirname(__file__))
    from make_attention_fixtures import tiny_detr
    detr = os.path.join(out, "detr_tiny")
    detr_steps(detr, tiny_detr(detr))
