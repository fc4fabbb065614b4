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
import transformers
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


def hf_to_facebook(sd):
    """The same weights under facebookresearch/detr's names: `backbone.0.body.*` for the
    ResNet, `nn.MultiheadAttention`'s fused `in_proj_weight` (rows q, k, v), linear1/linear2,
    norm1..3 (the inverse of transformers' conversion script)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("model.backbone.conv_encoder.model.", "backbone.0.body.")
        k = k.replace("model.input_projection.", "input_proj.")
        k = k.replace("model.query_position_embeddings.", "query_embed.")
        k = k.replace("model.decoder.layernorm.", "transformer.decoder.norm.")
        k = k.replace("model.encoder.", "transformer.encoder.").replace("model.decoder.", "transformer.decoder.")
        k = k.replace("class_labels_classifier.", "class_embed.").replace("bbox_predictor.", "bbox_embed.")
        k = k.replace(".encoder_attn.", ".multihead_attn.").replace(".out_proj.", ".out_proj.")
        k = k.replace(".fc1.", ".linear1.").replace(".fc2.", ".linear2.")
        k = k.replace(".self_attn_layer_norm.", ".norm1.").replace(".encoder_attn_layer_norm.", ".norm2.")
        k = k.replace(".final_layer_norm.", ".norm2." if "encoder." in k else ".norm3.")
        out[k] = v
    fused = {}
    for k in list(out):
        for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
            if f".{p}." in k:
                base, param = k.split(f".{p}.")
                fused.setdefault(f"{base}.in_proj_{param}", [None] * 3)[i] = out.pop(k)
    for k, parts in fused.items():
        out[k] = torch.cat(parts, 0)
    return out


def detr_config(num_classes, d, heads, ffn, enc, dec, queries, layers, channels, stem):
    return f"""# Made by scripts/make_model_fixtures.py with transformers {transformers.__version__}
[model]
arch = "detr"
num_classes = {num_classes}
hidden_dim = {d}
num_heads = {heads}
dim_feedforward = {ffn}
encoder_layers = {enc}
decoder_layers = {dec}
num_queries = {queries}
backbone_layers = {list(layers)}
backbone_channels = {list(channels)}
backbone_stem_width = {stem}
"""


def detr_cases(out):
    from transformers import DetrConfig, DetrForObjectDetection
    from transformers.models.detr.modeling_detr import replace_batch_norm

    torch.manual_seed(0)
    d, heads, ffn, enc, dec, queries, labels = 32, 4, 64, 2, 2, 10, 5
    cfg = DetrConfig(d_model=d, encoder_layers=enc, decoder_layers=dec, encoder_attention_heads=heads,
                     decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                     num_queries=queries, num_labels=labels, dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0)
    m = DetrForObjectDetection(cfg)
    # A ResNet-50-shaped backbone (bottlenecks, v1.5 strides) with one block per stage and 1/8
    # of the width, so the fixture stays small; the full-size one is checked by scripts/parity.py.
    # (timm's stem stays 64 wide unless the stem is "deep".)
    layers, channels, stem = (1, 1, 1, 1), (8, 16, 32, 64), 64
    tiny = timm.create_model("resnet50", features_only=True, out_indices=[1, 2, 3, 4], layers=layers,
                             channels=channels)
    replace_batch_norm(tiny)
    m.model.backbone.model = tiny
    m.model.input_projection = torch.nn.Conv2d(4 * channels[-1], d, 1)
    perturb(m, 7)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():  # frozen batch norm keeps all four as buffers; running_var stays positive
        for name, buf in m.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif name.endswith(("running_mean", ".bias")):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith(".weight"):
                buf.copy_(1.0 + 0.1 * torch.randn(buf.shape, generator=g))
    m.eval()

    # Two images of different sizes in one batch: the second is zero-padded bottom/right.
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.ones(2, 96, 128, dtype=torch.long)
    x[1, :, 64:, :] = 0
    x[1, :, :, 96:] = 0
    mask[1, 64:, :] = 0
    mask[1, :, 96:] = 0
    with torch.no_grad():
        o = m(pixel_values=x, pixel_mask=mask)

    dd = os.path.join(out, "detr_tiny")
    os.makedirs(dd, exist_ok=True)
    # HF layout as save_pretrained writes it (legacy key names), then the original layout.
    m.save_pretrained(dd, safe_serialization=True)
    os.remove(os.path.join(dd, "config.json"))
    from safetensors.torch import load_file
    hf = load_file(os.path.join(dd, "model.safetensors"))
    torch.save({"model": hf_to_facebook(hf)}, os.path.join(dd, "detr_original.pth"))
    np.save(os.path.join(dd, "input.npy"), x.numpy())
    np.save(os.path.join(dd, "valid_mask.npy"), mask.numpy().astype(np.uint8))
    np.save(os.path.join(dd, "pred_logits.npy"), o.logits.numpy())
    np.save(os.path.join(dd, "pred_boxes.npy"), o.pred_boxes.numpy())
    with open(os.path.join(dd, "config.toml"), "w") as f:
        f.write(detr_config(labels, d, heads, ffn, enc, dec, queries, layers, channels, stem))
    print(f"detr_tiny: {sum(p.numel() for p in m.parameters())} params, {len(hf)} HF keys, "
          f"logits {tuple(o.logits.shape)}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures"
    torch.set_num_threads(2)
    vit_cases(out)
    tnt_cases(out)
    detr_cases(out)
