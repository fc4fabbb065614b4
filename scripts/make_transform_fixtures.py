"""Reference outputs of timm's eval transform for the test photos.

    python scripts/make_transform_fixtures.py datasets/tests/data

For each photo writes `<name>.timm224.npy`: the [3, 224, 224] float32 tensor that
timm.data.create_transform gives with ViT-B/16's eval settings (bicubic, crop_pct 0.9,
mean = std = 0.5), on the image opened by PIL and converted to RGB as timm's datasets do.
"""
import os
import sys

import numpy as np
import timm
from PIL import Image
from timm.data import create_transform

out = sys.argv[1] if len(sys.argv) > 1 else "datasets/tests/data"
t = create_transform(input_size=224, is_training=False, interpolation="bicubic",
                     crop_pct=0.9, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
print(t)
for name in ["chelsea.png", "grace_hopper.jpg"]:
    img = Image.open(os.path.join(out, name)).convert("RGB")
    x = t(img).numpy().astype(np.float32)
    stem = os.path.splitext(name)[0]
    np.save(os.path.join(out, f"{stem}.timm224.npy"), x)
    print(name, img.size, x.shape, float(x.mean()))
