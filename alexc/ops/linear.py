"""linear: y = x @ weight.T + bias, weight (units, K) as in PyTorch."""

from __future__ import annotations

import numpy as np

from ..ir import Op
from .attrs import Attr, ShapeError, boolean, integer
from .entry import Converter, OpDef
from .onnx_common import export_bias


def _shape(a, shapes):
    (s,) = shapes
    if len(s) != 1:
        raise ShapeError(f"linear needs a flat input (features,), got {s}: add a flatten node")
    return (a["units"],)


def _params(a, shapes):
    k = shapes[0][0]
    out = {"weight": ((a["units"], k), k)}
    if a["bias"]:
        out["bias"] = ((a["units"],), k)
    return out


def _export(em, node, x: list[str]) -> None:
    # alexc's weight is (units, K), PyTorch's layout: Gemm with B transposed.
    em.op("Gemm", [x[0], f"{node.name}.weight", *export_bias(node)], node.name, node.name, transB=1)


def _flat(im, node):
    x = im.tensor(node)
    if len(x.shape) != 1:
        raise im.unsupported(
            node,
            f"{node.op_type} of a tensor of per-sample shape {list(x.shape)}; alexc's linear "
            "layers take (N, features): flatten first",
        )
    return x


def _bias_vector(im, node, c, units: int, scale: float) -> tuple:
    """(shape, reader) of a bias that broadcasts one value per unit over the batch."""
    full = (1,) * (2 - len(c.shape)) + c.shape if len(c.shape) <= 2 else None
    if full is None or full[0] != 1 or full[1] not in (1, units) or c.dtype != np.float32:
        raise im.unsupported(
            node,
            f"its bias '{c.name}' ({c.dtype.name}, shape {list(c.shape)}) is not one float32 "
            f"value per output unit (shape [{units}], [1, {units}] or a scalar)",
        )

    def read() -> np.ndarray:
        value = np.broadcast_to(c.read().reshape(full)[0], (units,))
        return np.ascontiguousarray(value * np.float32(scale) if scale != 1.0 else value)

    return (units,), read


def _import_gemm(im, node, a, version: int) -> None:
    if int(a.get("transA", 0)):
        raise im.unsupported(
            node, "transA=1 transposes the batch into the features; alexc supports transA=0"
        )
    x = _flat(im, node)
    b = im.weight(node, im.const(node, 1, "weight (B)"), "weight (B)")
    c = im.const(node, 2, "bias (C)", optional=True)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_b = bool(a.get("transB", 0))
    if len(b.shape) != 2:
        raise im.malformed(node, f"B has shape {list(b.shape)}; Gemm needs a matrix")
    units, k = b.shape if trans_b else b.shape[::-1]

    def weight() -> np.ndarray:
        w = b.read() if trans_b else b.read().T  # alexc's layout: (units, K), Gemm's transB=1
        return np.ascontiguousarray(w * np.float32(alpha) if alpha != 1.0 else w)

    params = {"weight": ((units, k), weight)}
    if c is not None and beta != 0.0:
        params["bias"] = _bias_vector(im, node, c, units, beta)
    linear = {"units": units, "bias": "bias" in params}
    name = im.layer_name(b.name, c.name if c else None)
    im.emit(node, Op.LINEAR, [x], linear, params, name=name)


def _import_matmul(im, node, a, version: int) -> None:
    x = _flat(im, node)
    b = im.weight(node, im.const(node, 1, "weight (B)"), "weight (B)")
    if len(b.shape) != 2:
        raise im.unsupported(
            node, f"B has shape {list(b.shape)}; alexc's MatMul is (N, K) @ a constant (K, M)"
        )
    k, units = b.shape
    params = {"weight": ((units, k), lambda: np.ascontiguousarray(b.read().T))}
    name = im.layer_name(b.name, None)
    im.emit(node, Op.LINEAR, [x], {"units": units, "bias": False}, params, name=name)


def _reference(a, x, w, b=None):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        y = y + b
    if a.get("relu", False):
        y = np.maximum(y, 0)
    return y.astype(x.dtype)


ENTRIES = {
    Op.LINEAR: OpDef(
        attrs={"units": Attr(integer), "bias": Attr(boolean, True)},
        plan_attrs={"relu": Attr(boolean, False)},
        arity=(1, 1),
        shape=_shape,
        params=_params,
        flops=lambda a, shapes, out: 2 * shapes[0][0] * a["units"],
        export=_export,
        onnx_import={
            "Gemm": Converter(
                _import_gemm, (6, 7, 9, 11, 13), ("alpha", "beta", "broadcast", "transA", "transB")
            ),
            "MatMul": Converter(_import_matmul, (1, 9, 13)),
        },
        torch=lambda c, xs: c.F.linear(xs[0], c.param("weight"), c.param("bias")),
        reference=_reference,
    )
}
