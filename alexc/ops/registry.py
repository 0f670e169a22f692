"""Op rules, side by side in one table keyed by op: attribute schema, shape inference,
parameter shapes and FLOPs. The runtime's kernels (forward and backward), the memory rules of
lowering, the ONNX export mapping and the torch lowering are tables keyed by the same ops;
tests check that every op has a rule in each (tests/test_graph.py, test_kernels.py,
test_onnx_export.py, test_bench.py).

Shapes are per sample (no batch dimension). Shape rules raise ShapeError with a message that
says what is wrong; the graph builder adds the file, line and node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .ir import Op, Shape

# Refused before anything is allocated: a per-sample activation or a parameter this large is a
# typo, not a network (AlexNet's largest is 290,400 elements; its largest weight 37.7 M).
MAX_ELEMENTS = 1 << 31


class ShapeError(ValueError):
    """An attribute or input shape that cannot work; the message says why."""


# --- attribute kinds: each normalises a raw value or raises ShapeError -------------------


def _int(v, name, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ShapeError(f"'{name}' must be an integer, got {v!r}")
    if v < minimum:
        raise ShapeError(f"'{name}' must be >= {minimum}, got {v}")
    if v > MAX_ELEMENTS:
        raise ShapeError(f"'{name}' = {v} is absurdly large")
    return v


def _pair(v, name, minimum=1):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ShapeError(f"'{name}' must be an integer or a pair [h, w], got {list(v)}")
        return tuple(_int(x, name, minimum) for x in v)
    return (_int(v, name, minimum),) * 2


def _pad(v, name):
    """int -> all sides; [h, w] -> symmetric; [top, left, bottom, right] (ONNX order)."""
    if isinstance(v, (list, tuple)) and len(v) == 4:
        return tuple(_int(x, name, 0) for x in v)
    if isinstance(v, (list, tuple)) and len(v) != 2:
        raise ShapeError(f"'{name}' must be an integer, [h, w] or [top, left, bottom, right]")
    h, w = _pair(v, name, 0)
    return (h, w, h, w)


def _float(v, name, minimum=None, below=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ShapeError(f"'{name}' must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or (minimum is not None and v < minimum):
        raise ShapeError(f"'{name}' must be a finite number >= {minimum}, got {v}")
    if below is not None and v >= below:
        raise ShapeError(f"'{name}' must be below {below}, got {v}")
    return v


def _bool(v, name):
    if not isinstance(v, bool):
        raise ShapeError(f"'{name}' must be true or false, got {v!r}")
    return v


def _choice(*options):
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


@dataclass(frozen=True)
class OpRule:
    attrs: Mapping[str, Attr]
    arity: tuple[int, int | None]  # (min, max) data inputs; max None = any
    shape: Callable[[Mapping, list[Shape]], Shape]
    params: Callable[
        [Mapping, list[Shape]], dict[str, tuple[Shape, int]]
    ]  # suffix -> (shape, fan_in)
    flops: Callable[[Mapping, list[Shape], Shape], int]
    loss: bool = False  # a loss node: consumes labels, ends the graph


def normalise_attrs(op: Op, raw: Mapping) -> dict:
    """Check raw attributes against the op's schema, fill defaults, normalise forms."""
    schema = RULES[op].attrs
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        known = ", ".join(schema) or "none"
        raise ShapeError(f"unknown attribute '{unknown[0]}' for op {op.value} (it takes: {known})")
    out = {}
    for name, spec in schema.items():
        if name in raw:
            out[name] = spec.kind(raw[name], name)
        elif spec.default is REQUIRED:
            raise ShapeError(f"op {op.value} needs attribute '{name}'")
        else:
            out[name] = spec.kind(spec.default, name)
    return out


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def _image(shapes, op):
    (s,) = shapes
    if len(s) != 3:
        raise ShapeError(f"{op} needs an image input (C, H, W), got shape {s}")
    return s


