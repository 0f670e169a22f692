"""conv: 2-D convolution with padding, stride, dilation, groups and an optional bias."""

from __future__ import annotations

import numpy as np
from alexc_runtime.geometry import window_out

from ..ir import Op
from .attrs import Attr, ShapeError, boolean, image, integer, numel, pad, pair, window
from .entry import Converter, OpDef
from .onnx_common import explicit_pads, export_bias, image_input, ints


def _shape(a, shapes):
    c, h, w = image(shapes, "conv")
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
    return (a["filters"], window(h, kh, sh, pt, pb, dh), window(w, kw, sw, pl, pr, dw))


def _params(a, shapes):
    c = shapes[0][0]
    kh, kw = a["kernel"]
    fan_in = c // a["groups"] * kh * kw
    out = {"weight": ((a["filters"], c // a["groups"], kh, kw), fan_in)}
    if a["bias"]:
        out["bias"] = ((a["filters"],), fan_in)
    return out


def _flops(a, shapes, out):
    c = shapes[0][0]
    kh, kw = a["kernel"]
    return 2 * numel(out) * (c // a["groups"]) * kh * kw


def _export(em, node, x: list[str]) -> None:
    a = node.attrs
    em.op(
        "Conv",
        [x[0], f"{node.name}.weight", *export_bias(node)],
        node.name,
        node.name,
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=list(a["pad"]),  # alexc keeps ONNX's order: top, left, bottom, right
        dilations=list(a["dilation"]),
        group=a["groups"],
    )


def _import(im, node, a, version: int) -> None:
    x = image_input(im, node)
    w = im.weight(node, im.const(node, 1, "weight"), "weight")
    b = im.const(node, 2, "bias", optional=True)
    if len(w.shape) != 4:
        raise im.unsupported(node, f"weight of shape {list(w.shape)}: alexc convolves in 2-D only")
    kernel = list(w.shape[2:])
    if ints(a, "kernel_shape", kernel) != kernel:
        raise im.malformed(
            node, f"kernel_shape {a['kernel_shape']} but weight shape {list(w.shape)}"
        )
    stride, dilation = ints(a, "strides", [1, 1]), ints(a, "dilations", [1, 1])
    if len(stride) != 2 or len(dilation) != 2:
        raise im.malformed(node, f"strides {stride} and dilations {dilation} must have 2 values")
    params = {"weight": (w.shape, w.read)}
    if b is not None:
        im.weight(node, b, "bias")
        params["bias"] = (b.shape, b.read)
    im.emit(
        node,
        Op.CONV,
        [x],
        {
            "filters": w.shape[0],
            "kernel": kernel,
            "stride": stride,
            "pad": explicit_pads(im, node, a, x.shape[1:], kernel, stride, dilation),
            "dilation": dilation,
            "groups": int(a.get("group", 1)),
            "bias": b is not None,
        },
        params,
        name=im.layer_name(w.name, b.name if b is not None else None),
    )


def _torch(c, xs):
    a, x = c.attrs, xs[0]
    top, left, bottom, right = a["pad"]
    if top == bottom and left == right:
        padding = (top, left)
    else:
        x = c.F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return c.F.conv2d(
        x,
        c.param("weight"),
        c.param("bias"),
        stride=a["stride"],
        padding=padding,
        dilation=a["dilation"],
        groups=a["groups"],
    )


def _reference(a, x, w, b=None):
    """Sum over kernel taps of a strided view of the zero-padded input times that tap's
    weights, per group; then the bias, then max(y, 0) when the plan fused a relu."""
    n, c, h, width = x.shape
    (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw) = (
        a["kernel"],
        a["stride"],
        a["pad"],
        a["dilation"],
    )
    groups, filters = a["groups"], w.shape[0]
    oh = window_out(h, kh, sh, top, bottom, dh)
    ow = window_out(width, kw, sw, left, right, dw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    y = np.zeros((n, filters, oh, ow))
    cg, fg = c // groups, filters // groups
    for i in range(kh):
        for j in range(kw):
            tap = xp[
                :,
                :,
                i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw,
            ]
            for g in range(groups):
                y[:, g * fg : (g + 1) * fg] += np.einsum(
                    "nchw,fc->nfhw",
                    tap[:, g * cg : (g + 1) * cg],
                    w[g * fg : (g + 1) * fg, :, i, j],
                )
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    if a.get("relu", False):
        y = np.maximum(y, 0)
    return y.astype(x.dtype)


ENTRIES = {
    Op.CONV: OpDef(
        attrs={
            "filters": Attr(integer),
            "kernel": Attr(pair),
            "stride": Attr(pair, 1),
            "pad": Attr(pad, 0),
            "dilation": Attr(pair, 1),
            "groups": Attr(integer, 1),
            "bias": Attr(boolean, True),
        },
        plan_attrs={"relu": Attr(boolean, False)},
        arity=(1, 1),
        shape=_shape,
        params=_params,
        flops=_flops,
        export=_export,
        onnx_import={
            "Conv": Converter(
                _import,
                (1, 11, 22),
                ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
            )
        },
        torch=_torch,
        reference=_reference,
    )
}
