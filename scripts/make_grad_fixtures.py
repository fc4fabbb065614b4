"""Reference gradients of one training step of the tiny ViT and TNT fixtures, from timm in
float64, for the backend tests (`infer/tests/backends.rs`):

    python scripts/make_grad_fixtures.py models/tests/fixtures

Each fixture's model (its `model.safetensors`) takes its `input.npy`; the loss is the
cross-entropy against one-hot labels `i % classes` averaged over the batch (the zoo's
`soft_cross_entropy`); written: `train_loss.npy` (the loss) and `train_grad.npy` (the gradient
of the first layer's weight: ViT `patch_embed.proj.weight`, TNT `pixel_embed.proj.weight`), as
float32.
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from timm.models.tnt import TNT
from timm.models.vision_transformer import VisionTransformer


def step(out, name, model, first_layer):
    d = os.path.join(out, name)
    model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
    model = model.double().eval()
    x = torch.from_numpy(np.load(os.path.join(d, "input.npy"))).double()
    logits = model(x)
    b, c = logits.shape
    targets = torch.zeros(b, c, dtype=torch.float64)
    targets[torch.arange(b), torch.arange(b) % c] = 1.0
    loss = -(targets * torch.log_softmax(logits, 1)).sum() / b
    loss.backward()
    grad = first_layer(model).weight.grad
    np.save(os.path.join(d, "train_loss.npy"), np.array([loss.item()], dtype=np.float32))
    np.save(os.path.join(d, "train_grad.npy"), grad.numpy().astype(np.float32))
    print(f"{name}: loss {loss.item():.6f}, gradient {tuple(grad.shape)}, max |g| {grad.abs().max().item():.4g}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    step(out, "vit_tiny", vit, lambda m: m.patch_embed.proj)
    tnt = TNT(img_size=32, patch_size=16, embed_dim=48, inner_dim=24, depth=2, num_heads_inner=4,
              num_heads_outer=4, qkv_bias=False, num_classes=10)
    step(out, "tnt_tiny", tnt, lambda m: m.pixel_embed.proj)
