"""The IR (core.py: Op, Node, Input, Param, Graph) and the graph builder and verifier
(graph.py: shapes, parameters and checks, read from the op registry `alexc.ops`).

This package's namespace holds the core types only: `alexc.ops` imports them, and the builder
imports `alexc.ops`, so `alexc.ir.graph` is imported by name, never from here.
"""

from .core import INIT_KINDS, LABELS, LOSS, Graph, Input, Node, Op, Param, Shape, init_param

__all__ = [
    "INIT_KINDS",
    "LABELS",
    "LOSS",
    "Graph",
    "Input",
    "Node",
    "Op",
    "Param",
    "Shape",
    "init_param",
]
