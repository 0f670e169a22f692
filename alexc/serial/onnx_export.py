"""ONNX export: a Graph and its parameters -> a checker-valid onnx.ModelProto.

Each op's registry entry (`alexc.ops`, column `export`; collected here as `EXPORT`) emits the
ONNX nodes for one IR node through the `_Emitter`. Value names are the IR's node names;
initializers are the parameters under their own names (`conv1.weight`); the batch dimension is
the symbol `N`. Inference form: dropout is removed (its reader reads its input), so is a loss
node that is not an output, and LRN is converted to ONNX's alpha convention.

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

from ..errors import AlexcError
from ..files import write_atomic
from ..ir import Graph, Node, Op
from ..ir.graph import check_params
from ..ops import REGISTRY, RULES

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

    def node(self, op_type: str, inputs: Sequence[str], outs: Sequence[str], name: str, **attrs):
        """Emit one node with several outputs (each a name from `fresh`)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outs), name=name, **attrs))

    def labels_input(self) -> str:
        """Add the int64 class labels (N,) as a graph input; returns its name."""
        labels = self.fresh("labels")
        self.extra_inputs.append(helper.make_tensor_value_info(labels, TensorProto.INT64, [BATCH]))
        return labels

    def reduce_mean(self, x: str, axis: int, owner: str, what: str) -> str:
        # ReduceMean took `axes` as an attribute up to opset 17 and as an input from 18 on.
        if self.opset < 18:
            return self.tmp("ReduceMean", [x], owner, what, axes=[axis], keepdims=1)
        axes = self.const(owner, f"{what}_axes", [axis])
        return self.tmp("ReduceMean", [x, axes], owner, what, keepdims=1)


Rule = Callable[[_Emitter, Node, list[str]], None]

# The export rule of each op lives in its registry entry (alexc.ops, column `export`).
EXPORT: dict[Op, Rule] = {op: entry.export for op, entry in REGISTRY.items()}


def _alexc_version() -> str:
    import importlib.metadata

    # The installed distribution's version (the package itself is above serialisation).
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
