"""ONNX import: an untrusted .onnx file -> a verified Graph and its parameters.

The reverse of `alexc.serial.onnx_export`. The importer walks the ONNX graph once, in order; each
ONNX op type that becomes an alexc op has a converter in that op's registry entry
(`alexc.ops`, column `onnx_import`), which maps a node onto alexc ops where the mapping is exact,
folding constants into parameters on the way: Gemm's alpha, beta and transB and MatMul's weight
become a linear layer's (units, K) weight and bias; an Add of a constant after a conv or linear
layer becomes (part of) its bias; GlobalAveragePool becomes adaptive_avgpool to 1x1. The ops
that fold away are converted here: Reshape to (N, -1) becomes flatten, Identity is an alias, and
constant subgraphs (Constant, ConstantOfShape, Transpose of a constant) are evaluated. Anything
alexc cannot represent exactly raises `UnsupportedModel`, naming the node, the op and what is
supported. Reading the untrusted file is `reader.py`'s job; weights are read last, one tensor
at a time, and not at all with `weights="random"`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import AlexcError
from ...ir import LABELS, LOSS, Graph, Input, Node, Op, Shape
from ...ir.graph import build_graph, check_params
from ...ops import CONVERTERS as OP_CONVERTERS
from ...ops import MAX_ELEMENTS, RULES, Converter, ShapeError, normalise_attrs
from ...ops.onnx_common import Const, Tensor, ints, reshaped
from .metadata import read_metadata
from .reader import TensorReader, UnsupportedModel, attr_type, load_onnx, type_name

MIN_OPSET = 6  # the oldest opset whose versions of the supported ops the converters handle
WEIGHTS = ("model", "random")


@dataclass(frozen=True)
class Imported:
    """What `convert_onnx` returns: the graph, its parameters, and where each ONNX output went."""

    graph: Graph
    params: dict[str, np.ndarray]
    outputs: dict[str, str]  # ONNX graph output name -> alexc value name


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]+")
# `<owner>.weight` / `<owner>.bias` (PyTorch, alexc), `<owner>_w_0` / `<owner>_b_0` (Caffe2)...
_WEIGHT = re.compile(r"^(?P<owner>.+?)[._/:-](?:weight|w|W|kernel)(?:_0)?$")
_BIAS = re.compile(r"^(?P<owner>.+?)[._/:-](?:bias|b|B)(?:_0)?$")


def _clean(name: str) -> str:
    """A readable alexc name from an ONNX one ('/features/features.0/Conv' -> 'features/...')."""
    return _UNSAFE.sub("_", name).strip("/.")


def _owner(weight: str, bias: str | None) -> str:
    """The layer name that weight and bias initializers share, or ''."""
    w = _WEIGHT.match(weight)
    if w is None:
        return ""
    if bias is not None:
        b = _BIAS.match(bias)
        if b is None or b["owner"] != w["owner"]:
            return ""
    return w["owner"]


class _Importer:
    """Walks the ONNX graph once, in order, building alexc nodes and parameter readers.

    Its public methods (tensor, const, weight, emit, fold_bias, layer_name, unsupported, ...)
    are what the converters in the op registry (alexc.ops, column `onnx_import`) call."""

    def __init__(self, model: onnx.ModelProto, where: str, reader: TensorReader, opset: int):
        self.model, self.where, self.reader, self.opset = model, where, reader, opset
        self.env: dict[str, Tensor | Const] = {}  # ONNX value -> what holds it
        self.nodes: list[Node] = []
        self.index: dict[str, int] = {}  # alexc node -> position in nodes
        self.holder: dict[str, str] = {}  # alexc node -> the ONNX value now holding its output
        self.params: dict[str, Callable[[], np.ndarray]] = {}
        self.readers: Counter[str] = Counter()  # ONNX value -> readers (nodes and outputs)
        self.taken: set[str] = {LOSS, LABELS}  # the trainer adds these names
        self.batch: int | None = None  # the input's static batch size, if it has one
        self.input_name = ""

    # errors --------------------------------------------------------------------------------

    def _who(self, node: onnx.NodeProto) -> str:
        label = node.name or (node.output[0] if node.output else "")
        return f"{self.where}: node '{label}' ({node.op_type})"

    def malformed(self, node: onnx.NodeProto, what: str) -> AlexcError:
        return AlexcError(f"{self._who(node)}: {what}")

    def unsupported(self, node: onnx.NodeProto, what: str) -> UnsupportedModel:
        return UnsupportedModel(f"{self._who(node)}: {what}")

    # names ---------------------------------------------------------------------------------

    def unique(self, base: str, fallback: str) -> str:
        """A fresh alexc name; parameter names count as taken (the executor keeps values and
        parameters in one namespace), so no node is called like another's `<node>.weight`."""
        base = _clean(base) or fallback
        name, k = base, 1
        while {name, f"{name}.weight", f"{name}.bias"} & self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken |= {name, f"{name}.weight", f"{name}.bias"}
        return name

    def layer_name(self, weight: str, bias: str | None) -> str:
        """The layer name that a node's weight and bias initializers share, or ''."""
        return _owner(weight, bias)

    def node_name(self, node: onnx.NodeProto, preferred: str = "") -> str:
        return self.unique(preferred or node.name or node.output[0], node.op_type.lower())

    # inputs --------------------------------------------------------------------------------

    def arg(self, node: onnx.NodeProto, i: int) -> Tensor | Const | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        value = self.env.get(node.input[i])
        if value is None:
            raise self.malformed(
                node, f"reads '{node.input[i]}', which no earlier node or initializer defines"
            )
        return value

    def need(self, node: onnx.NodeProto, i: int) -> Tensor | Const:
        value = self.arg(node, i)
        if value is None:
            raise self.malformed(node, f"input {i} is missing")
        return value

    def tensor(self, node: onnx.NodeProto, i: int = 0) -> Tensor:
        value = self.need(node, i)
        if isinstance(value, Const):
            raise self.unsupported(
                node,
                f"input {i} ('{node.input[i]}') is a constant; alexc computes this op only on "
                "values derived from the graph input",
            )
        return value

    def const(self, node: onnx.NodeProto, i: int, what: str, optional=False) -> Const | None:
        value = self.arg(node, i) if optional else self.need(node, i)
        if isinstance(value, Tensor):
            raise self.unsupported(
                node,
                f"its {what} (input {i}, '{node.input[i]}') is computed at run time; alexc needs "
                "it to be a constant (an initializer or Constant)",
            )
        return value

    def small(self, node: onnx.NodeProto, c: Const, what: str, limit: int = 64) -> np.ndarray:
        """The values of a small constant (a shape, a ratio): refuses big ones unread."""
        if math.prod(c.shape) > limit:
            raise self.malformed(node, f"its {what} '{c.name}' has shape {list(c.shape)}")
        return c.read()

    def weight(self, node: onnx.NodeProto, c: Const, what: str) -> Const:
        if c.dtype != np.float32:
            raise self.unsupported(
                node, f"its {what} '{c.name}' is {c.dtype.name}; alexc computes in float32"
            )
        return c

    # outputs -------------------------------------------------------------------------------

    def define(self, onnx_name: str, value: Tensor | Const) -> None:
        if onnx_name in self.env:
            raise AlexcError(f"{self.where}: value '{onnx_name}' is defined twice")
        self.env[onnx_name] = value

    def emit(
        self,
        node: onnx.NodeProto,
        op: Op,
        inputs: Sequence[Tensor],
        attrs: Mapping,
        params: Mapping[str, tuple[Shape, Callable[[], np.ndarray]]] | None = None,
        name: str = "",
    ) -> Tensor:
        """Add one alexc node computing `node`'s first output; checks shapes as it goes."""
        params = dict(params or {})
        in_shapes = [t.shape for t in inputs]
        try:
            attrs = normalise_attrs(op, attrs)
            shape = RULES[op].shape(attrs, in_shapes)
            want = RULES[op].params(attrs, in_shapes)
        except ShapeError as e:
            shown = ", ".join(str(list(s)) for s in in_shapes)
            raise self.unsupported(node, f"{e} (per-sample input shape {shown})") from None
        if any(d < 1 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
            raise self.unsupported(node, f"output shape {list(shape)} is empty or absurdly large")
        for suffix, (pshape, _) in want.items():
            if params[suffix][0] != pshape:
                raise self.malformed(
                    node, f"{suffix} has shape {list(params[suffix][0])}; expected {list(pshape)}"
                )
        name = self.node_name(node, name)
        self.index[name] = len(self.nodes)
        self.nodes.append(Node(op, name, tuple(t.name for t in inputs), attrs))
        for suffix, (_, read) in params.items():
            self.params[f"{name}.{suffix}"] = read
        out = Tensor(name, shape)
        self.define(node.output[0], out)
        self.holder[name] = node.output[0]
        return out

    def fold_bias(self, node: onnx.NodeProto, x: Tensor, x_onnx: str, c: Const) -> str:
        """Fold `x + c` into the bias of the conv or linear node that computes x; returns ''
        when done, else why it cannot be."""
        i = self.index.get(x.name)
        producer = self.nodes[i] if i is not None else None
        if producer is None or producer.op not in (Op.CONV, Op.LINEAR):
            return "the other operand is not computed by a Conv, Gemm or MatMul"
        if self.holder[x.name] != x_onnx or self.readers[x_onnx] != 1:
            return f"'{x_onnx}' is read elsewhere too, so its bias cannot change"
        if c.dtype != np.float32:
            return f"the constant is {c.dtype.name}, not float32"
        units = producer.attrs["filters" if producer.op is Op.CONV else "units"]
        rank = 1 + len(x.shape)
        if len(c.shape) > rank:
            return f"the constant's shape {list(c.shape)} has more dims than the tensor"
        full = (1,) * (rank - len(c.shape)) + c.shape
        if full[0] != 1 or full[1] not in (1, units) or any(d != 1 for d in full[2:]):
            return (
                f"the constant's shape {list(c.shape)} is not one value per channel "
                f"(like [{units}, 1, 1] after a conv, [{units}] after a linear layer)"
            )
        old = self.params.get(f"{x.name}.bias")

        def bias() -> np.ndarray:
            value = np.broadcast_to(c.read().reshape(full)[0], (units, *full[2:])).reshape(
                units, -1
            )
            value = np.ascontiguousarray(value[:, 0], dtype=np.float32)
            return value + old() if old is not None else value

        self.nodes[i] = replace(producer, attrs={**producer.attrs, "bias": True})
        self.params[f"{x.name}.bias"] = bias
        self.define(node.output[0], x)
        self.holder[x.name] = node.output[0]
        return ""

    # the walk --------------------------------------------------------------------------------

    def run(self, input_shape: Shape | None) -> tuple[list[Input], list[str], dict[str, str]]:
        g = self.model.graph
        if g.sparse_initializer:
            raise UnsupportedModel(f"{self.where}: sparse initializers are not supported")
        for t in g.initializer:
            if not t.name:
                raise AlexcError(f"{self.where}: an initializer has no name")
            self.define(t.name, self.reader.const(t))
        inputs = [self._input(input_shape)]
        producers = {}
        for node in g.node:
            for o in node.output:
                if o and (o in producers or o in self.env):
                    raise AlexcError(f"{self.where}: value '{o}' is defined twice")
                producers[o] = node
        needed = self._needed(producers)
        for node in g.node:
            if id(node) not in needed:
                continue
            self._convert(node)
        outputs, mapping = [], {}
        for out in g.output:
            value = self.env.get(out.name)
            if value is None:
                raise AlexcError(f"{self.where}: graph output '{out.name}' is never computed")
            if isinstance(value, Const) or value.name == self.input_name:
                raise UnsupportedModel(
                    f"{self.where}: graph output '{out.name}' is a constant or the input itself; "
                    "alexc outputs are results of nodes"
                )
            mapping[out.name] = value.name
            if value.name not in outputs:
                outputs.append(value.name)
        if not outputs:
            raise AlexcError(f"{self.where}: the graph has no outputs")
        return inputs, outputs, mapping

    def _input(self, input_shape: Shape | None) -> Input:
        g = self.model.graph
        data = [i for i in g.input if i.name not in self.env]
        if not data:
            raise UnsupportedModel(
                f"{self.where}: the graph has no input (every input is an initializer)"
            )
        first, *rest = data
        if rest:
            raise UnsupportedModel(
                f"{self.where}: the graph has inputs {', '.join(i.name for i in data)}; alexc "
                "graphs take one input (make the others initializers)"
            )
        kind = first.type.WhichOneof("value")
        tt = first.type.tensor_type
        if kind != "tensor_type" or tt.elem_type != TensorProto.FLOAT:
            what = type_name(tt.elem_type) if kind == "tensor_type" else kind
            raise UnsupportedModel(
                f"{self.where}: input '{first.name}' is {what}; alexc takes a float32 tensor"
            )
        dims = (
            [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if tt.HasField("shape")
            else []
        )
        fix = "pass the per-sample shape (input_shape=(3, 224, 224), or --input-shape 3,224,224)"
        if len(dims) < 2:
            raise UnsupportedModel(
                f"{self.where}: input '{first.name}' has shape {dims or 'unknown'}; alexc needs "
                f"(batch, C, H, W) or at least (batch, features): {fix}"
            )
        self.batch = dims[0] if dims[0] else None
        per_sample = tuple(dims[1:])
        if input_shape is not None:
            input_shape = tuple(int(d) for d in input_shape)
            if len(input_shape) != len(per_sample) or any(
                d is not None and d != s for d, s in zip(per_sample, input_shape, strict=True)
            ):
                shown = ["?" if d is None else d for d in per_sample]
                raise AlexcError(
                    f"{self.where}: input_shape {list(input_shape)} does not fit the input "
                    f"'{first.name}' of per-sample shape {shown}"
                )
            per_sample = input_shape
        if any(d is None or d < 1 for d in per_sample):
            shown = ["?" if d is None else d for d in per_sample]
            raise UnsupportedModel(
                f"{self.where}: input '{first.name}' has per-sample shape {shown}; alexc needs "
                f"static sizes (C, H, W): {fix}"
            )
        if math.prod(per_sample) > MAX_ELEMENTS:
            raise AlexcError(f"{self.where}: input shape {list(per_sample)} is absurdly large")
        self.input_name = self.unique(first.name, "input")
        self.define(first.name, Tensor(self.input_name, per_sample))
        return Input(self.input_name, per_sample)

    def _needed(self, producers: Mapping[str, onnx.NodeProto]) -> set[int]:
        """The nodes the graph outputs depend on (others are skipped, supported or not); counts
        the readers of every value on the way."""
        needed: set[int] = set()
        stack = []
        for out in self.model.graph.output:
            self.readers[out.name] += 1
            stack.append(out.name)
        while stack:
            node = producers.get(stack.pop())
            if node is None or id(node) in needed:
                continue
            needed.add(id(node))
            for i in node.input:
                if i:
                    self.readers[i] += 1
                    stack.append(i)
            # Attribute subgraphs (If, Loop) are refused when converted; nothing to walk here.
        return needed

    def _convert(self, node: onnx.NodeProto) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(
                node, f"domain '{node.domain}' is not supported; alexc imports {_supported()}"
            )
        rule = CONVERTERS.get(node.op_type)
        if rule is None:
            raise self.unsupported(
                node, f"op {node.op_type} is not supported; alexc imports {_supported()}"
            )
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            raise self.malformed(
                node, f"op {node.op_type} does not exist in opset {self.opset}"
            ) from None
        if schema.since_version not in rule.versions:
            raise self.unsupported(
                node,
                f"{node.op_type} version {schema.since_version} (opset {self.opset}) is not "
                f"supported; alexc reads versions {', '.join(map(str, rule.versions))}",
            )
        inputs = list(node.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        outputs = list(node.output)
        if not schema.min_input <= len(inputs) <= schema.max_input:
            raise self.malformed(
                node,
                f"has {len(inputs)} inputs; {node.op_type} takes "
                f"{schema.min_input}..{schema.max_input}",
            )
        if not outputs or not outputs[0] or len(outputs) > schema.max_output:
            raise self.malformed(
                node, f"has outputs {outputs}; {node.op_type} makes 1..{schema.max_output}"
            )
        attrs = self._attrs(node, schema, rule)
        rule.convert(self, node, attrs, schema.since_version)
        for k, out in enumerate(outputs):
            if out and out not in self.env and self.readers[out]:
                raise self.unsupported(
                    node, f"output {k} ('{out}') is used, but alexc computes only its first output"
                )

    def _attrs(self, node: onnx.NodeProto, schema, rule: Converter) -> dict:
        attrs = {}
        for a in node.attribute:
            spec = schema.attributes.get(a.name)
            if a.name in attrs:
                raise self.malformed(node, f"attribute '{a.name}' is given twice")
            if spec is None:
                raise self.malformed(
                    node, f"'{a.name}' is not an attribute of {node.op_type} in opset {self.opset}"
                )
            if a.ref_attr_name:
                raise self.unsupported(
                    node, "attributes referring to function attributes are not supported"
                )
            if a.type != int(spec.type):
                raise self.malformed(
                    node,
                    f"attribute '{a.name}' is {attr_type(a.type)}, expected {spec.type.name}",
                )
            if a.name not in rule.reads:
                raise self.unsupported(
                    node,
                    f"attribute '{a.name}' is not supported (alexc reads: "
                    f"{', '.join(rule.reads) or 'none'})",
                )
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    raise self.malformed(node, f"attribute '{a.name}' is not text") from None
            attrs[a.name] = value
        return attrs


# --- the ONNX ops that fold away: aliases, and constants computed here once -------------


def _reshape_result(dims: Sequence[int], shape: Shape, allowzero: bool) -> Shape | None:
    """ONNX Reshape's output shape for an input of `shape`, or None if invalid."""
    out, infer = [], None
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:
            if i >= len(shape):
                return None
            d = shape[i]
        if d == -1:
            if infer is not None:
                return None
            infer = i
            d = 1
        elif d < 0:
            return None
        out.append(d)
    total, known = math.prod(shape), math.prod(out)
    if infer is not None:
        if known == 0 or total % known:
            return None
        out[infer] = total // known
    return tuple(out) if math.prod(out) == total else None


def _reshape(im: _Importer, node, a: Mapping, version: int) -> None:
    c = im.const(node, 1, "target shape")
    if c.dtype != np.int64 or len(c.shape) != 1:
        raise im.malformed(node, f"target shape '{c.name}' must be a 1-D int64 tensor")
    dims = [int(d) for d in im.small(node, c, "target shape")]
    allowzero = bool(a.get("allowzero", 0))
    data = im.arg(node, 0)
    if isinstance(data, Const):  # a constant reshaped (a weight, say): reshape it here
        shape = _reshape_result(dims, data.shape, allowzero)
        if shape is None:
            raise im.malformed(node, f"cannot reshape {list(data.shape)} to {dims}")
        im.define(
            node.output[0], Const(node.output[0], shape, data.dtype, reshaped(data.read, shape))
        )
        return
    x = im.tensor(node)
    flat = (math.prod(x.shape),)
    # Valid for every batch size: check two (a literal batch, as in a model traced at batch 1,
    # is kept only when the input's batch is that same static size).
    batches = [im.batch] if im.batch else [2, 3]
    results = {_reshape_result(dims, (n, *x.shape), allowzero) for n in batches}
    for kind in (x.shape, flat):
        if results == {(n, *kind) for n in batches}:
            if kind == x.shape:  # keeps every dim: no node at all
                im.define(node.output[0], x)
            else:
                im.emit(node, Op.FLATTEN, [x], {"axis": 1})
            return
    raise im.unsupported(
        node,
        f"Reshape of per-sample shape {list(x.shape)} to {dims}: alexc supports only reshapes "
        "that keep the batch and flatten the rest (to (N, -1), like torch.flatten(x, 1))",
    )


def _identity(im: _Importer, node, a: Mapping, version: int) -> None:
    im.define(node.output[0], im.need(node, 0))


def _constant(im: _Importer, node, a: Mapping, version: int) -> None:
    if len(a) != 1:
        raise im.malformed(node, f"needs exactly one value attribute, has {sorted(a)}")
    ((key, value),) = a.items()
    if key == "value":
        const = im.reader.const(value, node.output[0])
    else:
        dtype = np.float32 if key.startswith("value_float") else np.int64
        array = np.array(value, dtype=dtype)
        const = Const(node.output[0], array.shape, array.dtype, array.copy)
    im.define(node.output[0], const)


def _constant_of_shape(im: _Importer, node, a: Mapping, version: int) -> None:
    c = im.const(node, 0, "shape")
    if c.dtype != np.int64 or len(c.shape) != 1:
        raise im.malformed(node, f"its shape '{c.name}' must be a 1-D int64 tensor")
    shape = tuple(int(d) for d in im.small(node, c, "shape"))
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise im.malformed(node, f"shape {list(shape)} is negative or absurdly large")
    fill = im.reader.const(a["value"], node.output[0]) if "value" in a else None
    if fill is not None and math.prod(fill.shape) != 1:
        raise im.malformed(node, f"value must hold one element, has shape {list(fill.shape)}")
    dtype = fill.dtype if fill is not None else np.dtype(np.float32)

    def read() -> np.ndarray:
        return np.full(shape, fill.read().reshape(()) if fill is not None else 0, dtype=dtype)

    im.define(node.output[0], Const(node.output[0], shape, dtype, read))


def _transpose(im: _Importer, node, a: Mapping, version: int) -> None:
    c = im.const(node, 0, "input")
    perm = ints(a, "perm", range(len(c.shape) - 1, -1, -1))
    if sorted(perm) != list(range(len(c.shape))):
        raise im.malformed(node, f"perm {perm} does not fit shape {list(c.shape)}")
    shape = tuple(c.shape[p] for p in perm)
    im.define(
        node.output[0],
        Const(
            node.output[0], shape, c.dtype, lambda: np.ascontiguousarray(c.read().transpose(perm))
        ),
    )


# The ONNX ops that fold away; every other supported ONNX op is an alexc op's converter.
_FOLDED: dict[str, Converter] = {
    "Reshape": Converter(_reshape, (5, 13, 14, 19, 21, 23, 24, 25), ("allowzero",)),
    "Identity": Converter(_identity, (1, 13, 14, 16, 19, 21, 23, 24, 25)),
    "Constant": Converter(
        _constant,
        (1, 9, 11, 12, 13, 19, 21, 23, 24, 25),
        ("value", "value_float", "value_floats", "value_int", "value_ints"),
    ),
    "ConstantOfShape": Converter(_constant_of_shape, (9, 20, 21, 23, 24, 25), ("value",)),
    "Transpose": Converter(_transpose, (1, 13, 21, 23, 24, 25), ("perm",)),
}
CONVERTERS: dict[str, Converter] = {**OP_CONVERTERS, **_FOLDED}
SUPPORTED_OPS = tuple(sorted(CONVERTERS))


def _supported() -> str:
    return ", ".join(SUPPORTED_OPS)


# --- entry points -----------------------------------------------------------------------------


def _opset(model: onnx.ModelProto, where: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise AlexcError(f"{where}: the model imports no version of the default ONNX opset")
    opset, newest = max(versions), onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UnsupportedModel(
            f"{where}: opset {opset} is not supported; alexc imports opsets {MIN_OPSET}..{newest}"
        )
    return opset


def convert_onnx(
    model: str | Path | bytes | onnx.ModelProto,
    *,
    input_shape: Sequence[int] | None = None,
    weights: str = "model",
    seed: int = 0,
    base_dir: str | Path | None = None,
) -> Imported:
    """Import an ONNX model: the graph, its parameters, and the ONNX output -> alexc name map.

    `input_shape` gives the per-sample input shape where the model's is symbolic;
    `weights="random"` ignores the model's weights (even absent ones) and draws fresh ones from
    `seed`; `base_dir` is the folder of external data for a model given as a proto or bytes.
    """
    if weights not in WEIGHTS:
        raise AlexcError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    proto, where, folder = load_onnx(model, base_dir)
    try:
        return _convert(proto, where, folder, input_shape, weights, seed)
    except AlexcError:
        raise
    except Exception as e:  # noqa: BLE001 - untrusted input: whatever slipped past the checks
        raise AlexcError(f"{where}: malformed model ({type(e).__name__}: {e})") from e


def _convert(proto, where, folder, input_shape, weights, seed) -> Imported:
    _check_names(proto.graph, where)
    im = _Importer(proto, where, TensorReader(where, folder), _opset(proto, where))
    inputs, outputs, mapping = im.run(input_shape)
    classes, data = read_metadata(
        proto, im.env[proto.graph.output[0].name].shape, inputs[0].shape[0]
    )
    name = _clean(proto.graph.name) or (Path(where).stem if folder else "imported")
    graph = build_graph(name, inputs, im.nodes, outputs, classes=classes, data=data, source=where)
    if weights == "random":
        return Imported(graph, graph.init_params(seed), mapping)
    params = check_params({p.name: im.params[p.name]() for p in graph.params}, graph, where)
    return Imported(graph, params, mapping)


def _check_names(g: onnx.GraphProto, where: str) -> None:
    """Protobuf hands back text that is not valid UTF-8 as bytes: refuse it up front."""
    names = [g.name, *(v.name for v in (*g.input, *g.output, *g.initializer))]
    for n in g.node:
        names += [n.name, n.op_type, n.domain, *n.input, *n.output, *(a.name for a in n.attribute)]
    bad = next((s for s in names if not isinstance(s, str)), None)
    if bad is not None:
        raise AlexcError(f"{where}: name {bad!r} is not valid UTF-8 text")


def import_onnx(
    model: str | Path | bytes | onnx.ModelProto,
    *,
    input_shape: Sequence[int] | None = None,
    weights: str = "model",
    seed: int = 0,
    base_dir: str | Path | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """(graph, params) from an ONNX model file or proto; see `convert_onnx` for the options.

    Parameters are named `<node>.weight` / `<node>.bias` after the model's own layer names
    where its initializers follow `<layer>.weight` (PyTorch) or `<layer>_w_0` (Caffe2)."""
    imported = convert_onnx(
        model, input_shape=input_shape, weights=weights, seed=seed, base_dir=base_dir
    )
    return imported.graph, imported.params
