"""Pictures of a run and of trained weights, drawn with matplotlib's Agg and SVG renderers (no
display, no pyplot state): learning curves, the first conv layer's filters, a confusion matrix,
and the activations of one image through the conv layers. The network diagram is in diagram.py.

Each function writes a PNG or an SVG, chosen by the suffix of `out`, atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import AlexcError
from ..files import write_atomic
from ..ir import Graph, Node, Op
from ..training.metrics import load_run_metrics

FORMATS = (".png", ".svg")
# Ops that map each channel to the same channel: the towers of a grouped conv stay apart
# through them (LRN mixes neighbouring channels, so it joins the towers).
CHANNELWISE = (Op.RELU, Op.MAXPOOL, Op.AVGPOOL, Op.DROPOUT)


def picture_format(out: str | Path) -> str:
    """'png' or 'svg' from the file name; anything else is one clear error."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise AlexcError(f"{out}: pictures are written as .png or .svg, not '{suffix or 'none'}'")
    return suffix[1:]


def new_figure(width: float, height: float):
    """A figure bound to no display (matplotlib's object API, not pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, out: str | Path, what: str, dpi: int = 100) -> Path:
    """Render `fig` as PNG or SVG (text kept as text) and write it atomically."""
    from matplotlib import rc_context

    out = Path(out)
    kind = picture_format(out)
    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "alexc"}):
        # No date in an SVG, so the same input draws the same bytes.
        fig.savefig(buffer, format=kind, dpi=dpi, metadata={"Date": None} if kind == "svg" else {})
    write_atomic(out, buffer.getvalue(), what)
    return out


# --- learning curves ----------------------------------------------------------------------


def _last_per(records: list[dict], key: str) -> list[dict]:
    """One record per value of `key` (the last written: a resumed run may repeat some)."""
    return sorted({r[key]: r for r in records}.values(), key=lambda r: r[key])


def lr_curve(epochs: list[dict], steps: list[dict]) -> tuple[list[int], list[float]]:
    """The learning-rate panel's points (step, rate), each holding until the next: the rate at
    each epoch's first step and at every logged step, so a warm-up or a decay inside an epoch
    shows as it ran (epoch records alone would draw one flat value per epoch)."""
    starts = [0, *(r["step"] for r in epochs[:-1])]
    points = dict(zip(starts, (r["lr"] for r in epochs), strict=True))
    points |= {r["step"]: r["lr"] for r in steps if "lr" in r and r["step"] not in points}
    points.setdefault(epochs[-1]["step"], points[max(points)])  # the line runs to the end
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss, top-1/top-5 and the learning rate of RUN_DIR against steps (epochs on the top
    axis), train and validation, the best epoch marked; PNG or SVG. Returns the path."""
    metrics = load_run_metrics(run_dir)
    epochs = _last_per([r for r in metrics if r.get("event") == "epoch"], "epoch")
    if not epochs:
        raise AlexcError(f"{run_dir}: metrics.jsonl has no finished epoch to plot yet")
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    picture_format(out)
    steps = _last_per([r for r in metrics if r.get("event") == "step"], "step")
    end = [r["step"] for r in epochs]
    best = max(epochs, key=lambda r: (r["val_top1"], -r["epoch"]))  # first of equals, as train

    fig = new_figure(15, 4.4)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3, sharex=True)
    if steps:
        loss_ax.plot(
            [r["step"] for r in steps],
            [r["loss"] for r in steps],
            color="tab:blue",
            alpha=0.35,
            lw=1,
            label="train loss (one batch, every 50 steps)",
        )
    loss_ax.plot(
        end,
        [r["train_loss"] for r in epochs],
        "o-",
        color="tab:blue",
        label="train loss (epoch mean)",
    )
    loss_ax.plot(end, [r["val_loss"] for r in epochs], "s-", color="tab:orange", label="val loss")
    loss_ax.set(title="loss", ylabel="cross-entropy")

    if all("train_top1" in r for r in epochs):
        acc_ax.plot(
            end,
            [r["train_top1"] for r in epochs],
            "o-",
            color="tab:blue",
            label="train top-1 (epoch mean)",
        )
    acc_ax.plot(end, [r["val_top1"] for r in epochs], "s-", color="tab:orange", label="val top-1")
    acc_ax.plot(end, [r["val_top5"] for r in epochs], "^-", color="tab:green", label="val top-5")
    acc_ax.plot(
        [best["step"]],
        [best["val_top1"]],
        "*",
        ms=16,
        color="tab:red",
        label=f"best: epoch {best['epoch']}, val top-1 {best['val_top1']:.4f}",
    )
    acc_ax.set(title="accuracy", ylabel="fraction correct")

    lr_steps, lr_values = lr_curve(epochs, steps)
    lr_ax.step(lr_steps, lr_values, where="post", color="tab:purple", label="learning rate")
    lr_ax.set(title="learning rate", ylabel="lr", yscale="log")

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.axvline(best["step"], color="tab:red", ls="--", lw=1)
        ax.set_xlabel("step")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        top = ax.secondary_xaxis("top")
        top.set_xticks(end, labels=[str(r["epoch"]) for r in epochs])
        top.set_xlabel("end of epoch", fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: {len(epochs)} epoch(s), {end[-1]} steps", fontsize=10)
    return save_figure(fig, out, "curves")


# --- filters ------------------------------------------------------------------------------


def _consumers(graph: Graph, name: str) -> list[Node]:
    return [n for n in graph.nodes if name in n.inputs]


def tower_count(graph: Graph, conv: Node) -> int:
    """How many towers a conv's filters belong to: its own groups, or, for an ungrouped conv,
    the groups of the next conv that reads its channels through channel-wise ops (the paper's
    conv1: 96 filters, 48 per GPU, because conv2 reads them in two groups)."""
    groups = int(conv.attrs.get("groups", 1))
    if groups > 1:
        return groups
    frontier = [conv.name]
    while len(frontier) == 1:
        readers = _consumers(graph, frontier[0])
        if len(readers) != 1:
            return 1
        (reader,) = readers
        if reader.op is Op.CONV:
            return int(reader.attrs.get("groups", 1))
        if reader.op not in (*CHANNELWISE, Op.LRN):
            return 1
        frontier = [reader.name]
    return 1


def first_conv(graph: Graph) -> Node:
    convs = [n for n in graph.nodes if n.op is Op.CONV]
    if not convs:
        raise AlexcError(f"graph '{graph.name}' has no conv layer whose filters could be drawn")
    return convs[0]


def normalise_kernels(weight: np.ndarray) -> np.ndarray:
    """Each kernel (out, in, kh, kw) scaled on its own to [0, 1] over all its input channels,
    as the paper's Figure 3 shows them; returned as (out, kh, kw, in) images."""
    w = weight.astype(np.float64)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = (w - lo) / np.where(span > 0, span, 1.0)
    return scaled.transpose(0, 2, 3, 1)


def _grid_columns(count: int) -> int:
    return min(count, 12 if count > 32 else 8)


def tile(images: np.ndarray, columns: int, gap: int = 1, background: float = 1.0) -> np.ndarray:
    """(n, h, w, c) images in a grid of `columns`, `gap` pixels of `background` between."""
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), background)
    for i, img in enumerate(images):
        r, k = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = img
    return grid