def _window_out(size, k, s, pad_lo, pad_hi, dilation=1, ceil_mode=False, what="kernel"):
    span = dilation * (k - 1) + 1
    padded = size + pad_lo + pad_hi
    if span > padded:
        raise ShapeError(f"{what} {k} (span {span}) is larger than its padded input {padded}")
    if ceil_mode:
        out = -(-(padded - span) // s) + 1
        if (out - 1) * s >= size + pad_lo:  # the last window must start inside the input
            out -= 1
        return out
    return (padded - span) // s + 1


# --- conv ---------------------------------------------------------------------------------


def _conv_shape(a, shapes):
    c, h, w = _image(shapes, "conv")
    g = a["groups"]
    if c % g:
        raise ShapeError(f"groups={g} does not divide the {c} input channels")
    if a["filters"] % g:
        raise ShapeError(f"groups={g} does not divide filters={a['filters']}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (
        a["kernel"],
        a["stride"],
        a["pad"],
        a["dilation"],
    )
    oh = _window_out(h, kh, sh, pt, pb, dh)
    ow = _window_out(w, kw, sw, pl, pr, dw)
    return (a["filters"], oh, ow)


def _conv_params(a, shapes):
    c = shapes[0][0]
    kh, kw = a["kernel"]
    fan_in = c // a["groups"] * kh * kw
    out = {"weight": ((a["filters"], c // a["groups"], kh, kw), fan_in)}
    if a["bias"]:
        out["bias"] = ((a["filters"],), fan_in)
    return out


def _conv_flops(a, shapes, out):
    c = shapes[0][0]
    kh, kw = a["kernel"]
    return 2 * _numel(out) * (c // a["groups"]) * kh * kw


# --- pooling ------------------------------------------------------------------------------


def _pool_shape(op):
    def shape(a, shapes):
        c, h, w = _image(shapes, op)
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
        if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
            raise ShapeError(f"padding {a['pad']} must be smaller than the kernel {a['kernel']}")
        oh = _window_out(h, kh, sh, pt, pb, ceil_mode=a["ceil_mode"])
        ow = _window_out(w, kw, sw, pl, pr, ceil_mode=a["ceil_mode"])
        return (c, oh, ow)

    return shape


def _pool_flops(a, shapes, out):
    kh, kw = a["kernel"]
    return _numel(out) * kh * kw


def _adaptive_shape(a, shapes):
    c, h, w = _image(shapes, "adaptive_avgpool")
    oh, ow = a["output"]
    if oh > h or ow > w:
        raise ShapeError(f"output {a['output']} is larger than the input {h}x{w}")
    return (c, oh, ow)


# --- the rest -----------------------------------------------------------------------------


def _same(a, shapes):
    return shapes[0]


def _no_params(a, shapes):
    return {}


def _elementwise(per_element):
    return lambda a, shapes, out: per_element * _numel(out)


def _lrn_shape(a, shapes):
    if a["size"] % 2 == 0:
        raise ShapeError(
            f"size={a['size']} is even; LRN windows are centred, so size must be odd "
            "(onnxruntime refuses even sizes too)"
        )
    if len(shapes[0]) != 3:
        raise ShapeError(f"lrn needs an image input (C, H, W), got shape {shapes[0]}")
    return shapes[0]


def _flatten_shape(a, shapes):
    (s,) = shapes
    axis = a["axis"]
    if axis > len(s) + 1:
        raise ShapeError(f"axis={axis} is out of range for input rank {len(s) + 1}")
    # axis counts the batch: axis=1 keeps the batch and flattens the rest.
    return (_numel(s),) if axis == 1 else s[: axis - 1] + (_numel(s[axis - 1 :]),)


def _linear_shape(a, shapes):
    (s,) = shapes
    if len(s) != 1:
        raise ShapeError(f"linear needs a flat input (features,), got {s}: add a flatten node")
    return (a["units"],)


def _linear_params(a, shapes):
    k = shapes[0][0]
    out = {"weight": ((a["units"], k), k)}
    if a["bias"]:
        out["bias"] = ((a["units"],), k)
    return out


def _softmax_shape(a, shapes):
    (s,) = shapes
    if a["axis"] > len(s):
        raise ShapeError(f"axis={a['axis']} is out of range for input rank {len(s) + 1}")
    return s


def _concat_shape(a, shapes):
    axis = a["axis"] - 1
    first = shapes[0]
    if not 0 <= axis < len(first):
        raise ShapeError(f"axis={a['axis']} is out of range for inputs of shape {first}")
    for s in shapes[1:]:
        if len(s) != len(first) or any(
            x != y for i, (x, y) in enumerate(zip(s, first, strict=True)) if i != axis
        ):
            raise ShapeError(f"cannot concatenate shapes {first} and {s} on axis {a['axis']}")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]


def _add_shape(a, shapes):
    x, y = shapes
    if x != y:
        raise ShapeError(f"add needs equal shapes, got {x} and {y}")
    return x


def _loss_shape(a, shapes):
    (s,) = shapes
    if len(s) != 1:
        raise ShapeError(f"softmax_cross_entropy needs logits (classes,), got {s}")
    return ()


_POOL_ATTRS = {
    "kernel": Attr(_pair),
    "stride": Attr(_pair, 1),
    "pad": Attr(_pad, 0),
    "ceil_mode": Attr(_bool, False),
}

RULES: dict[Op, OpRule] = {
    Op.CONV: OpRule(
        attrs={
            "filters": Attr(_int),
            "kernel": Attr(_pair),
            "stride": Attr(_pair, 1),
            "pad": Attr(_pad, 0),
            "dilation": Attr(_pair, 1),
            "groups": Attr(_int, 1),
            "bias": Attr(_bool, True),
        },
        arity=(1, 1),
        shape=_conv_shape,
        params=_conv_params,
        flops=_conv_flops,
    ),
    Op.RELU: OpRule({}, (1, 1), _same, _no_params, _elementwise(1)),
    Op.LRN: OpRule(
        attrs={
            "size": Attr(_int),
            "alpha": Attr(lambda v, n: _float(v, n, 0.0)),
            "beta": Attr(lambda v, n: _float(v, n, 0.0)),
            "bias": Attr(lambda v, n: _float(v, n, 0.0), 1.0),
            "convention": Attr(_choice("paper", "onnx")),
        },
        arity=(1, 1),
        shape=_lrn_shape,
        params=_no_params,
        flops=lambda a, shapes, out: (a["size"] * 2 + 4) * _numel(out),
    ),
    Op.MAXPOOL: OpRule(dict(_POOL_ATTRS), (1, 1), _pool_shape("maxpool"), _no_params, _pool_flops),
    Op.AVGPOOL: OpRule(
        {**_POOL_ATTRS, "count_include_pad": Attr(_bool, True)},
        (1, 1),
        _pool_shape("avgpool"),
        _no_params,
        _pool_flops,
    ),
    Op.ADAPTIVE_AVGPOOL: OpRule(
        {"output": Attr(_pair)},
        (1, 1),
        _adaptive_shape,
        _no_params,
        lambda a, shapes, out: _numel(shapes[0]),
    ),
    Op.FLATTEN: OpRule(
        {"axis": Attr(_int, 1)}, (1, 1), _flatten_shape, _no_params, _elementwise(0)
    ),
    Op.DROPOUT: OpRule(
        {"rate": Attr(lambda v, n: _float(v, n, 0.0, below=1.0), 0.5)},
        (1, 1),
        _same,
        _no_params,
        _elementwise(0),
    ),
    Op.LINEAR: OpRule(
        {"units": Attr(_int), "bias": Attr(_bool, True)},
        (1, 1),
        _linear_shape,
        _linear_params,
        lambda a, shapes, out: 2 * shapes[0][0] * a["units"],
    ),
    Op.SOFTMAX_CROSS_ENTROPY: OpRule(
        {"label_smoothing": Attr(lambda v, n: _float(v, n, 0.0, below=1.0), 0.0)},
        (1, 1),
        _loss_shape,
        _no_params,
        lambda a, shapes, out: 5 * _numel(shapes[0]),
        loss=True,
    ),
    Op.SOFTMAX: OpRule(
        {"axis": Attr(_int, 1)}, (1, 1), _softmax_shape, _no_params, _elementwise(5)
    ),
    Op.LOG_SOFTMAX: OpRule(
        {"axis": Attr(_int, 1)}, (1, 1), _softmax_shape, _no_params, _elementwise(5)
    ),
    Op.CONCAT: OpRule(
        {"axis": Attr(_int, 1)}, (2, None), _concat_shape, _no_params, _elementwise(0)
    ),
    Op.ADD: OpRule({}, (2, 2), _add_shape, _no_params, _elementwise(1)),
}
