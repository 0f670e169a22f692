"""alexc: a small compiler for convolutional networks: YAML graphs to a NumPy trainer and ONNX."""

__version__ = "0.1.0"

from .errors import AlexcError, CheckpointError, DataError, GraphError
from .ir import Graph, Input, Node, Op, Param
from .ir.graph import build_graph, verify
from .passes.compile import Executor, compile
from .serial.frontend import load_graph, parse_graph


def __getattr__(name):
    # ONNX support is imported on first use, so `import alexc` stays light.
    if name == "export_onnx":
        from .serial.onnx_export import export_onnx

        return export_onnx
    if name == "import_onnx":
        from .serial.onnx_import import import_onnx

        return import_onnx
    raise AttributeError(f"module 'alexc' has no attribute {name!r}")


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
    "export_onnx",
    "import_onnx",
    "load_graph",
    "parse_graph",
    "verify",
]
