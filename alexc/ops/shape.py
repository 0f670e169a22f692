"""Elementwise and shape ops: relu, dropout, add, flatten, concat."""

from __future__ import annotations

import math

import numpy as np

from ..ir import Op
from .attrs import (
    MAX_ELEMENTS,
    Attr,
    ShapeError,
    fraction,
    integer,
    no_params,
    numel,
    per_element,
    same,
)
from .entry import Converter, OpDef
from .onnx_common import Const, Tensor, export_along_axis, export_simple, reshaped

# --- shape rules ----------------------------------------------------------------------------


def _flatten_shape(a, shapes):
    (s,) = shapes
    axis = a["axis"]
    if axis > len(s) + 1:
        raise ShapeError(f"axis={axis} is out of range for input rank {len(s) + 1}")
    # axis counts the batch: axis=1 keeps the batch and flattens the rest.
    return (numel(s),) if axis == 1 else s[: axis - 1] + (numel(s[axis - 1 :]),)


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


# --- ONNX export ----------------------------------------------------------------------------


def _export_flatten(em, node, x: list[str]) -> None:
    axis = node.attrs["axis"]
    if axis == 1:
        em.op("Flatten", x, node.name, node.name, axis=1)
        return
    # ONNX Flatten always makes 2-D (merging the batch into the first half); alexc's axis > 1
    # keeps the leading per-sample dims, which is a Reshape (0 copies the batch dimension).
    shape = em.const(node.name, "shape", [0, *em.shape(node.name)])
    em.op("Reshape", [x[0], shape], node.name, node.name)


def _export_dropout(em, node, x: list[str]) -> None:
    em.alias[node.name] = x[0]  # identity at inference: readers read the input


# --- ONNX import ----------------------------------------------------------------------------


def _import_relu(im, node, a, version: int) -> None:
    im.emit(node, Op.RELU, [im.tensor(node)], {})


def _import_flatten(im, node, a, version: int) -> None:
    x = im.tensor(node)
    rank = 1 + len(x.shape)
    axis = int(a.get("axis", 1))
    if (axis + rank if axis < 0 else axis) != 1:
        raise im.unsupported(
            node,
            f"axis={axis} on a rank-{rank} tensor merges the batch dimension with others; alexc "
            "flattens per sample (axis=1)",
        )
    im.emit(node, Op.FLATTEN, [x], {"axis": 1})


def _import_dropout(im, node, a, version: int) -> None:
    x = im.tensor(node)
    ratio = float(a.get("ratio", 0.5))
    training = False
    if version >= 12:
        r = im.const(node, 1, "ratio", optional=True)
        t = im.const(node, 2, "training_mode", optional=True)
        if r is not None:
            ratio = float(im.small(node, r, "ratio", 1).reshape(()))
        if t is not None:
            training = bool(im.small(node, t, "training_mode", 1).reshape(()))
    if not 0.0 <= ratio < 1.0:
        raise im.unsupported(node, f"ratio {ratio}: alexc's dropout rate lies in [0, 1)")
    if training and ratio > 0:
        raise im.unsupported(
            node,
            "training_mode is true, so it drops at inference too; alexc's dropout is the "
            "identity at inference",
        )
    im.emit(node, Op.DROPOUT, [x], {"rate": ratio})


