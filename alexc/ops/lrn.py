"""lrn: local response normalisation across channels, in the paper's or ONNX's alpha
convention (DESIGN: the paper's alpha multiplies the window sum, ONNX's is divided by size)."""

from __future__ import annotations

import numpy as np
from alexc_runtime.geometry import LRN_CONVENTIONS, lrn_coefficient, lrn_onnx_alpha

from ..errors import AlexcError
from ..ir import Op
from .attrs import Attr, ShapeError, choice, integer, no_params, non_negative, numel
from .entry import Converter, OpDef
from .onnx_common import image_input


def _shape(a, shapes):
    if a["size"] % 2 == 0:
        raise ShapeError(
            f"size={a['size']} is even; LRN windows are centred, so size must be odd "
            "(onnxruntime refuses even sizes too)"
        )
    if len(shapes[0]) != 3:
        raise ShapeError(f"lrn needs an image input (C, H, W), got shape {shapes[0]}")
    return shapes[0]


def _onnx_alpha(node) -> float:
    a = node.attrs
    if a["size"] % 2 == 0:  # the graph builder refuses these already; never export one
        raise AlexcError(f"node '{node.name}': LRN size {a['size']} is even; ONNX needs odd sizes")
    return lrn_onnx_alpha(a["alpha"], a["size"], a["convention"])


def _export(em, node, x: list[str]) -> None:
    a = node.attrs
    alpha = _onnx_alpha(node)
    if em.lrn == "node":
        em.op(
            "LRN",
            x,
            node.name,
            node.name,
            size=a["size"],
            alpha=alpha,
            beta=a["beta"],
            bias=a["bias"],
        )
        return
    # Spelt out: onnxruntime's LRN kernel is slow (DESIGN §7). The channel-window sum of x^2 is
    # a 3-D average pool over the channel axis of x^2 viewed as (N, 1, C, H, W) (much faster in
    # onnxruntime than a 2-D pool over (N, 1, C, H*W)); zero padding is counted, so the mean is
    # the window sum / size, and ONNX's alpha (= a * size) applies to it.
    c, h, w = em.shape(node.inputs[0])
    half = (a["size"] - 1) // 2
    square = em.tmp("Mul", [x[0], x[0]], node.name, "square")
    volume = em.const(node.name, "volume_shape", [0, 1, c, h, w])
    square = em.tmp("Reshape", [square, volume], node.name, "square_volume")
    mean = em.tmp(
        "AveragePool",
        [square],
        node.name,
        "window_mean",
        kernel_shape=[a["size"], 1, 1],
        pads=[half, 0, 0, half, 0, 0],
        count_include_pad=1,
    )
    image = em.const(node.name, "image_shape", [0, c, h, w])
    mean = em.tmp("Reshape", [mean, image], node.name, "mean")
    scaled = em.tmp(
        "Mul", [mean, em.const(node.name, "alpha", alpha, np.float32)], node.name, "scaled"
    )
    base = em.tmp(
        "Add", [scaled, em.const(node.name, "k", a["bias"], np.float32)], node.name, "base"
    )
    em.op("Div", [x[0], _power(em, node, base, a["beta"])], node.name, node.name)


def _power(em, node, base: str, beta: float) -> str:
    """base ** beta. onnxruntime's Pow calls pow() per element; its Sqrt is vectorised, so
    AlexNet's beta = 0.75 becomes sqrt(base * sqrt(base)), about 5x faster."""
    if beta == 0.75:
        root = em.tmp("Sqrt", [base], node.name, "sqrt")
        return em.tmp(
            "Sqrt", [em.tmp("Mul", [base, root], node.name, "base_1.5")], node.name, "denom"
        )
    if beta == 0.5:
        return em.tmp("Sqrt", [base], node.name, "denom")
    return em.tmp("Pow", [base, em.const(node.name, "beta", beta, np.float32)], node.name, "denom")


def _import(im, node, a, version: int) -> None:
    attrs = {
        "size": int(a["size"]),
        "alpha": float(a.get("alpha", 1e-4)),
        "beta": float(a.get("beta", 0.75)),
        "bias": float(a.get("bias", 1.0)),
        "convention": "onnx",  # ONNX divides alpha by size, as alexc's onnx convention does
    }
    im.emit(node, Op.LRN, [image_input(im, node)], attrs)


def _torch(c, xs):
    a = c.attrs
    # torch divides alpha by size (the ONNX/Caffe convention); the paper's alpha does not.
    alpha = lrn_onnx_alpha(a["alpha"], a["size"], a["convention"])
    return c.F.local_response_norm(xs[0], a["size"], alpha=alpha, beta=a["beta"], k=a["bias"])


def _reference(a, x):
    """y_c = x_c / (k + coef * sum of x_j^2 over channels j in [c - h, c + h]) ** beta."""
    half = (a["size"] - 1) // 2
    x64 = x.astype(np.float64)
    squares = np.pad(x64**2, ((0, 0), (half, half), (0, 0), (0, 0)))
    channels = x.shape[1]
    window = sum(squares[:, j : j + channels] for j in range(a["size"]))
    coef = lrn_coefficient(a["alpha"], a["size"], a["convention"])
    return (x64 / (a["bias"] + coef * window) ** a["beta"]).astype(x.dtype)


ENTRIES = {
    Op.LRN: OpDef(
        attrs={
            "size": Attr(integer),
            "alpha": Attr(non_negative),
            "beta": Attr(non_negative),
            "bias": Attr(non_negative, 1.0),
            "convention": Attr(choice(*LRN_CONVENTIONS)),
        },
        arity=(1, 1),
        shape=_shape,
        params=no_params,
        flops=lambda a, shapes, out: (a["size"] * 2 + 4) * numel(out),
        export=_export,
        onnx_import={"LRN": Converter(_import, (1, 13), ("alpha", "beta", "bias", "size"))},
        torch=_torch,
        reference=_reference,
    )
}
