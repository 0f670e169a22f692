"""ONNX import: an untrusted .onnx file -> a verified Graph and its parameters.

The reverse of `onnx_export`. One converter per ONNX op type (`CONVERTERS`) maps a node onto
alexc ops where the mapping is exact, folding constants into parameters on the way: Gemm's
alpha, beta and transB and MatMul's weight become a linear layer's (units, K) weight and bias; an
Add of a constant after a conv or linear layer becomes (part of) its bias; Reshape to (N, -1)
becomes flatten; GlobalAveragePool becomes adaptive_avgpool to 1x1; constant subgraphs
(Constant, ConstantOfShape, Transpose of a constant) are evaluated. Anything alexc cannot
represent exactly raises `UnsupportedModel`, naming the node, the op and what is supported.

The file is untrusted: it is parsed without its external data; external tensors are read here,
only from regular files inside the model's folder (no absolute paths, no '..', no symlink out),
after checking each tensor's declared size against its dims and the file's size. Absurd sizes are
refused before anything is allocated, and a malformed file raises AlexcError, never a crash.
Weights are read last, one tensor at a time, and not at all with `weights="random"`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .checkpoint import check_params
from .errors import AlexcError, is_number
from .graph import build_graph
from .ir import Graph, Input, Node, Op, Shape
from .lower import LABELS, LOSS
from .ops import MAX_ELEMENTS, RULES, ShapeError, normalise_attrs

# A protobuf message cannot exceed 2 GiB, so a bigger file is not a model (and is not read).
MAX_FILE_BYTES = 1 << 31
MIN_OPSET = 6  # the oldest opset whose versions of the supported ops are handled below
WEIGHTS = ("model", "random")


class UnsupportedModel(AlexcError):
    """A valid model that uses something alexc cannot represent exactly."""


@dataclass(frozen=True)
class Imported:
    """What `convert_onnx` returns: the graph, its parameters, and where each ONNX output went."""

    graph: Graph
    params: dict[str, np.ndarray]
    outputs: dict[str, str]  # ONNX graph output name -> alexc value name


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """A value computed at run time: the graph input or an alexc node's output."""

    name: str  # the alexc name
    shape: Shape  # per sample


@dataclass(frozen=True)
class _Const:
    """A constant whose shape and dtype are known up front; `read()` builds its values (each
    call reads anew, so weights are held once, as parameters)."""

    name: str  # the ONNX name, for messages
    shape: Shape  # full shape (constants have no batch dimension)
    dtype: np.dtype
    read: Callable[[], np.ndarray]


# ONNX element type -> little-endian NumPy dtype (raw_data is little-endian by specification).
_DTYPES = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.DOUBLE: np.dtype("<f8"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.INT64: np.dtype("<i8"),
    TensorProto.INT32: np.dtype("<i4"),
    TensorProto.INT16: np.dtype("<i2"),
    TensorProto.INT8: np.dtype("i1"),
    TensorProto.UINT8: np.dtype("u1"),
    TensorProto.UINT16: np.dtype("<u2"),
    TensorProto.UINT32: np.dtype("<u4"),
    TensorProto.UINT64: np.dtype("<u8"),
    TensorProto.BOOL: np.dtype("?"),
}
# Where a tensor without raw_data keeps its values (every other listed type: int32_data).
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
}


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def _attr_type(attr_type: int) -> str:
    try:
        return AttributeProto.AttributeType.Name(attr_type)
    except ValueError:
        return f"type {attr_type}"


