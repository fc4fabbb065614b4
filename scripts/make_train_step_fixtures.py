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

    python scripts/make_train_step_fixtures.py models/tests/fixtures
"""
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


def vit_steps(out):
    fixture = os.path.join(out, "vit_tiny")
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    m.load_state_dict(load_file(os.path.join(fixture, "model.safetensors")))
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
    print(f"vit_tiny: losses {losses}, lrs {lrs}, grad norms {norms}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    torch.set_num_threads(2)
    vit_steps(out)
