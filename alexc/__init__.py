"""alexc: a small compiler for convolutional networks: YAML graphs to a NumPy trainer and ONNX."""

from .compile import Executor, compile
from .errors import AlexcError, CheckpointError, DataError, GraphError
from .frontend import load_graph, parse_graph
from .graph import build_graph, verify
from .ir import Graph, Input, Node, Op, Param

__all__ = [
    "AlexcError",
    "CheckpointError",
    "DataError",
    "Executor",
    "Graph",
    "GraphError",
    "Input",
    "Node",
    "Op",
    "Param",
    "build_graph",
    "compile",
    "load_graph",
    "parse_graph",
    "verify",
]
