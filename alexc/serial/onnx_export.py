"""ONNX export: a Graph and its parameters -> a checker-valid onnx.ModelProto.

One export rule per op (`EXPORT`, keyed like `alexc.ops.RULES`) emits the ONNX nodes for one IR
node. Value names are the IR's node names; initializers are the parameters under their own names
(`conv1.weight`); the batch dimension is the symbol `N`. Inference form: dropout is removed (its
reader reads its input), so is a loss node that is not an output, and LRN is converted to
ONNX's alpha convention.

The opset is pinned (17..21) with the IR version onnxruntime expects for it: onnx itself stamps
the newest IR version and opset, which onnxruntime refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .checkpoint import check_params
from .errors import AlexcError
from .files import write_atomic
from .ir import Graph, Node, Op
from .ops import RULES

# opset -> the IR version that introduced it (onnx.helper.VERSION_TABLE), which onnxruntime loads.
IR_VERSIONS = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
DEFAULT_OPSET = 17
LRN_FORMS = ("node", "decomposed")
BATCH = "N"
# A protobuf message cannot exceed 2 GiB; bigger models would need ONNX external data.
_MAX_MODEL_BYTES = (1 << 31) - (1 << 24)


class _Emitter:
    """Collects ONNX nodes while the rules run; hands out unique names for helper values."""

    def __init__(self, graph: Graph, opset: int, lrn: str):
        self.graph, self.opset, self.lrn = graph, opset, lrn
        self.nodes: list[onnx.NodeProto] = []
        self.extra_inputs: list[onnx.ValueInfoProto] = []
        self.alias: dict[str, str] = {}  # IR value -> the ONNX value that holds it
        self._taken = {i.name for i in graph.inputs} | {n.name for n in graph.nodes}
        self._taken |= {p.name for p in graph.params}

    def value(self, name: str) -> str:
        return self.alias.get(name, name)

    def fresh(self, base: str) -> str:
        """A value name derived from `base` that collides with nothing in the model."""
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str, name: str, **attrs) -> str:
        """Emit one node computing `out`; returns `out`."""
        node_name = self.fresh(f"{name}/{op_type}") if out != name else name
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    def tmp(self, op_type: str, inputs: Sequence[str], owner: str, what: str, **attrs) -> str:
        """Emit a helper node of IR node `owner` into a fresh value `<owner>/<what>`."""
        return self.op(op_type, inputs, self.fresh(f"{owner}/{what}"), owner, **attrs)

    def const(self, owner: str, what: str, value, dtype=np.int64) -> str:
        """A Constant node (not an initializer: initializers are exactly the parameters)."""
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name="")
        return self.tmp("Constant", [], owner, what, value=tensor)

    def shape(self, name: str) -> tuple[int, ...]:
        """Per-sample shape of an IR value."""
        return self.graph.shapes[name]

    def reduce_mean(self, x: str, axis: int, owner: str, what: str) -> str:
        # ReduceMean took `axes` as an attribute up to opset 17 and as an input from 18 on.
        if self.opset < 18:
            return self.tmp("ReduceMean", [x], owner, what, axes=[axis], keepdims=1)
        axes = self.const(owner, f"{what}_axes", [axis])
        return self.tmp("ReduceMean", [x, axes], owner, what, keepdims=1)


Rule = Callable[[_Emitter, Node, list[str]], None]


def _bias(node: Node) -> list[str]:
    """The bias initializer as an optional last input of Conv and Gemm."""
    return [f"{node.name}.bias"] if node.attrs["bias"] else []


def _conv(em: _Emitter, node: Node, x: list[str]) -> None:
    a = node.attrs
    em.op(
        "Conv",
        [x[0], f"{node.name}.weight", *_bias(node)],
        node.name,
        node.name,
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=list(a["pad"]),  # alexc keeps ONNX's order: top, left, bottom, right
        dilations=list(a["dilation"]),
        group=a["groups"],
    )


def _simple(op_type: str) -> Rule:
    """An op that maps to one ONNX op without attributes."""

    def rule(em: _Emitter, node: Node, x: list[str]) -> None:
        em.op(op_type, x, node.name, node.name)

    return rule


def _onnx_alpha(node: Node) -> float:
    """ONNX divides alpha by size; the paper's convention does not."""
    a = node.attrs
    if a["size"] % 2 == 0:  # the graph builder refuses these already; never export one
        raise AlexcError(f"node '{node.name}': LRN size {a['size']} is even; ONNX needs odd sizes")
    return a["alpha"] * a["size"] if a["convention"] == "paper" else a["alpha"]


def _lrn(em: _Emitter, node: Node, x: list[str]) -> None:
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


def _power(em: _Emitter, node: Node, base: str, beta: float) -> str:
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


