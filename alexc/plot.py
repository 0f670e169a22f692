"""`alexc plot`: loss and accuracy curves of a run as a PNG, drawn with Pillow (no plotting
library needed)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import AlexcError
from .train import load_run_metrics

COLOURS = {
    "train loss": (31, 119, 180),
    "val loss": (255, 127, 14),
    "train top-1": (31, 119, 180),
    "val top-1": (255, 127, 14),
    "val top-5": (44, 160, 44),
}


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    return [
        first + i * step
        for i in range(int((hi - first) / step) + 2)
        if first + i * step <= hi + 1e-12
    ]


def _panel(draw: ImageDraw.ImageDraw, box, title, series, legend_top=True):
    """One chart: axes, ticks, a legend (top or bottom right, away from the curves' usual
    path), and a polyline per (label, xs, ys) series."""
    left, top, right, bottom = box
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    x0, x1 = min(xs_all), max(xs_all)
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = min(ys_all), max(ys_all)
    if y1 == y0:
        y1 = y0 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def at(x, y):
        return (
            left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (y - y0) / (y1 - y0) * (bottom - top),
        )

    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 16), title, fill=(0, 0, 0))
    for t in _nice_ticks(y0, y1):
        if y0 <= t <= y1:
            _, y = at(x0, t)
            draw.line([(left, y), (right, y)], fill=(225, 225, 225))
            draw.text((left - 46, y - 6), f"{t:.3g}", fill=(0, 0, 0))
    for t in _nice_ticks(x0, x1):
        if x0 <= t <= x1:
            x, _ = at(t, y0)
            draw.line([(x, bottom), (x, bottom + 4)], fill=(0, 0, 0))
            draw.text((x - 8, bottom + 6), f"{t:g}", fill=(0, 0, 0))
    draw.text(((left + right) / 2 - 16, bottom + 20), "epoch", fill=(0, 0, 0))
    for i, (label, xs, ys) in enumerate(series):
        colour = COLOURS[label]
        points = [at(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        y = top + 12 + 14 * i if legend_top else bottom - 12 - 14 * (len(series) - 1 - i)
        draw.line([(right - 110, y), (right - 90, y)], fill=colour, width=2)
        draw.text((right - 86, y - 6), label, fill=(0, 0, 0))


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the loss and accuracy curves of RUN_DIR (per epoch) to a PNG; returns its path."""
    epochs = [r for r in load_run_metrics(run_dir) if r.get("event") == "epoch"]
    if not epochs:
        raise AlexcError(f"{run_dir}: metrics.jsonl has no finished epoch to plot yet")
    xs = [r["epoch"] for r in epochs]
    image = Image.new("RGB", (1000, 420), "white")
    draw = ImageDraw.Draw(image)
    _panel(
        draw,
        (70, 40, 480, 360),
        "loss",
        [
            ("train loss", xs, [r["train_loss"] for r in epochs]),
            ("val loss", xs, [r["val_loss"] for r in epochs]),
        ],
    )
    accuracy = [
        ("val top-1", xs, [r["val_top1"] for r in epochs]),
        ("val top-5", xs, [r["val_top5"] for r in epochs]),
    ]
    if all("train_top1" in r for r in epochs):
        accuracy.insert(0, ("train top-1", xs, [r["train_top1"] for r in epochs]))
    _panel(draw, (570, 40, 980, 360), "accuracy", accuracy, legend_top=False)
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    try:
        image.save(out)
    except OSError as e:
        raise AlexcError(f"{out}: cannot write the plot ({e.strerror or e})") from None
    return out
