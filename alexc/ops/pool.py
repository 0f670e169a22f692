"""maxpool, avgpool (windowed, with padding and ceil mode) and adaptive_avgpool."""

from __future__ import annotations

import numpy as np
from alexc_runtime.geometry import adaptive_bins, window_out

from ..ir import Op
from .attrs import Attr, ShapeError, boolean, image, no_params, numel, pad, pair, window
from .entry import Converter, OpDef
from .onnx_common import explicit_pads, image_input, ints

# --- shape rules ----------------------------------------------------------------------------


def _pool_shape(op):
    def shape(a, shapes):
        c, h, w = image(shapes, op)
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
        if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
            raise ShapeError(f"padding {a['pad']} must be smaller than the kernel {a['kernel']}")
        oh = window(h, kh, sh, pt, pb, ceil_mode=a["ceil_mode"])
        ow = window(w, kw, sw, pl, pr, ceil_mode=a["ceil_mode"])
        return (c, oh, ow)

    return shape


def _pool_flops(a, shapes, out):
    kh, kw = a["kernel"]
    return numel(out) * kh * kw


def _adaptive_shape(a, shapes):
    c, h, w = image(shapes, "adaptive_avgpool")
    oh, ow = a["output"]
    if oh > h or ow > w:
        raise ShapeError(f"output {a['output']} is larger than the input {h}x{w}")
    return (c, oh, ow)


# --- ONNX export ----------------------------------------------------------------------------


def _drops_last_window(em, node) -> bool:
    """Whether ceil_mode drops a last window that would start in the end padding.

    alexc (like PyTorch and ONNX from opset 22) drops it; the opset 17..21 specification does
    not, so onnx's shape inference would disagree with the shape onnxruntime and alexc compute.
    """
    a = node.attrs
    if not a["ceil_mode"]:
        return False
    _, h, w = em.shape(node.inputs[0])
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
    old_rule = (
        window_out(h, kh, sh, pt, pb, ceil_mode=True, drop_last_in_pad=False),
        window_out(w, kw, sw, pl, pr, ceil_mode=True, drop_last_in_pad=False),
    )
    return old_rule != em.shape(node.name)[1:]


def _floor_pads(em, node) -> list[int]:
    """End pads that make floor mode give alexc's ceil_mode output size (each < kernel)."""
    a = node.attrs
    _, h, w = em.shape(node.inputs[0])
    _, oh, ow = em.shape(node.name)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
    return [pt, pl, max(pb, (oh - 1) * sh + kh - h - pt), max(pr, (ow - 1) * sw + kw - w - pl)]


def _export_pool(em, node, x: str, op_type: str, **attrs) -> None:
    a = node.attrs
    kernel = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"])}
    if not _drops_last_window(em, node):
        em.op(
            op_type,
            [x],
            node.name,
            node.name,
            **kernel,
            pads=list(a["pad"]),
            ceil_mode=int(a["ceil_mode"]),
            **attrs,
        )
        return
    # Spell ceil_mode out as floor mode over extra end padding. MaxPool never reads padding and
    # count_include_pad=0 never counts it; count_include_pad=1 counts the declared padding only
    # (not the overhang), so that padding becomes real zeros first.
    pads = _floor_pads(em, node)
    if attrs.get("count_include_pad"):
        top, left, bottom, right = a["pad"]
        zeros = em.const(node.name, "pads", [0, 0, top, left, 0, 0, bottom, right])
        x = em.tmp("Pad", [x, zeros], node.name, "padded")
        pads = [0, 0, pads[2] - bottom, pads[3] - right]
        attrs = {**attrs, "count_include_pad": 0}
    em.op(op_type, [x], node.name, node.name, **kernel, pads=pads, ceil_mode=0, **attrs)


def _export_maxpool(em, node, x: list[str]) -> None:
    _export_pool(em, node, x[0], "MaxPool")


def _export_avgpool(em, node, x: list[str]) -> None:
    count = int(node.attrs["count_include_pad"])
    _export_pool(em, node, x[0], "AveragePool", count_include_pad=count)


_AXIS_NAMES = {2: "rows", 3: "cols"}


