"""The IR: one immutable node type, and a Graph of them in topological order.

The IR knows nothing of YAML or ONNX; the frontend and the ONNX modules read and write it.
Shapes are per sample: the batch dimension is symbolic (`N`) and fixed only when lowering.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

import numpy as np

Shape = tuple[int, ...]

# Names the trainer adds to a graph: the labels input and the loss node. Lowering uses them and
# the ONNX importer keeps them free; defined here so that neither imports the other.
LABELS = "labels"
LOSS = "loss"


class Op(str, Enum):
    CONV = "conv"
    RELU = "relu"
    LRN = "lrn"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    ADAPTIVE_AVGPOOL = "adaptive_avgpool"
    FLATTEN = "flatten"
    DROPOUT = "dropout"
    LINEAR = "linear"
    SOFTMAX_CROSS_ENTROPY = "softmax_cross_entropy"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    CONCAT = "concat"
    ADD = "add"


def _freeze(value):
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Node:
    """One operation. `inputs` name graph inputs or earlier nodes; params are implicit
    (`<name>.weight`, `<name>.bias`) and declared on the Graph. `attrs` are normalised."""

    op: Op
    name: str
    inputs: tuple[str, ...]
    attrs: Mapping = field(default_factory=dict)
    init: Mapping = field(default_factory=dict)  # param suffix -> init spec, see init_param

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", _freeze(dict(self.attrs)))
        object.__setattr__(self, "init", _freeze(dict(self.init)))


@dataclass(frozen=True)
class Input:
    name: str
    shape: Shape  # per sample, e.g. (3, 227, 227)


@dataclass(frozen=True)
class Param:
    name: str  # "<node>.weight" | "<node>.bias"
    shape: Shape
    init: Mapping  # e.g. {"normal": 0.01}, {"constant": 1.0}, {"fan_in_uniform": 1.0}
    fan_in: int


@dataclass(frozen=True)
class Graph:
    """A verified network: nodes in topological order with every shape inferred.

    Build one with `alexc.ir.graph.build_graph` (or `alexc.load_graph` from YAML)."""

    name: str
    inputs: tuple[Input, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    params: tuple[Param, ...]
    shapes: Mapping[str, Shape]  # every value (inputs and nodes), per sample
    flops: Mapping[str, int]  # forward FLOPs per sample, per node
    train: Mapping = field(default_factory=dict)
    data: Mapping = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    source: str | None = None  # file it was read from, for error messages
    lines: Mapping[str, int] = field(default_factory=dict)  # node name -> line in source

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def input(self) -> Input:
        return self.inputs[0]

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params)

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    def fingerprint(self) -> str:
        """A hash of what determines the computation (not names of files or recipes)."""
        desc = {
            "inputs": [(i.name, list(i.shape)) for i in self.inputs],
            "nodes": [(n.op.value, n.name, list(n.inputs), _thaw(n.attrs)) for n in self.nodes],
            "outputs": list(self.outputs),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh float32 parameters; each tensor depends only on (seed, its name)."""
        return {p.name: init_param(p, seed) for p in self.params}


def init_param(param: Param, seed: int) -> np.ndarray:
    """Draw one parameter from its init spec, reproducibly."""
    rng = np.random.default_rng([seed, zlib.crc32(param.name.encode())])
    ((kind, value),) = param.init.items()
    if kind == "normal":
        out = rng.normal(0.0, value, param.shape)
    elif kind == "constant":
        out = np.full(param.shape, value)
    elif kind == "uniform":
        out = rng.uniform(-value, value, param.shape)
    elif kind == "fan_in_uniform":  # PyTorch's default for conv and linear
        bound = value / np.sqrt(param.fan_in)
        out = rng.uniform(-bound, bound, param.shape)
    elif kind == "kaiming_normal":  # He et al. for ReLU nets: std = gain * sqrt(2 / fan_in)
        out = rng.normal(0.0, value * np.sqrt(2.0 / param.fan_in), param.shape)
    else:
        raise ValueError(f"unknown init kind {kind!r}")
    return out.astype(np.float32)


INIT_KINDS = ("normal", "constant", "uniform", "fan_in_uniform", "kaiming_normal")
