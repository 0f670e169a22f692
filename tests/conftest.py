import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `alexc` CLI in-process; returns (exit code, stdout, stderr)."""
    from alexc.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["alexc", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


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
