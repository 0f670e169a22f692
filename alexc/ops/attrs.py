"""Attribute kinds and the small helpers every op family's shape rule shares.

Each kind normalises a raw attribute value (from a graph file, Python or an ONNX import) or
raises ShapeError with a message that says what is wrong; the graph builder adds the file, line
and node. Shapes are per sample (no batch dimension).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from alexc_runtime.geometry import window_out

from ..ir import Shape

# Refused before anything is allocated: a per-sample activation or a parameter this large is a
# typo, not a network (AlexNet's largest is 290,400 elements; its largest weight 37.7 M).
MAX_ELEMENTS = 1 << 31


class ShapeError(ValueError):
    """An attribute or input shape that cannot work; the message says why."""


def integer(v, name, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ShapeError(f"'{name}' must be an integer, got {v!r}")
    if v < minimum:
        raise ShapeError(f"'{name}' must be >= {minimum}, got {v}")
    if v > MAX_ELEMENTS:
        raise ShapeError(f"'{name}' = {v} is absurdly large")
    return v


def pair(v, name, minimum=1):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ShapeError(f"'{name}' must be an integer or a pair [h, w], got {list(v)}")
        return tuple(integer(x, name, minimum) for x in v)
    return (integer(v, name, minimum),) * 2


def pad(v, name):
    """int -> all sides; [h, w] -> symmetric; [top, left, bottom, right] (ONNX order)."""
    if isinstance(v, (list, tuple)) and len(v) == 4:
        return tuple(integer(x, name, 0) for x in v)
    if isinstance(v, (list, tuple)) and len(v) != 2:
        raise ShapeError(f"'{name}' must be an integer, [h, w] or [top, left, bottom, right]")
    h, w = pair(v, name, 0)
    return (h, w, h, w)


def number(v, name, minimum=None, below=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ShapeError(f"'{name}' must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or (minimum is not None and v < minimum):
        raise ShapeError(f"'{name}' must be a finite number >= {minimum}, got {v}")
    if below is not None and v >= below:
        raise ShapeError(f"'{name}' must be below {below}, got {v}")
    return v


def non_negative(v, name):
    return number(v, name, 0.0)


def fraction(v, name):
    """A number in [0, 1)."""
    return number(v, name, 0.0, below=1.0)


def boolean(v, name):
    if not isinstance(v, bool):
        raise ShapeError(f"'{name}' must be true or false, got {v!r}")
    return v


def choice(*options):
    def check(v, name):
        if v not in options:
            raise ShapeError(f"'{name}' must be one of {', '.join(options)}; got {v!r}")
        return v

    return check


@dataclass(frozen=True)
class Attr:
    kind: Callable  # (raw value, name) -> normalised value
    default: object = None  # None: required


REQUIRED = None


def numel(shape: Shape) -> int:
    return math.prod(shape)


def image(shapes, op):
    (s,) = shapes
    if len(s) != 3:
        raise ShapeError(f"{op} needs an image input (C, H, W), got shape {s}")
    return s


def window(size, k, s, pad_lo, pad_hi, dilation=1, ceil_mode=False, what="kernel"):
    """Outputs of a window sweep (alexc_runtime.geometry.window_out) or a ShapeError."""
    try:
        return window_out(size, k, s, pad_lo, pad_hi, dilation, ceil_mode)
    except ValueError:
        span, padded = dilation * (k - 1) + 1, size + pad_lo + pad_hi
        raise ShapeError(
            f"{what} {k} (span {span}) is larger than its padded input {padded}"
        ) from None


def same(a, shapes):
    return shapes[0]


def no_params(a, shapes):
    return {}


def per_element(count):
    """FLOPs of an op doing `count` operations per output element."""
    return lambda a, shapes, out: count * numel(out)