def _export_adaptive(em, node, x: list[str]) -> None:
    _, h, w = em.shape(node.inputs[0])
    oh, ow = node.attrs["output"]
    if (h, w) == (oh, ow):
        em.op("Identity", x, node.name, node.name)
    elif (oh, ow) == (1, 1):
        em.op("GlobalAveragePool", x, node.name, node.name)
    elif h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        em.op("AveragePool", x, node.name, node.name, kernel_shape=kernel, strides=kernel)
    else:
        # Uneven bins: the mean over a rectangle is the mean over rows of the mean over columns,
        # so pool one axis at a time (oh + ow slices instead of oh * ow).
        steps = [(axis, size, out) for axis, size, out in ((3, w, ow), (2, h, oh)) if size != out]
        y = x[0]
        for k, (axis, size, out) in enumerate(steps):
            last = k == len(steps) - 1
            target = node.name if last else em.fresh(f"{node.name}/{_AXIS_NAMES[axis]}")
            y = _mean_bins(em, node, y, axis, size, out, target)


def _mean_bins(em, node, x: str, axis: int, size: int, out: int, target: str) -> str:
    """Slice + ReduceMean per adaptive bin along `axis`, concatenated into `target`."""
    what = _AXIS_NAMES[axis]
    axes = em.const(node.name, f"{what}_axis", [axis])
    bins = []
    for i, (start, stop) in enumerate(adaptive_bins(size, out)):
        starts = em.const(node.name, f"{what}{i}_start", [start])
        stops = em.const(node.name, f"{what}{i}_stop", [stop])
        piece = em.tmp("Slice", [x, starts, stops, axes], node.name, f"{what}{i}")
        bins.append(em.reduce_mean(piece, axis, node.name, f"{what}{i}_mean"))
    return em.op("Concat", bins, target, node.name, axis=axis)


# --- ONNX import ----------------------------------------------------------------------------


def _import_pool(op: Op):
    def convert(im, node, a, version: int) -> None:
        x = image_input(im, node)
        kernel = ints(a, "kernel_shape", [])
        stride = ints(a, "strides", [1] * len(kernel))
        if len(kernel) != 2 or len(stride) != 2:
            raise im.unsupported(node, f"kernel_shape {kernel}: alexc pools in 2-D only")
        if ints(a, "dilations", [1, 1]) != [1, 1]:
            raise im.unsupported(node, f"dilations {a['dilations']}: alexc pools without dilation")
        if int(a.get("storage_order", 0)) != 0:
            raise im.unsupported(node, "storage_order=1 (column-major indices) is not supported")
        attrs = {
            "kernel": kernel,
            "stride": stride,
            "pad": explicit_pads(im, node, a, x.shape[1:], kernel, stride, [1, 1]),
            # auto_pad SAME fixes the output at ceil(size / stride); its pads give exactly that.
            "ceil_mode": bool(a.get("ceil_mode", 0)) and a.get("auto_pad", "NOTSET") == "NOTSET",
        }
        if op is Op.AVGPOOL:
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        im.emit(node, op, [x], attrs)

    return convert


def _import_global_avgpool(im, node, a, version: int) -> None:
    im.emit(node, Op.ADAPTIVE_AVGPOOL, [image_input(im, node)], {"output": 1})


_POOL_READS = ("auto_pad", "kernel_shape", "pads", "strides", "ceil_mode", "dilations")

# --- PyTorch --------------------------------------------------------------------------------


def _crop(c, y):
    """Keep the windows alexc keeps (explicit padding can add a trailing ceil_mode window)."""
    _, oh, ow = c.shape
    return y[:, :, :oh, :ow]


def _symmetric(pads, kernel) -> tuple[int, int] | None:
    """(ph, pw) when torch's own padding argument can express `pads`, else None."""
    top, left, bottom, right = pads
    kh, kw = kernel
    if top == bottom and left == right and 2 * top <= kh and 2 * left <= kw:
        return top, left
    return None


def _torch_maxpool(c, xs):
    a, x = c.attrs, xs[0]
    padding = _symmetric(a["pad"], a["kernel"])
    if padding is not None:
        return c.F.max_pool2d(
            x, a["kernel"], a["stride"], padding=padding, ceil_mode=a["ceil_mode"]
        )
    top, left, bottom, right = a["pad"]
    x = c.F.pad(x, (left, right, top, bottom), value=-float("inf"))
    return _crop(c, c.F.max_pool2d(x, a["kernel"], a["stride"], ceil_mode=a["ceil_mode"]))