def _drops_last_window(em: _Emitter, node: Node) -> bool:
    """Whether ceil_mode drops a last window that would start in the end padding.

    alexc (like PyTorch and ONNX from opset 22) drops it; the opset 17..21 specification does
    not, so onnx's shape inference would disagree with the shape onnxruntime and alexc compute.
    """
    a = node.attrs
    if not a["ceil_mode"]:
        return False
    _, h, w = em.shape(node.inputs[0])
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
    old_rule = (-(-(h + pt + pb - kh) // sh) + 1, -(-(w + pl + pr - kw) // sw) + 1)
    return old_rule != em.shape(node.name)[1:]


def _floor_pads(em: _Emitter, node: Node) -> list[int]:
    """End pads that make floor mode give alexc's ceil_mode output size (each < kernel)."""
    a = node.attrs
    _, h, w = em.shape(node.inputs[0])
    _, oh, ow = em.shape(node.name)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
    return [pt, pl, max(pb, (oh - 1) * sh + kh - h - pt), max(pr, (ow - 1) * sw + kw - w - pl)]


def _pool(em: _Emitter, node: Node, x: str, op_type: str, **attrs) -> None:
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


def _maxpool(em: _Emitter, node: Node, x: list[str]) -> None:
    _pool(em, node, x[0], "MaxPool")


def _avgpool(em: _Emitter, node: Node, x: list[str]) -> None:
    _pool(em, node, x[0], "AveragePool", count_include_pad=int(node.attrs["count_include_pad"]))


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """Bin i covers [floor(i*size/out), ceil((i+1)*size/out)) (PyTorch's rule)."""
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_avgpool(em: _Emitter, node: Node, x: list[str]) -> None:
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


_AXIS_NAMES = {2: "rows", 3: "cols"}


def _mean_bins(
    em: _Emitter, node: Node, x: str, axis: int, size: int, out: int, target: str
) -> str:
    """Slice + ReduceMean per adaptive bin along `axis`, concatenated into `target`."""
    what = _AXIS_NAMES[axis]
    axes = em.const(node.name, f"{what}_axis", [axis])
    bins = []
    for i, (start, stop) in enumerate(_adaptive_bins(size, out)):
        starts = em.const(node.name, f"{what}{i}_start", [start])
        stops = em.const(node.name, f"{what}{i}_stop", [stop])
        piece = em.tmp("Slice", [x, starts, stops, axes], node.name, f"{what}{i}")
        bins.append(em.reduce_mean(piece, axis, node.name, f"{what}{i}_mean"))
    return em.op("Concat", bins, target, node.name, axis=axis)


def _flatten(em: _Emitter, node: Node, x: list[str]) -> None:
    axis = node.attrs["axis"]
    if axis == 1:
        em.op("Flatten", x, node.name, node.name, axis=1)
        return
    # ONNX Flatten always makes 2-D (merging the batch into the first half); alexc's axis > 1
    # keeps the leading per-sample dims, which is a Reshape (0 copies the batch dimension).
    shape = em.const(node.name, "shape", [0, *em.shape(node.name)])
    em.op("Reshape", [x[0], shape], node.name, node.name)


def _dropout(em: _Emitter, node: Node, x: list[str]) -> None:
    em.alias[node.name] = x[0]  # identity at inference: readers read the input


def _linear(em: _Emitter, node: Node, x: list[str]) -> None:
    # alexc's weight is (units, K), PyTorch's layout: Gemm with B transposed.
    em.op("Gemm", [x[0], f"{node.name}.weight", *_bias(node)], node.name, node.name, transB=1)


def _softmax_cross_entropy(em: _Emitter, node: Node, x: list[str]) -> None:
    labels = em.fresh("labels")
    em.extra_inputs.append(helper.make_tensor_value_info(labels, TensorProto.INT64, [BATCH]))
    eps = node.attrs["label_smoothing"]
    if eps == 0:
        em.op("SoftmaxCrossEntropyLoss", [x[0], labels], node.name, node.name, reduction="mean")
        return
    # SoftmaxCrossEntropyLoss has no label smoothing. With targets (1-eps)*onehot + eps/C:
    # loss = (1-eps) * nll - eps * mean over batch and classes of log p.
    nll = em.fresh(f"{node.name}/nll")
    log_p = em.fresh(f"{node.name}/log_prob")
    em.nodes.append(
        helper.make_node(
            "SoftmaxCrossEntropyLoss",
            [x[0], labels],
            [nll, log_p],
            name=em.fresh(f"{node.name}/SoftmaxCrossEntropyLoss"),
            reduction="mean",
        )
    )
    mean_log_p = em.tmp("ReduceMean", [log_p], node.name, "mean_log_prob", keepdims=0)
    hard = em.tmp("Mul", [nll, em.const(node.name, "keep", 1 - eps, np.float32)], node.name, "hard")
    soft = em.tmp(
        "Mul", [mean_log_p, em.const(node.name, "eps", eps, np.float32)], node.name, "soft"
    )
    em.op("Sub", [hard, soft], node.name, node.name)


def _along_axis(op_type: str) -> Rule:
    """An op that maps to one ONNX op with alexc's axis (both count the batch as axis 0)."""

    def rule(em: _Emitter, node: Node, x: list[str]) -> None:
        em.op(op_type, x, node.name, node.name, axis=node.attrs["axis"])

    return rule


EXPORT: dict[Op, Rule] = {
    Op.CONV: _conv,
    Op.RELU: _simple("Relu"),
    Op.LRN: _lrn,
    Op.MAXPOOL: _maxpool,
    Op.AVGPOOL: _avgpool,
    Op.ADAPTIVE_AVGPOOL: _adaptive_avgpool,
    Op.FLATTEN: _flatten,
    Op.DROPOUT: _dropout,
    Op.LINEAR: _linear,
    Op.SOFTMAX_CROSS_ENTROPY: _softmax_cross_entropy,
    Op.SOFTMAX: _along_axis("Softmax"),
    Op.LOG_SOFTMAX: _along_axis("LogSoftmax"),
    Op.CONCAT: _along_axis("Concat"),
    Op.ADD: _simple("Add"),
}


def _alexc_version() -> str:
    import importlib.metadata

    import alexc

    if getattr(alexc, "__version__", None):
        return alexc.__version__
    try:
        return importlib.metadata.version("alexc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _metadata(graph: Graph, classes: Sequence[str] | None, lrn: str, version: str) -> dict:
    channels = graph.input.shape[0]

    def per_channel(key: str, default: float) -> list[float]:
        value = graph.data.get(key, default)
        values = value if isinstance(value, (list, tuple)) else [value] * channels
        return [float(v) for v in values]

    mean, std = per_channel("mean", 0.0), per_channel("std", 1.0)
    meta = {
        "graph": graph.name,
        "graph_fingerprint": graph.fingerprint(),
        "alexc_version": version,
        "input_name": graph.input.name,
        "input_shape": json.dumps(list(graph.input.shape)),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "lrn": lrn,
    }
    if classes:
        meta["classes"] = json.dumps(list(classes))
    return meta


def _check_classes(graph: Graph, classes: Sequence[str] | None) -> Sequence[str] | None:
    classes = list(classes) if classes is not None else graph.classes
    if classes is None:
        return None
    out = graph.shapes[graph.outputs[0]]
    if len(out) == 1 and out[0] != len(classes):
        raise AlexcError(
            f"{len(classes)} class names for graph '{graph.name}', whose output "
            f"'{graph.outputs[0]}' has {out[0]} classes"
        )
    return classes


def export_onnx(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    path: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    lrn: str = "node",
    classes: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Export `graph` with `params` as an inference ONNX model; write it to `path` if given.

    `lrn="decomposed"` spells LRN out in elementary ops (faster in onnxruntime); `classes`
    overrides the graph's class names in the metadata.
    """
    if opset not in IR_VERSIONS:
        raise AlexcError(
            f"opset {opset} is not supported: alexc exports opsets "
            f"{min(IR_VERSIONS)}..{max(IR_VERSIONS)}, which onnxruntime loads"
        )
    if lrn not in LRN_FORMS:
        raise AlexcError(f"lrn must be one of {', '.join(LRN_FORMS)}; got {lrn!r}")
    params = check_params(params, graph, "parameters")
    classes = _check_classes(graph, classes)
    total_bytes = sum(v.nbytes for v in params.values())
    if total_bytes > _MAX_MODEL_BYTES:
        raise AlexcError(
            f"graph '{graph.name}' has {total_bytes / 2**30:.1f} GiB of parameters; "
            "an ONNX file without external data holds at most 2 GiB"
        )

    em = _Emitter(graph, opset, lrn)
    for node in graph.nodes:
        if RULES[node.op].loss and node.name not in graph.outputs:
            continue  # what training minimises; inference returns the logits it reads
        EXPORT[node.op](em, node, [em.value(i) for i in node.inputs])
    for out in graph.outputs:
        if em.value(out) != out:  # a removed dropout was an output: keep the output's name
            em.op("Identity", [em.value(out)], out, out)

    losses = {n.name for n in graph.nodes if RULES[n.op].loss}  # a loss is a scalar

    def batched(name: str) -> list:
        return [] if name in losses else [BATCH, *graph.shapes[name]]

    inputs = [
        helper.make_tensor_value_info(i.name, TensorProto.FLOAT, [BATCH, *i.shape])
        for i in graph.inputs
    ]
    outputs = [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, batched(o)) for o in graph.outputs
    ]
    initializers = [numpy_helper.from_array(params[p.name], name=p.name) for p in graph.params]
    version = _alexc_version()
    onnx_graph = helper.make_graph(
        em.nodes, graph.name, inputs + em.extra_inputs, outputs, initializer=initializers
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=IR_VERSIONS[opset],
        producer_name="alexc",
        producer_version=version,
        doc_string=(
            f"{graph.name}: inference form exported by alexc {version} from "
            f"{graph.source or 'a graph built in Python'} (dropout removed, LRN in ONNX's "
            f"alpha convention, {lrn} form). Preprocessing in metadata_props."
        ),
    )
    helper.set_model_props(model, _metadata(graph, classes, lrn, version))
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        write_model(model, path)
    return model


def write_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Write atomically (temp file + rename); an unwritable path is a one-line AlexcError."""
    write_atomic(path, model.SerializeToString(), "ONNX model")
