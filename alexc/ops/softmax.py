"""softmax, log_softmax and the loss softmax_cross_entropy (with label smoothing)."""

from __future__ import annotations

import math

import numpy as np

from ..ir import Op
from .attrs import Attr, ShapeError, fraction, integer, no_params, numel, per_element
from .entry import Converter, OpDef
from .onnx_common import export_along_axis


def _softmax_shape(a, shapes):
    (s,) = shapes
    if a["axis"] > len(s):
        raise ShapeError(f"axis={a['axis']} is out of range for input rank {len(s) + 1}")
    return s


def _loss_shape(a, shapes):
    (s,) = shapes
    if len(s) != 1:
        raise ShapeError(f"softmax_cross_entropy needs logits (classes,), got {s}")
    return ()


def _export_loss(em, node, x: list[str]) -> None:
    labels = em.labels_input()
    eps = node.attrs["label_smoothing"]
    if eps == 0:
        em.op("SoftmaxCrossEntropyLoss", [x[0], labels], node.name, node.name, reduction="mean")
        return
    # SoftmaxCrossEntropyLoss has no label smoothing. With targets (1-eps)*onehot + eps/C:
    # loss = (1-eps) * nll - eps * mean over batch and classes of log p.
    nll = em.fresh(f"{node.name}/nll")
    log_p = em.fresh(f"{node.name}/log_prob")
    em.node(
        "SoftmaxCrossEntropyLoss",
        [x[0], labels],
        [nll, log_p],
        em.fresh(f"{node.name}/SoftmaxCrossEntropyLoss"),
        reduction="mean",
    )
    mean_log_p = em.tmp("ReduceMean", [log_p], node.name, "mean_log_prob", keepdims=0)
    hard = em.tmp("Mul", [nll, em.const(node.name, "keep", 1 - eps, np.float32)], node.name, "hard")
    soft = em.tmp(
        "Mul", [mean_log_p, em.const(node.name, "eps", eps, np.float32)], node.name, "soft"
    )
    em.op("Sub", [hard, soft], node.name, node.name)


def _import_softmax(op: Op):
    def convert(im, node, a, version: int) -> None:
        x = im.tensor(node)
        rank = 1 + len(x.shape)
        axis = int(a.get("axis", -1 if version >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if not 1 <= axis < rank:
            raise im.unsupported(
                node, f"axis {a.get('axis')} of a rank-{rank} tensor: alexc normalises per sample"
            )
        if version < 13 and math.prod(x.shape[axis:]) != 1:
            # Before opset 13 the op normalises over all dims from `axis` on, flattened.
            raise im.unsupported(
                node,
                f"{node.op_type}-{version} normalises over dims {axis}..{rank - 1} together; "
                "alexc normalises over one axis: flatten first or use opset 13",
            )
        im.emit(node, op, [x], {"axis": axis})

    return convert


_SOFTMAX_VERSIONS = (1, 11, 13)


def _log_softmax(x, axis):
    x = x.astype(np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _loss_reference(a, logits, labels):
    """Mean over the batch of -((1 - eps) * log p[label] + eps * mean over classes of log p)."""
    log_p = _log_softmax(logits, 1)
    eps = a["label_smoothing"]
    picked = log_p[np.arange(len(labels)), labels]
    loss = -((1 - eps) * picked + eps * log_p.mean(axis=1)).mean()
    return np.asarray(loss, dtype=logits.dtype)


ENTRIES = {
    Op.SOFTMAX: OpDef(
        attrs={"axis": Attr(integer, 1)},
        arity=(1, 1),
        shape=_softmax_shape,
        params=no_params,
        flops=per_element(5),
        export=export_along_axis("Softmax"),
        onnx_import={
            "Softmax": Converter(_import_softmax(Op.SOFTMAX), _SOFTMAX_VERSIONS, ("axis",))
        },
        torch=lambda c, xs: c.F.softmax(xs[0], dim=c.attrs["axis"]),
        reference=lambda a, x: np.exp(_log_softmax(x, a["axis"])).astype(x.dtype),
    ),
    Op.LOG_SOFTMAX: OpDef(
        attrs={"axis": Attr(integer, 1)},
        arity=(1, 1),
        shape=_softmax_shape,
        params=no_params,
        flops=per_element(5),
        export=export_along_axis("LogSoftmax"),
        onnx_import={
            "LogSoftmax": Converter(_import_softmax(Op.LOG_SOFTMAX), _SOFTMAX_VERSIONS, ("axis",))
        },
        torch=lambda c, xs: c.F.log_softmax(xs[0], dim=c.attrs["axis"]),
        reference=lambda a, x: _log_softmax(x, a["axis"]).astype(x.dtype),
    ),
    # A loss is what training minimises: inference models (ONNX files) hold none to import.
    Op.SOFTMAX_CROSS_ENTROPY: OpDef(
        attrs={"label_smoothing": Attr(fraction, 0.0)},
        arity=(1, 1),
        shape=_loss_shape,
        params=no_params,
        flops=lambda a, shapes, out: 5 * numel(shapes[0]),
        export=_export_loss,
        onnx_import={},
        torch=lambda c, xs: c.F.cross_entropy(
            xs[0], c.labels, label_smoothing=c.attrs["label_smoothing"]
        ),
        reference=_loss_reference,
        loss=True,
    ),
}
