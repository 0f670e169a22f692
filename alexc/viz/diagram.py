"""`alexc summary --diagram`: the network drawn as boxes and arrows (SVG or PNG, by matplotlib;
no Graphviz needed).

Each node is a box with its output shape (per image) and parameter count, in rows by depth
from the input, so explicit branches stand side by side. A grouped conv is drawn as one box
per tower, side by side, and the towers stay apart through the channel-wise ops after it
(relu, pooling, dropout) until a node that mixes channels (a conv, LRN, flatten) joins them:
for the paper's AlexNet the two GPUs' towers, meeting at conv3 and at the first linear layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..ir import Graph, Node, Op
from .plot import CHANNELWISE, new_figure, picture_format, save_figure

COLOURS = {
    Op.CONV: "#c6dbef",
    Op.LINEAR: "#fdd0a2",
    Op.RELU: "#eeeeee",
    Op.LRN: "#dadaeb",
    Op.MAXPOOL: "#c7e9c0",
    Op.AVGPOOL: "#c7e9c0",
    Op.ADAPTIVE_AVGPOOL: "#c7e9c0",
    Op.DROPOUT: "#f2f2f2",
}
BOX_WIDTH, BOX_HEIGHT, ROW_HEIGHT, GAP = 3.3, 0.5, 0.78, 0.25  # inches


@dataclass(frozen=True)
class Box:
    """One drawn box: a node, or one tower of it (`tower` of `towers`)."""

    node: str
    tower: int
    towers: int
    title: str
    detail: str
    colour: str


def _towers(graph: Graph) -> dict[str, int]:
    """How many side-by-side boxes each node gets (1, or the groups of its tower split)."""
    split: dict[str, int] = {}
    for n in graph.nodes:
        groups = int(n.attrs.get("groups", 1)) if n.op is Op.CONV else 1
        if groups == 1 and n.op in CHANNELWISE and len(n.inputs) == 1:
            groups = split.get(n.inputs[0], 1)
        split[n.name] = groups
    return split


def _describe(n: Node, towers: int) -> str:
    a = n.attrs
    if n.op is Op.CONV:
        kernel = "x".join(map(str, a["kernel"]))
        stride = a["stride"][0] if len(set(a["stride"])) == 1 else "x".join(map(str, a["stride"]))
        filters = a["filters"]
        count = f"{filters // towers} of {filters}" if towers > 1 else str(filters)
        return f"conv {kernel}/{stride}, {count} filters"
    if n.op in (Op.MAXPOOL, Op.AVGPOOL):
        return f"{n.op.value} {'x'.join(map(str, a['kernel']))}/{a['stride'][0]}"
    if n.op is Op.LINEAR:
        return f"linear, {a['units']} units"
    if n.op is Op.DROPOUT:
        return f"dropout {a['rate']}"
    if n.op is Op.LRN:
        return f"lrn size {a['size']}"
    return n.op.value


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def boxes(graph: Graph) -> dict[str, list[Box]]:
    """The boxes of every node and of the input, keyed by node (input first), with the
    texts they show: name, op, output shape per image, parameters (per tower where split)."""
    params_of: dict[str, int] = {}
    for p in graph.params:
        node = p.name.rsplit(".", 1)[0]
        params_of[node] = params_of.get(node, 0) + math.prod(p.shape)
    towers = _towers(graph)
    inp = graph.input
    drawn = {inp.name: [Box(inp.name, 0, 1, f"{inp.name} (input)", _shape(inp.shape), "#ffffff")]}
    for n in graph.nodes:
        g = towers[n.name]
        c, *rest = graph.shapes[n.name]
        shape = _shape([c // g, *rest]) if g > 1 else _shape([c, *rest])
        params = params_of.get(n.name, 0) // g
        detail = shape + (f"  |  {params:,} params" if params else "")
        colour = COLOURS.get(n.op, "#ffffff")
        if g == 1:
            drawn[n.name] = [Box(n.name, 0, 1, f"{n.name}: {_describe(n, 1)}", detail, colour)]
        else:
            drawn[n.name] = [
                Box(
                    n.name, t, g, f"{n.name} [tower {t + 1}/{g}]: {_describe(n, g)}", detail, colour
                )
                for t in range(g)
            ]
    return drawn


def _depths(graph: Graph) -> dict[str, int]:
    depth = {i.name: 0 for i in graph.inputs}
    for n in graph.nodes:
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    return depth


def draw_diagram(graph: Graph, out: str | Path) -> Path:
    """Write the diagram of `graph` as SVG or PNG (by the suffix of `out`)."""
    picture_format(out)
    drawn = boxes(graph)
    depth = _depths(graph)
    rows: dict[int, list[Box]] = {}
    for name, node_boxes in drawn.items():
        rows.setdefault(depth[name], []).extend(node_boxes)
    widest = max(len(r) for r in rows.values()) * (BOX_WIDTH + GAP) + GAP
    width = max(widest + 0.4, 5.5)  # room for the title, and for skip arrows on the right
    height = (max(rows) + 1) * ROW_HEIGHT + 0.7
    fig = new_figure(width, height)
    fig.set_layout_engine(None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.set_axis_off()

    centre: dict[tuple[str, int], tuple[float, float]] = {}
    for d, row in rows.items():
        left = (width - len(row) * (BOX_WIDTH + GAP) + GAP) / 2
        for i, box in enumerate(row):
            x = left + i * (BOX_WIDTH + GAP)
            y = 0.6 + d * ROW_HEIGHT
            centre[(box.node, box.tower)] = (x + BOX_WIDTH / 2, y + BOX_HEIGHT / 2)
            _draw_box(ax, x, y, box)

    from matplotlib.patches import FancyArrowPatch

    for n in graph.nodes:
        for src in n.inputs:
            for a, b in _edges(drawn[src], drawn[n.name]):
                (x0, y0), (x1, y1) = centre[(src, a)], centre[(n.name, b)]
                if depth[n.name] - depth[src] > 1:  # around the boxes between, on the right
                    ends = (x0 + BOX_WIDTH / 2, y0), (x1 + BOX_WIDTH / 2, y1)
                    style = "bar,armA=-14,armB=-14,fraction=0"
                else:
                    ends = (x0, y0 + BOX_HEIGHT / 2), (x1, y1 - BOX_HEIGHT / 2)
                    style = "arc3"
                ax.add_patch(
                    FancyArrowPatch(
                        *ends,
                        connectionstyle=style,
                        arrowstyle="-|>",
                        mutation_scale=8,
                        lw=0.8,
                        color="#555555",
                        shrinkA=0,
                        shrinkB=0,
                    )
                )
    ax.text(
        width / 2,
        0.3,
        f"{graph.name}: {graph.num_params:,} parameters; shapes per image (C x H x W)",
        ha="center",
        va="center",
        fontsize=9,
        weight="bold",
    )
    return save_figure(fig, out, "diagram")


def _edges(src: list[Box], dst: list[Box]) -> list[tuple[int, int]]:
    """Tower to the same tower where both sides are split alike, else every pair."""
    if len(src) == len(dst) > 1:
        return [(t, t) for t in range(len(src))]
    return [(a.tower, b.tower) for a in src for b in dst]


def _draw_box(ax, x: float, y: float, box: Box) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            BOX_WIDTH,
            BOX_HEIGHT,
            boxstyle="round,pad=0,rounding_size=0.06",
            facecolor=box.colour,
            edgecolor="#333333",
            lw=0.8,
        )
    )
    ax.text(x + 0.1, y + 0.17, box.title, fontsize=7.5, va="center", weight="bold")
    ax.text(x + 0.1, y + 0.36, box.detail, fontsize=7.5, va="center")
