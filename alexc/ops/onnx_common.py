"""What the ONNX columns of several op families share: the importer's value types, explicit
padding, and the export rules of ops that map onto one ONNX op.

The emitter and importer themselves live in alexc.serial; the rules here only call their
methods, so alexc.ops imports no ONNX code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Shape


@dataclass(frozen=True)
class Tensor:
    """A value computed at run time: the graph input or an alexc node's output."""

    name: str  # the alexc name
    shape: Shape  # per sample


@dataclass(frozen=True)
class Const:
    """A constant whose shape and dtype are known up front; `read()` builds its values (each
    call reads anew, so weights are held once, as parameters)."""

    name: str  # the ONNX name, for messages
    shape: Shape  # full shape (constants have no batch dimension)
    dtype: np.dtype
    read: Callable[[], np.ndarray]


def ints(node_attrs: Mapping, key: str, default: Sequence[int]) -> list[int]:
    return [int(v) for v in node_attrs.get(key, default)]


def reshaped(read: Callable[[], np.ndarray], shape: Shape) -> Callable[[], np.ndarray]:
    return lambda: read().reshape(shape)


def explicit_pads(im, node, a: Mapping, size: Shape, kernel, stride, dilation) -> list[int]:
    """Explicit [top, left, bottom, right] pads from an ONNX node's pads or auto_pad."""
    auto = a.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = ints(a, "pads", [0, 0, 0, 0])
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise im.unsupported(node, f"pads {pads}: alexc takes 4 non-negative pads (2-D)")
        return pads
    if "pads" in a:
        raise im.malformed(node, f"has both pads and auto_pad={auto}")
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise im.malformed(
            node, f"auto_pad={auto!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"
        )
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        if k < 1 or s < 1 or d < 1:
            raise im.malformed(node, f"kernel {kernel}, strides {stride}, dilations {dilation}")
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def image_input(im, node, i: int = 0) -> Tensor:
    """Input `i` of an ONNX node, which must be a run-time image (N, C, H, W)."""
    x = im.tensor(node, i)
    if len(x.shape) != 3:
        raise im.unsupported(
            node,
            f"its input has rank {len(x.shape) + 1}; alexc's {node.op_type} works on images "
            "(N, C, H, W) only",
        )
    return x


def export_bias(node) -> list[str]:
    """The bias initializer as an optional last input of Conv and Gemm."""
    return [f"{node.name}.bias"] if node.attrs["bias"] else []


def export_simple(op_type: str) -> Callable:
    """Export rule of an op that maps to one ONNX op without attributes."""

    def rule(em, node, x: list[str]) -> None:
        em.op(op_type, x, node.name, node.name)

    return rule


def export_along_axis(op_type: str) -> Callable:
    """Export rule of an op that maps to one ONNX op with alexc's axis (both count the batch
    as axis 0)."""

    def rule(em, node, x: list[str]) -> None:
        em.op(op_type, x, node.name, node.name, axis=node.attrs["axis"])

    return rule
