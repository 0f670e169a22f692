"""The registry's entry type: everything alexc's compiler side knows about one op.

The runtime side (forward, backward, what a kernel saves, its workspace) is the runtime's
`alexc_runtime.kernels.KERNELS` entry of the same name: the runtime never imports alexc.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..ir import Shape
from .attrs import Attr


@dataclass(frozen=True)
class Converter:
    """ONNX import of one ONNX op type: `convert(importer, node, attrs, version)` emits alexc
    nodes through the importer (alexc.serial.onnx_import)."""

    convert: Callable
    versions: tuple[int, ...]  # the op's schema versions (since_version) this converter handles
    reads: tuple[str, ...] = ()  # the attributes it understands; any other is refused


@dataclass(frozen=True)
class OpDef:
    """One op, all its columns side by side.

    - `attrs`: the schema graph files and Python use (normalised by `normalise_attrs`).
    - `plan_attrs`: attributes only compiler passes set on plan steps (the fused `relu` of conv
      and linear, set by `alexc.lower.fuse_relu`); a graph that sets one is refused.
    - `arity`: (min, max) data inputs; max None = any.
    - `shape(attrs, in_shapes) -> shape`, `params(attrs, in_shapes) -> {suffix: (shape,
      fan_in)}`, `flops(attrs, in_shapes, out_shape) -> int`: per sample.
    - `export(emitter, node, inputs)`: emits the ONNX nodes (alexc.serial.onnx_export).
    - `onnx_import`: ONNX op type -> Converter, for the ONNX ops that become this op.
    - `torch(call, inputs)`: the PyTorch peer lowering `alexc bench` runs (alexc.bench.torch_peer);
      torch is imported by the caller, never here.
    - `reference(attrs, *inputs)`: the plain-NumPy forward on batched float arrays (inference
      mode, parameters as trailing inputs): the spec, and the tests' oracle for the kernels.
    - `loss`: a loss node (consumes labels, ends the graph).
    """

    attrs: Mapping[str, Attr]
    arity: tuple[int, int | None]
    shape: Callable[[Mapping, list[Shape]], Shape]
    params: Callable[[Mapping, list[Shape]], dict[str, tuple[Shape, int]]]
    flops: Callable[[Mapping, list[Shape], Shape], int]
    export: Callable
    onnx_import: Mapping[str, Converter]
    torch: Callable
    reference: Callable
    loss: bool = False
    plan_attrs: Mapping[str, Attr] = field(default_factory=dict)