class _TensorReader:
    """Turns TensorProtos into `_Const`s: checks dtype, dims and sizes at once, reads later."""

    def __init__(self, where: str, base_dir: Path | None):
        self.where, self.base_dir = where, base_dir

    def fail(self, name: str, what: str) -> AlexcError:
        return AlexcError(f"{self.where}: tensor '{name}': {what}")

    def const(self, t: TensorProto, name: str | None = None) -> _Const:
        name = name or t.name
        dtype = _DTYPES.get(t.data_type)
        if dtype is None:
            raise UnsupportedModel(
                f"{self.where}: tensor '{name}' has type {_type_name(t.data_type)}; alexc reads "
                f"{', '.join(_type_name(k) for k in _DTYPES)}"
            )
        shape = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in shape):
            raise self.fail(name, f"negative dimension in {list(shape)}")
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.fail(name, f"dims {list(shape)} are absurdly large")
        if t.HasField("segment"):
            raise UnsupportedModel(
                f"{self.where}: tensor '{name}' is segmented; alexc reads whole tensors"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if t.data_location == TensorProto.EXTERNAL:
            location, offset = self._external(t, name, nbytes)
            return _Const(
                name, shape, dtype, lambda: self._read_file(name, location, offset, shape, dtype)
            )
        if t.data_location != TensorProto.DEFAULT:
            raise self.fail(name, f"unknown data_location {t.data_location}")
        if t.external_data:
            raise self.fail(name, "lists external data but its data_location is not EXTERNAL")
        return _Const(name, shape, dtype, lambda: self._read_embedded(t, name, shape, dtype))

    def _read_embedded(self, t: TensorProto, name: str, shape: Shape, dtype: np.dtype):
        # Checked at read time, so weights="random" imports a model whose weights are absent.
        if t.HasField("raw_data"):
            held, want, unit = len(t.raw_data), math.prod(shape) * dtype.itemsize, "bytes"
        else:
            held = len(getattr(t, _TYPED_FIELD.get(t.data_type, "int32_data")))
            want, unit = math.prod(shape), "values"
        if held != want:
            raise self.fail(
                name,
                f"dims {list(shape)} need {want} {unit} but the file holds {held}"
                + ("; import the model with weights='random'" if not held else ""),
            )
        if t.HasField("raw_data"):
            array = np.frombuffer(t.raw_data, dtype=dtype).reshape(shape)
            return array.astype(dtype.newbyteorder("="))
        return np.array(numpy_helper.to_array(t), dtype=dtype.newbyteorder("=")).reshape(shape)

    def _external(self, t: TensorProto, name: str, nbytes: int) -> tuple[str, int]:
        """(location, offset) of an external tensor, after the checks that need no file."""
        info = {}
        for entry in t.external_data:
            if entry.key in info:
                raise self.fail(name, f"external data lists '{entry.key}' twice")
            info[entry.key] = entry.value
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise self.fail(name, f"external data offset/length are not integers: {info}") from None
        if offset < 0 or (length is not None and length < 0):
            raise self.fail(name, f"negative external data offset or length: {info}")
        if length is not None and length != nbytes:
            raise self.fail(
                name, f"external data declares {length} bytes but dims {list(t.dims)} need {nbytes}"
            )
        if not location or "\\" in location or "\x00" in location:
            raise self.fail(name, f"external data location {location!r} is not a relative path")
        posix, windows = PurePosixPath(location), PureWindowsPath(location)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts:
            raise self.fail(
                name,
                f"external data location {location!r} leaves the model's folder "
                "(only relative paths inside it are read)",
            )
        return location, offset

    def _read_file(
        self, name: str, location: str, offset: int, shape: Shape, dtype: np.dtype
    ) -> np.ndarray:
        if self.base_dir is None:
            raise self.fail(
                name,
                f"stored in external file {location!r}: pass the model's path (or base_dir) "
                "so alexc knows the folder to read it from",
            )
        base = self.base_dir.resolve()
        path = (base / location).resolve()
        if not path.is_relative_to(base):
            raise self.fail(name, f"external data {location!r} resolves outside the model's folder")
        if not path.is_file():
            raise self.fail(name, f"external data file {location!r} is missing or not a file")
        nbytes = math.prod(shape) * dtype.itemsize
        size = path.stat().st_size
        if offset + nbytes > size:
            raise self.fail(
                name,
                f"needs bytes {offset}..{offset + nbytes} of {location!r}, which has {size} bytes",
            )
        data = bytearray(nbytes)  # writable: parameters are updated in place when training
        try:
            with path.open("rb") as f:
                f.seek(offset)
                got = f.readinto(data)
        except OSError as e:
            raise self.fail(name, f"cannot read {location!r} ({e.strerror})") from None
        if got != nbytes:
            raise self.fail(name, f"{location!r} ended after {got} of {nbytes} bytes")
        return (
            np.frombuffer(data, dtype=dtype)
            .reshape(shape)
            .astype(dtype.newbyteorder("="), copy=False)
        )


# --- loading ------------------------------------------------------------------------------


def load_onnx(
    source: str | Path | bytes | onnx.ModelProto, base_dir: str | Path | None = None
) -> tuple[onnx.ModelProto, str, Path | None]:
    """(model, a name for messages, the folder external data is read from), parsed safely:
    external data is not loaded, and a missing, huge or malformed file raises AlexcError."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "<model>"
    elif isinstance(source, (bytes, bytearray)):
        where = "<bytes>"
        if len(source) > MAX_FILE_BYTES:
            raise AlexcError(f"{where}: {len(source)} bytes is more than an ONNX model can hold")
        model = _parse(where, lambda: onnx.load_model_from_string(bytes(source), format="protobuf"))
    else:
        path = Path(source)
        where = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise AlexcError(f"{where}: no such ONNX file") from None
        except OSError as e:
            raise AlexcError(f"{where}: cannot read ({e.strerror})") from None
        if not path.is_file():
            raise AlexcError(f"{where}: not a file")
        if size == 0:
            raise AlexcError(f"{where}: the file is empty, not an ONNX model")
        if size > MAX_FILE_BYTES:
            raise AlexcError(
                f"{where}: {size} bytes is more than an ONNX file can hold (2 GiB; bigger models "
                "keep their weights in external data files)"
            )
        model = _parse(
            where, lambda: onnx.load(str(path), format="protobuf", load_external_data=False)
        )
        base_dir = path.parent if base_dir is None else base_dir
    if not model.HasField("graph"):
        raise AlexcError(f"{where}: not an ONNX model (it has no graph)")
    return model, where, Path(base_dir) if base_dir is not None else None


def _parse(where: str, parse: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    try:
        return parse()
    except DecodeError as e:
        raise AlexcError(f"{where}: not an ONNX model, or a truncated one ({e})") from None
    except OSError as e:
        raise AlexcError(f"{where}: cannot read ({e.strerror or e})") from None
    except (ValueError, RuntimeError) as e:  # onnx's C++ layer and recursion limits
        raise AlexcError(f"{where}: not a readable ONNX model ({e})") from None


# --- the importer -------------------------------------------------------------------------

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
    """Walks the ONNX graph once, in order, building alexc nodes and parameter readers."""

    def __init__(self, model: onnx.ModelProto, where: str, reader: _TensorReader, opset: int):
        self.model, self.where, self.reader, self.opset = model, where, reader, opset
        self.env: dict[str, _Tensor | _Const] = {}  # ONNX value -> what holds it
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

    def node_name(self, node: onnx.NodeProto, preferred: str = "") -> str:
        return self.unique(preferred or node.name or node.output[0], node.op_type.lower())

    # inputs --------------------------------------------------------------------------------

    def arg(self, node: onnx.NodeProto, i: int) -> _Tensor | _Const | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        value = self.env.get(node.input[i])
        if value is None:
            raise self.malformed(
                node, f"reads '{node.input[i]}', which no earlier node or initializer defines"
            )
        return value

    def need(self, node: onnx.NodeProto, i: int) -> _Tensor | _Const:
        value = self.arg(node, i)
        if value is None:
            raise self.malformed(node, f"input {i} is missing")
        return value

    def tensor(self, node: onnx.NodeProto, i: int = 0) -> _Tensor:
        value = self.need(node, i)
        if isinstance(value, _Const):
            raise self.unsupported(
                node,
                f"input {i} ('{node.input[i]}') is a constant; alexc computes this op only on "
                "values derived from the graph input",
            )
        return value

    def const(self, node: onnx.NodeProto, i: int, what: str, optional=False) -> _Const | None:
        value = self.arg(node, i) if optional else self.need(node, i)
        if isinstance(value, _Tensor):
            raise self.unsupported(
                node,
                f"its {what} (input {i}, '{node.input[i]}') is computed at run time; alexc needs "
                "it to be a constant (an initializer or Constant)",
            )
        return value

    def small(self, node: onnx.NodeProto, c: _Const, what: str, limit: int = 64) -> np.ndarray:
        """The values of a small constant (a shape, a ratio): refuses big ones unread."""
        if math.prod(c.shape) > limit:
            raise self.malformed(node, f"its {what} '{c.name}' has shape {list(c.shape)}")
        return c.read()

    def weight(self, node: onnx.NodeProto, c: _Const, what: str) -> _Const:
        if c.dtype != np.float32:
            raise self.unsupported(
                node, f"its {what} '{c.name}' is {c.dtype.name}; alexc computes in float32"
            )
        return c

    # outputs -------------------------------------------------------------------------------

    def define(self, onnx_name: str, value: _Tensor | _Const) -> None:
        if onnx_name in self.env:
            raise AlexcError(f"{self.where}: value '{onnx_name}' is defined twice")
        self.env[onnx_name] = value

    def emit(
        self,
        node: onnx.NodeProto,
        op: Op,
        inputs: Sequence[_Tensor],
        attrs: Mapping,
        params: Mapping[str, tuple[Shape, Callable[[], np.ndarray]]] | None = None,
        name: str = "",
    ) -> _Tensor:
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
        out = _Tensor(name, shape)
        self.define(node.output[0], out)
        self.holder[name] = node.output[0]
        return out

    def fold_bias(self, node: onnx.NodeProto, x: _Tensor, x_onnx: str, c: _Const) -> str:
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
            if isinstance(value, _Const) or value.name == self.input_name:
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
            what = _type_name(tt.elem_type) if kind == "tensor_type" else kind
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
        self.define(first.name, _Tensor(self.input_name, per_sample))
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

    def _attrs(self, node: onnx.NodeProto, schema, rule: _Rule) -> dict:
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
                    f"attribute '{a.name}' is {_attr_type(a.type)}, expected {spec.type.name}",
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


# --- converters: (importer, node, attrs, op version) -> None -------------------------------


def _ints(node_attrs: Mapping, key: str, default: Sequence[int]) -> list[int]:
    return [int(v) for v in node_attrs.get(key, default)]


def _pads(im: _Importer, node, a: Mapping, size: Shape, kernel, stride, dilation) -> list[int]:
    """Explicit [top, left, bottom, right] pads from pads or auto_pad."""
    auto = a.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = _ints(a, "pads", [0, 0, 0, 0])
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise im.unsupported(node, f"pads {pads}: alexc takes 4 non-negative pads (2-D)")
        return pads
    if "pads" in a:
        raise im.malformed(node, f"has both pads and auto_pad={auto}")
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise im.malformed(
            node, f"auto_pad={auto!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"
        )
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        if k < 1 or s < 1 or d < 1:
            raise im.malformed(node, f"kernel {kernel}, strides {stride}, dilations {dilation}")
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _image(im: _Importer, node, i: int = 0) -> _Tensor:
    x = im.tensor(node, i)
    if len(x.shape) != 3:
        raise im.unsupported(
            node,
            f"its input has rank {len(x.shape) + 1}; alexc's {node.op_type} works on images "
            "(N, C, H, W) only",
        )
    return x


def _conv(im: _Importer, node, a: Mapping, version: int) -> None:
    x = _image(im, node)
    w = im.weight(node, im.const(node, 1, "weight"), "weight")
    b = im.const(node, 2, "bias", optional=True)
    if len(w.shape) != 4:
        raise im.unsupported(node, f"weight of shape {list(w.shape)}: alexc convolves in 2-D only")
    kernel = list(w.shape[2:])
    if _ints(a, "kernel_shape", kernel) != kernel:
        raise im.malformed(
            node, f"kernel_shape {a['kernel_shape']} but weight shape {list(w.shape)}"
        )
    stride, dilation = _ints(a, "strides", [1, 1]), _ints(a, "dilations", [1, 1])
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
            "pad": _pads(im, node, a, x.shape[1:], kernel, stride, dilation),
            "dilation": dilation,
            "groups": int(a.get("group", 1)),
            "bias": b is not None,
        },
        params,
        name=_owner(w.name, b.name if b is not None else None),
    )


def _pool(op: Op) -> Callable:
    def convert(im: _Importer, node, a: Mapping, version: int) -> None:
        x = _image(im, node)
        kernel = _ints(a, "kernel_shape", [])
        stride = _ints(a, "strides", [1] * len(kernel))
        if len(kernel) != 2 or len(stride) != 2:
            raise im.unsupported(node, f"kernel_shape {kernel}: alexc pools in 2-D only")
        if _ints(a, "dilations", [1, 1]) != [1, 1]:
            raise im.unsupported(node, f"dilations {a['dilations']}: alexc pools without dilation")
        if int(a.get("storage_order", 0)) != 0:
            raise im.unsupported(node, "storage_order=1 (column-major indices) is not supported")
        attrs = {
            "kernel": kernel,
            "stride": stride,
            "pad": _pads(im, node, a, x.shape[1:], kernel, stride, [1, 1]),
            # auto_pad SAME fixes the output at ceil(size / stride); its pads give exactly that.
            "ceil_mode": bool(a.get("ceil_mode", 0)) and a.get("auto_pad", "NOTSET") == "NOTSET",
        }
        if op is Op.AVGPOOL:
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        im.emit(node, op, [x], attrs)

    return convert


def _global_avgpool(im: _Importer, node, a: Mapping, version: int) -> None:
    im.emit(node, Op.ADAPTIVE_AVGPOOL, [_image(im, node)], {"output": 1})


def _relu(im: _Importer, node, a: Mapping, version: int) -> None:
    im.emit(node, Op.RELU, [im.tensor(node)], {})


def _lrn(im: _Importer, node, a: Mapping, version: int) -> None:
    attrs = {
        "size": int(a["size"]),
        "alpha": float(a.get("alpha", 1e-4)),
        "beta": float(a.get("beta", 0.75)),
        "bias": float(a.get("bias", 1.0)),
        "convention": "onnx",  # ONNX divides alpha by size, as alexc's onnx convention does
    }
    im.emit(node, Op.LRN, [_image(im, node)], attrs)


def _flat(im: _Importer, node) -> _Tensor:
    x = im.tensor(node)
    if len(x.shape) != 1:
        raise im.unsupported(
            node,
            f"{node.op_type} of a tensor of per-sample shape {list(x.shape)}; alexc's linear "
            "layers take (N, features): flatten first",
        )
    return x


def _bias_vector(im: _Importer, node, c: _Const, units: int, scale: float) -> tuple:
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


def _gemm(im: _Importer, node, a: Mapping, version: int) -> None:
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
    im.emit(node, Op.LINEAR, [x], linear, params, name=_owner(b.name, c.name if c else None))


def _matmul(im: _Importer, node, a: Mapping, version: int) -> None:
    x = _flat(im, node)
    b = im.weight(node, im.const(node, 1, "weight (B)"), "weight (B)")
    if len(b.shape) != 2:
        raise im.unsupported(
            node, f"B has shape {list(b.shape)}; alexc's MatMul is (N, K) @ a constant (K, M)"
        )
    k, units = b.shape
    params = {"weight": ((units, k), lambda: np.ascontiguousarray(b.read().T))}
    im.emit(
        node, Op.LINEAR, [x], {"units": units, "bias": False}, params, name=_owner(b.name, None)
    )


def _add(im: _Importer, node, a: Mapping, version: int) -> None:
    x, y = im.need(node, 0), im.need(node, 1)
    if version < 7 and int(a.get("broadcast", 0)) and isinstance(y, _Const) and "axis" in a:
        # Opset 6 aligns B's dims at `axis` rather than at the end: pad B's shape with ones.
        x_rank = 1 + len(x.shape) if isinstance(x, _Tensor) else len(x.shape)
        axis = int(a["axis"]) % max(x_rank, 1)
        trailing = x_rank - axis - len(y.shape)
        if trailing < 0:
            raise im.malformed(node, f"axis={a['axis']} does not fit B's shape {list(y.shape)}")
        y = _Const(
            y.name, y.shape + (1,) * trailing, y.dtype, _reshaped(y.read, y.shape + (1,) * trailing)
        )
    if isinstance(x, _Tensor) and isinstance(y, _Tensor):
        im.emit(node, Op.ADD, [x, y], {})
        return
    if isinstance(x, _Const) and isinstance(y, _Const):
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
            node.output[0], _Const(node.output[0], shape, dtype, lambda: np.add(x.read(), y.read()))
        )
        return
    tensor, const, onnx_name = (
        (x, y, node.input[0]) if isinstance(x, _Tensor) else (y, x, node.input[1])
    )
    why = im.fold_bias(node, tensor, onnx_name, const)
    if why:
        raise im.unsupported(
            node,
            "Add of a tensor and a constant: alexc folds the constant into the bias of the Conv, "
            f"Gemm or MatMul right before it, but {why}",
        )


def _reshaped(read: Callable[[], np.ndarray], shape: Shape) -> Callable[[], np.ndarray]:
    return lambda: read().reshape(shape)


def _softmax(op_name: str) -> Callable:
    def convert(im: _Importer, node, a: Mapping, version: int) -> None:
        op = next((o for o in Op if o.value == op_name), None)
        if op is None:
            raise im.unsupported(node, f"alexc has no {op_name} op")
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


def _flatten(im: _Importer, node, a: Mapping, version: int) -> None:
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
    if isinstance(data, _Const):  # a constant reshaped (a weight, say): reshape it here
        shape = _reshape_result(dims, data.shape, allowzero)
        if shape is None:
            raise im.malformed(node, f"cannot reshape {list(data.shape)} to {dims}")
        im.define(
            node.output[0], _Const(node.output[0], shape, data.dtype, _reshaped(data.read, shape))
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


def _dropout(im: _Importer, node, a: Mapping, version: int) -> None:
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


def _concat(im: _Importer, node, a: Mapping, version: int) -> None:
    xs = [im.tensor(node, i) for i in range(len(node.input))]
    rank = 1 + len(xs[0].shape)
    axis = int(a.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 1 <= axis < rank:
        raise im.unsupported(
            node, f"axis {a.get('axis')} joins along the batch; alexc concatenates per sample"
        )
    im.emit(node, Op.CONCAT, xs, {"axis": axis})


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
        const = _Const(node.output[0], array.shape, array.dtype, array.copy)
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

    im.define(node.output[0], _Const(node.output[0], shape, dtype, read))


def _transpose(im: _Importer, node, a: Mapping, version: int) -> None:
    c = im.const(node, 0, "input")
    perm = _ints(a, "perm", range(len(c.shape) - 1, -1, -1))
    if sorted(perm) != list(range(len(c.shape))):
        raise im.malformed(node, f"perm {perm} does not fit shape {list(c.shape)}")
    shape = tuple(c.shape[p] for p in perm)
    im.define(
        node.output[0],
        _Const(
            node.output[0], shape, c.dtype, lambda: np.ascontiguousarray(c.read().transpose(perm))
        ),
    )


@dataclass(frozen=True)
class _Rule:
    convert: Callable[[_Importer, onnx.NodeProto, Mapping, int], None]
    versions: tuple[int, ...]  # the op's schema versions (since_version) this converter handles
    reads: tuple[str, ...] = ()  # the attributes it understands; any other is refused


_POOL_ATTRS = ("auto_pad", "kernel_shape", "pads", "strides", "ceil_mode", "dilations")
_SOFTMAX_VERSIONS = (1, 11, 13)

CONVERTERS: dict[str, _Rule] = {
    "Conv": _Rule(
        _conv, (1, 11, 22), ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
    ),
    "Relu": _Rule(_relu, (6, 13, 14)),
    "LRN": _Rule(_lrn, (1, 13), ("alpha", "beta", "bias", "size")),
    "MaxPool": _Rule(_pool(Op.MAXPOOL), (1, 8, 10, 11, 12, 22), (*_POOL_ATTRS, "storage_order")),
    "AveragePool": _Rule(
        _pool(Op.AVGPOOL), (1, 7, 10, 11, 19, 22), (*_POOL_ATTRS, "count_include_pad")
    ),
    "GlobalAveragePool": _Rule(_global_avgpool, (1, 22)),
    "Gemm": _Rule(_gemm, (6, 7, 9, 11, 13), ("alpha", "beta", "broadcast", "transA", "transB")),
    "MatMul": _Rule(_matmul, (1, 9, 13)),
    "Add": _Rule(_add, (6, 7, 13, 14), ("axis", "broadcast")),
    "Flatten": _Rule(_flatten, (1, 9, 11, 13, 21, 23, 24, 25), ("axis",)),
    "Reshape": _Rule(_reshape, (5, 13, 14, 19, 21, 23, 24, 25), ("allowzero",)),
    "Dropout": _Rule(_dropout, (6, 7, 10, 12, 13, 22), ("is_test", "ratio", "seed")),
    "Softmax": _Rule(_softmax("softmax"), _SOFTMAX_VERSIONS, ("axis",)),
    "LogSoftmax": _Rule(_softmax("log_softmax"), _SOFTMAX_VERSIONS, ("axis",)),
    "Concat": _Rule(_concat, (4, 11, 13), ("axis",)),
    # Structure and constants: aliases, and values computed here once.
    "Identity": _Rule(_identity, (1, 13, 14, 16, 19, 21, 23, 24, 25)),
    "Constant": _Rule(
        _constant,
        (1, 9, 11, 12, 13, 19, 21, 23, 24, 25),
        ("value", "value_float", "value_floats", "value_int", "value_ints"),
    ),
    "ConstantOfShape": _Rule(_constant_of_shape, (9, 20, 21, 23, 24, 25), ("value",)),
    "Transpose": _Rule(_transpose, (1, 13, 21, 23, 24, 25), ("perm",)),
}
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


def _metadata(model: onnx.ModelProto, graph_out: Shape, channels: int) -> tuple[list | None, dict]:
    """Class names and preprocessing from metadata_props (as alexc exports them); anything
    malformed there (or a mean or std that is not one number per channel) is ignored: it is
    optional description, not computation."""
    props = {p.key: p.value for p in model.metadata_props}

    def parsed(key):
        try:
            return json.loads(props[key]) if key in props else None
        except ValueError:
            return None

    classes = parsed("classes")
    if not (
        isinstance(classes, list)
        and all(isinstance(c, str) for c in classes)
        and graph_out == (len(classes),)
    ):
        classes = None
    data = {}
    for key, identity in (("mean", 0.0), ("std", 1.0)):
        values = parsed(key)
        if (
            isinstance(values, list)
            and len(values) == channels
            and all(is_number(v) and (key == "mean" or v > 0) for v in values)
            and any(v != identity for v in values)
        ):
            data[key] = [float(v) for v in values]
    return classes, data


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
    im = _Importer(proto, where, _TensorReader(where, folder), _opset(proto, where))
    inputs, outputs, mapping = im.run(input_shape)
    classes, data = _metadata(proto, im.env[proto.graph.output[0].name].shape, inputs[0].shape[0])
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