def _torch_avgpool(c, xs):
    a, x = c.attrs, xs[0]
    padding = _symmetric(a["pad"], a["kernel"])
    if padding is not None:
        return c.F.avg_pool2d(
            x,
            a["kernel"],
            a["stride"],
            padding=padding,
            ceil_mode=a["ceil_mode"],
            count_include_pad=a["count_include_pad"],
        )
    # Window sums over the explicitly padded input, divided by how many counted positions each
    # window covers (real ones only, or real and padding): alexc's divisor, ceil_mode included.
    top, left, bottom, right = a["pad"]
    sides = (left, right, top, bottom)
    ones = c.torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    counted = c.F.pad(ones, sides, value=1.0 if a["count_include_pad"] else 0.0)

    def window_sums(t):
        return c.F.avg_pool2d(
            t, a["kernel"], a["stride"], ceil_mode=a["ceil_mode"], divisor_override=1
        )

    return _crop(c, window_sums(c.F.pad(x, sides)) / window_sums(counted))


# --- NumPy reference ------------------------------------------------------------------------


def _windows(a, x, fill):
    """Per kernel tap: the strided view of x padded with `fill` (the declared padding, then the
    overhang up to the last window), and the same view of a mask that is 1 on x, 2 on the
    declared padding and 0 on the overhang."""
    _, _, h, w = x.shape
    (kh, kw), (sh, sw), (top, left, bottom, right) = a["kernel"], a["stride"], a["pad"]
    oh = window_out(h, kh, sh, top, bottom, ceil_mode=a["ceil_mode"])
    ow = window_out(w, kw, sw, left, right, ceil_mode=a["ceil_mode"])
    over_h = max(0, (oh - 1) * sh + kh - (h + top + bottom))
    over_w = max(0, (ow - 1) * sw + kw - (w + left + right))
    xp = np.pad(
        x.astype(np.float64),
        ((0, 0), (0, 0), (top, bottom + over_h), (left, right + over_w)),
        constant_values=fill,
    )
    mask = np.pad(np.ones((h, w)), ((top, bottom), (left, right)), constant_values=2)
    mask = np.pad(mask, ((0, over_h), (0, over_w)))

    def view(t, i, j):
        return t[..., i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]

    return [(view(xp, i, j), view(mask, i, j)) for i in range(kh) for j in range(kw)]


def _maxpool_reference(a, x):
    taps = _windows(a, x, -np.inf)
    return np.max([t for t, _ in taps], axis=0).astype(x.dtype)


def _avgpool_reference(a, x):
    taps = _windows(a, x, 0.0)
    total = sum(t for t, _ in taps)
    counted = (1, 2) if a["count_include_pad"] else (1,)
    divisor = sum(np.isin(m, counted).astype(np.float64) for _, m in taps)
    return (total / divisor).astype(x.dtype)


def _adaptive_reference(a, x):
    _, _, h, w = x.shape
    oh, ow = a["output"]
    rows = [
        np.stack([x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for c0, c1 in adaptive_bins(w, ow)], -1)
        for r0, r1 in adaptive_bins(h, oh)
    ]
    return np.stack(rows, axis=2).astype(x.dtype)


_POOL_ATTRS = {
    "kernel": Attr(pair),
    "stride": Attr(pair, 1),
    "pad": Attr(pad, 0),
    "ceil_mode": Attr(boolean, False),
}

ENTRIES = {
    Op.MAXPOOL: OpDef(
        attrs=dict(_POOL_ATTRS),
        arity=(1, 1),
        shape=_pool_shape("maxpool"),
        params=no_params,
        flops=_pool_flops,
        export=_export_maxpool,
        onnx_import={
            "MaxPool": Converter(
                _import_pool(Op.MAXPOOL), (1, 8, 10, 11, 12, 22), (*_POOL_READS, "storage_order")
            )
        },
        torch=_torch_maxpool,
        reference=_maxpool_reference,
    ),
    Op.AVGPOOL: OpDef(
        attrs={**_POOL_ATTRS, "count_include_pad": Attr(boolean, True)},
        arity=(1, 1),
        shape=_pool_shape("avgpool"),
        params=no_params,
        flops=_pool_flops,
        export=_export_avgpool,
        onnx_import={
            "AveragePool": Converter(
                _import_pool(Op.AVGPOOL),
                (1, 7, 10, 11, 19, 22),
                (*_POOL_READS, "count_include_pad"),
            )
        },
        torch=_torch_avgpool,
        reference=_avgpool_reference,
    ),
    Op.ADAPTIVE_AVGPOOL: OpDef(
        attrs={"output": Attr(pair)},
        arity=(1, 1),
        shape=_adaptive_shape,
        params=no_params,
        flops=lambda a, shapes, out: numel(shapes[0]),
        export=_export_adaptive,
        onnx_import={"GlobalAveragePool": Converter(_import_global_avgpool, (1, 22))},
        torch=lambda c, xs: c.F.adaptive_avg_pool2d(xs[0], c.attrs["output"]),
        reference=_adaptive_reference,
    ),
}