def plot_filters(graph: Graph, params: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """The first conv layer's kernels as a grid, one block per tower; grey for 1-channel
    kernels, colour for 3-channel ones."""
    picture_format(out)
    conv = first_conv(graph)
    weight = np.asarray(params[f"{conv.name}.weight"])
    if weight.shape[1] not in (1, 3):
        raise AlexcError(
            f"{conv.name}: kernels of {weight.shape[1]} input channels cannot be drawn "
            "as pictures (1: grey, 3: colour)"
        )
    towers = tower_count(graph, conv)
    images = normalise_kernels(weight)
    per_tower = len(images) // towers
    columns = _grid_columns(per_tower)
    rows = math.ceil(per_tower / columns)
    kh, kw = weight.shape[2:]
    cell = 0.55  # inches per kernel
    fig = new_figure(max(columns * cell + 0.4, 4.5), towers * (rows * cell * kh / kw + 0.45) + 0.7)
    axes = np.atleast_1d(fig.subplots(towers, 1))
    for t, ax in enumerate(axes):
        block = tile(images[t * per_tower : (t + 1) * per_tower], columns)
        if block.shape[2] == 1:
            ax.imshow(block[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(block, interpolation="nearest")
        first = t * per_tower
        label = f"tower {t + 1} of {towers}: " if towers > 1 else ""
        ax.set_title(f"{label}filters {first}-{first + per_tower - 1}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(
        f"{graph.name} {conv.name}: {weight.shape[0]} kernels of "
        f"{weight.shape[1]}x{kh}x{kw}\n(each scaled to its own min..max)",
        fontsize=10,
    )
    return save_figure(fig, out, "filter grid")


# --- confusion matrix ---------------------------------------------------------------------


def plot_confusion(counts: np.ndarray, classes: Sequence[str], out: str | Path, title: str) -> Path:
    """Counts (rows: true class, columns: predicted) written in the cells, coloured by the
    fraction of the true class's images."""
    picture_format(out)
    counts = np.asarray(counts)
    k = len(classes)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = counts / np.where(rows > 0, rows, 1)
    size = max(5.0, 0.6 * k + 2.5)
    fig = new_figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7 if k > 12 else 8,
                    color="white" if fractions[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), labels=classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    correct, total = int(np.trace(counts)), int(counts.sum())
    ax.set_title(
        f"{title}\ntop-1 {correct / max(total, 1):.4f}: {correct:,} of {total:,} on the diagonal",
        fontsize=10,
    )
    return save_figure(fig, out, "confusion matrix")


# --- activations --------------------------------------------------------------------------


def activation_nodes(graph: Graph) -> list[str]:
    """For each conv layer, the node whose output shows its activations: the relu that reads
    it, if one does, else the conv itself."""
    shown = []
    for n in graph.nodes:
        if n.op is Op.CONV:
            relus = [r for r in _consumers(graph, n.name) if r.op is Op.RELU]
            shown.append(relus[0].name if relus else n.name)
    return shown


def layer_activations(graph: Graph, params: Mapping[str, np.ndarray], x: np.ndarray) -> dict:
    """The output of every node `activation_nodes` names for the batch `x` (inference mode)."""
    from ..ir.graph import rebuild
    from ..passes.compile import compile

    shown = activation_nodes(graph)
    if not shown:
        raise AlexcError(f"graph '{graph.name}' has no conv layer whose activations to draw")
    probe = rebuild(graph, outputs=(*graph.outputs, *shown))
    executor = compile(probe, len(x))
    try:
        outputs = executor.outputs(params, x)
    finally:
        executor.close()
    return {name: outputs[name] for name in shown}


def plot_activations(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    out: str | Path,
    title: str,
    per_layer: int = 16,
) -> Path:
    """One image (`x`: (1, C, H, W), as the network sees it) and, below it, a strip per conv
    layer: its `per_layer` most active channels (highest mean), on one scale per layer."""
    picture_format(out)
    if x.shape[0] != 1:
        raise AlexcError(f"activations are drawn for one image at a time, not {x.shape[0]}")
    layers = layer_activations(graph, params, x)
    columns = min(per_layer, max(a.shape[1] for a in layers.values()))
    fig = new_figure(columns * 0.8 + 1.0, (len(layers) + 1) * 1.05 + 0.4)
    grid = fig.subplots(len(layers) + 1, columns, squeeze=False)
    for ax in grid.flat:
        ax.set_axis_off()
    picture = normalise_kernels(x)[0]  # the input scaled to [0, 1], as (H, W, C)
    grid[0, 0].imshow(
        picture[..., 0] if picture.shape[2] == 1 else picture,
        cmap="gray" if picture.shape[2] == 1 else None,
        interpolation="nearest",
    )
    grid[0, 0].set_title("input", fontsize=8)
    fig.suptitle(title, fontsize=10)
    for row, (name, act) in zip(grid[1:], layers.items(), strict=True):
        maps = act[0]
        order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:columns]
        lo, hi = float(maps.min()), float(maps.max())
        for ax, channel in zip(row, order, strict=False):
            ax.imshow(maps[channel], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"#{channel}", fontsize=6, pad=2)
        c, h, w = maps.shape
        row[0].text(
            -0.15,
            0.5,
            f"{name}\n{len(order)} of {c}\n{h}x{w}",
            fontsize=7,
            ha="right",
            va="center",
            transform=row[0].transAxes,
        )
    return save_figure(fig, out, "activations")