def _import_concat(im, node, a, version: int) -> None:
    xs = [im.tensor(node, i) for i in range(len(node.input))]
    rank = 1 + len(xs[0].shape)
    axis = int(a.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 1 <= axis < rank:
        raise im.unsupported(
            node, f"axis {a.get('axis')} joins along the batch; alexc concatenates per sample"
        )
    im.emit(node, Op.CONCAT, xs, {"axis": axis})


def _import_add(im, node, a, version: int) -> None:
    x, y = im.need(node, 0), im.need(node, 1)
    if version < 7 and int(a.get("broadcast", 0)) and isinstance(y, Const) and "axis" in a:
        # Opset 6 aligns B's dims at `axis` rather than at the end: pad B's shape with ones.
        x_rank = 1 + len(x.shape) if isinstance(x, Tensor) else len(x.shape)
        axis = int(a["axis"]) % max(x_rank, 1)
        trailing = x_rank - axis - len(y.shape)
        if trailing < 0:
            raise im.malformed(node, f"axis={a['axis']} does not fit B's shape {list(y.shape)}")
        y = Const(
            y.name, y.shape + (1,) * trailing, y.dtype, reshaped(y.read, y.shape + (1,) * trailing)
        )
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        im.emit(node, Op.ADD, [x, y], {})
        return
    if isinstance(x, Const) and isinstance(y, Const):
        try:
            shape = np.broadcast_shapes(x.shape, y.shape)
        except ValueError:
            raise im.malformed(
                node, f"cannot add shapes {list(x.shape)} and {list(y.shape)}"
            ) from None
        if math.prod(shape) > MAX_ELEMENTS:
            raise im.malformed(node, f"result shape {list(shape)} is absurdly large")
        dtype = np.result_type(x.dtype, y.dtype)
        im.define(
            node.output[0], Const(node.output[0], shape, dtype, lambda: np.add(x.read(), y.read()))
        )
        return
    tensor, const, onnx_name = (
        (x, y, node.input[0]) if isinstance(x, Tensor) else (y, x, node.input[1])
    )
    why = im.fold_bias(node, tensor, onnx_name, const)
    if why:
        raise im.unsupported(
            node,
            "Add of a tensor and a constant: alexc folds the constant into the bias of the Conv, "
            f"Gemm or MatMul right before it, but {why}",
        )


# --- PyTorch --------------------------------------------------------------------------------


def _torch_flatten(c, xs):
    # alexc's axis counts the batch, as torch's start_dim does.
    return c.torch.flatten(xs[0], start_dim=c.attrs["axis"])


# --- NumPy references (inference: dropout is the identity) ----------------------------------


def _flatten_reference(a, x):
    axis = a["axis"]
    return x.reshape(*x.shape[:axis], -1)


ENTRIES = {
    Op.RELU: OpDef(
        attrs={},
        arity=(1, 1),
        shape=same,
        params=no_params,
        flops=per_element(1),
        export=export_simple("Relu"),
        onnx_import={"Relu": Converter(_import_relu, (6, 13, 14))},
        torch=lambda c, xs: c.F.relu(xs[0]),
        reference=lambda a, x: np.maximum(x, 0).astype(x.dtype),
    ),
    Op.DROPOUT: OpDef(
        attrs={"rate": Attr(fraction, 0.5)},
        arity=(1, 1),
        shape=same,
        params=no_params,
        flops=per_element(0),
        export=_export_dropout,
        onnx_import={
            "Dropout": Converter(
                _import_dropout, (6, 7, 10, 12, 13, 22), ("is_test", "ratio", "seed")
            )
        },
        torch=lambda c, xs: c.F.dropout(xs[0], c.attrs["rate"], training=c.train),
        reference=lambda a, x: x,
    ),
    Op.ADD: OpDef(
        attrs={},
        arity=(2, 2),
        shape=_add_shape,
        params=no_params,
        flops=per_element(1),
        export=export_simple("Add"),
        onnx_import={"Add": Converter(_import_add, (6, 7, 13, 14), ("axis", "broadcast"))},
        torch=lambda c, xs: xs[0] + xs[1],
        reference=lambda a, x, y: x + y,
    ),
    Op.FLATTEN: OpDef(
        attrs={"axis": Attr(integer, 1)},
        arity=(1, 1),
        shape=_flatten_shape,
        params=no_params,
        flops=per_element(0),
        export=_export_flatten,
        onnx_import={
            "Flatten": Converter(_import_flatten, (1, 9, 11, 13, 21, 23, 24, 25), ("axis",))
        },
        torch=_torch_flatten,
        reference=_flatten_reference,
    ),
    Op.CONCAT: OpDef(
        attrs={"axis": Attr(integer, 1)},
        arity=(2, None),
        shape=_concat_shape,
        params=no_params,
        flops=per_element(0),
        export=export_along_axis("Concat"),
        onnx_import={"Concat": Converter(_import_concat, (4, 11, 13), ("axis",))},
        torch=lambda c, xs: c.torch.cat(xs, dim=c.attrs["axis"]),
        reference=lambda a, *xs: np.concatenate(xs, axis=a["axis"]),
    ),
}
