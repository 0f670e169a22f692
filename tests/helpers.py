"""Helpers shared by the test folders: import them as `from tests.helpers import ...` (the
repository root is on pytest's path, so this works under `pytest` and `python -m pytest`)."""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"


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
