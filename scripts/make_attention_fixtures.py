"""Writes the reference attention probabilities of the tiny model fixtures, which `cargo test`
checks `zoo attention --npy-out` and the models' attention recording against.

Each fixture's weights (made by make_model_fixtures.py) are loaded into the reference model:
timm's ViT and TNT with `fused_attn = False` and a forward hook on every `attn_drop`, whose input
is the softmax probabilities; transformers' DETR with eager attention and
`output_attentions=True`. The script first checks that the rebuilt model gives the fixture's
saved output, then writes, under each fixture's `attention/` folder:

- ViT, TNT: `attn_{i}.npy` [B, heads, N, N] (N counts the class token); TNT also
  `inner_attn_{i}.npy` [B * patches, heads, pixels, pixels];
- DETR: `encoder_attn_{i}.npy` [B, heads, HW, HW], `decoder_self_attn_{i}.npy` [B, heads, Q, Q],
  `decoder_cross_attn_{i}.npy` [B, heads, Q, HW].

    python scripts/make_attention_fixtures.py models/tests/fixtures
"""
import os
import sys

import numpy as np
import timm
import torch
from safetensors.torch import load_file


def record(modules):
    """Forward hooks that keep the input of each module (the attention probabilities)."""
    kept = [None] * len(modules)

    def hook(i):
        def keep(_module, inputs, _output):
            kept[i] = inputs[0].detach().clone()
        return keep

    for i, m in enumerate(modules):
        m.register_forward_hook(hook(i))
    return kept


def check_output(name, y, fixture):
    expected = np.load(os.path.join(fixture, "output.npy"))
    diff = float(np.abs(y.numpy() - expected).max())
    assert diff < 1e-5, f"{name}: the rebuilt model's output is {diff} off the fixture's"


def save(folder, arrays):
    os.makedirs(folder, exist_ok=True)
    for name, a in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), a.numpy().astype(np.float32))
    print(f"{folder}: {len(arrays)} arrays, e.g. {next(iter(arrays))} {tuple(next(iter(arrays.values())).shape)}")


def vit_case(out):
    from timm.models.vision_transformer import VisionTransformer

    fixture = os.path.join(out, "vit_tiny")
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    m.load_state_dict(load_file(os.path.join(fixture, "model.safetensors")))
    m.eval()
    for block in m.blocks:
        block.attn.fused_attn = False
    kept = record([block.attn.attn_drop for block in m.blocks])
    x = torch.from_numpy(np.load(os.path.join(fixture, "input.npy")))
    with torch.no_grad():
        check_output("vit_tiny", m(x), fixture)
    save(os.path.join(fixture, "attention"), {f"attn_{i}": a for i, a in enumerate(kept)})


def tnt_case(out):
    from timm.models.tnt import TNT

    fixture = os.path.join(out, "tnt_tiny")
    m = TNT(img_size=32, patch_size=16, embed_dim=48, inner_dim=24, depth=2, num_heads_inner=4,
            num_heads_outer=4, qkv_bias=False, num_classes=10)
    m.load_state_dict(load_file(os.path.join(fixture, "model.safetensors")))
    m.eval()
    outer = record([block.attn_out.attn_drop for block in m.blocks])
    inner = record([block.attn_in.attn_drop for block in m.blocks])
    x = torch.from_numpy(np.load(os.path.join(fixture, "input.npy")))
    with torch.no_grad():
        check_output("tnt_tiny", m(x), fixture)
    arrays = {f"attn_{i}": a for i, a in enumerate(outer)}
    arrays.update({f"inner_attn_{i}": a for i, a in enumerate(inner)})
    save(os.path.join(fixture, "attention"), arrays)


def tiny_detr(fixture, **config):
    """The tiny DETR fixture (make_model_fixtures.py's structure) with its weights, eager
    attention so that the probabilities are returned; `config` adds DetrConfig fields."""
    from transformers import DetrConfig, DetrForObjectDetection
    from transformers.models.detr.modeling_detr import replace_batch_norm

    d, heads, ffn, enc, dec, queries, labels = 32, 4, 64, 2, 2, 10, 5
    cfg = DetrConfig(d_model=d, encoder_layers=enc, decoder_layers=dec, encoder_attention_heads=heads,
                     decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                     num_queries=queries, num_labels=labels, dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0, attn_implementation="eager", **config)
    m = DetrForObjectDetection(cfg)
    tiny = timm.create_model("resnet50", features_only=True, out_indices=[1, 2, 3, 4], layers=(1, 1, 1, 1),
                             channels=(8, 16, 32, 64))
    replace_batch_norm(tiny)
    m.model.backbone.model = tiny
    m.model.input_projection = torch.nn.Conv2d(4 * 64, d, 1)
    state = load_file(os.path.join(fixture, "model.safetensors"))
    if "model.encoder.layers.0.mlp.fc1.weight" in m.state_dict():
        # The fixture is in save_pretrained's legacy names; newer transformers renamed a few.
        def rename(k):
            k = k.replace("model.backbone.conv_encoder.model.", "model.backbone.model.")
            return k.replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2.").replace(".out_proj.", ".o_proj.")
        state = {rename(k): v for k, v in state.items()}
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all("num_batches_tracked" in k for k in missing), (missing, unexpected)
    return m


def detr_case(out):
    fixture = os.path.join(out, "detr_tiny")
    m = tiny_detr(fixture)
    m.eval()
    x = torch.from_numpy(np.load(os.path.join(fixture, "input.npy")))
    mask = torch.from_numpy(np.load(os.path.join(fixture, "valid_mask.npy")).astype(np.int64))
    with torch.no_grad():
        o = m(pixel_values=x, pixel_mask=mask, output_attentions=True)
    diff = float(np.abs(o.logits.numpy() - np.load(os.path.join(fixture, "pred_logits.npy"))).max())
    assert diff < 1e-5, f"detr_tiny: the rebuilt model's logits are {diff} off the fixture's"
    arrays = {f"encoder_attn_{i}": a for i, a in enumerate(o.encoder_attentions)}
    arrays.update({f"decoder_self_attn_{i}": a for i, a in enumerate(o.decoder_attentions)})
    arrays.update({f"decoder_cross_attn_{i}": a for i, a in enumerate(o.cross_attentions)})
    save(os.path.join(fixture, "attention"), arrays)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    torch.set_num_threads(2)
    vit_case(out)
    tnt_case(out)
    detr_case(out)
