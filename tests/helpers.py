"""Helpers shared by the test folders: import them as `from tests.helpers import ...` (the
repository root is on pytest's path, so this works under `pytest` and `python -m pytest`)."""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"

# A network that learns color_folder's images in a few steps (the `tiny` fixture).
TINY_TRAINABLE = """\
name: tiny
input: {name: image, shape: [3, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 2, stride: 2}
  - {name: flatten, op: flatten}
  - {name: fc6, op: linear, units: 16}
  - {name: relu6, op: relu}
  - {name: drop6, op: dropout, rate: 0.5}
  - {name: fc8, op: linear, units: 7}
train: {batch_size: 8, epochs: 2, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
data: {flip: true, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
"""


def color_folder(root: Path, per_class=24, classes=("red", "green", "blue"), seed=0, size=8):
    """An image folder where class k's images are bright in channel k, plus noise: learnable
    in a few steps. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3))
            img[..., k % 3] += 160 if k < 3 else 80
            Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root
