"""The op registry: one `OpDef` per op, collected from the family modules (conv, pool, lrn,
shape, linear, softmax), and the attribute checks every reader of attributes uses."""

from __future__ import annotations

from collections.abc import Mapping

from ..ir import Op
from . import conv, linear, lrn, pool, shape, softmax
from .attrs import REQUIRED, ShapeError
from .entry import OpDef

REGISTRY: dict[Op, OpDef] = {
    **conv.ENTRIES,
    **pool.ENTRIES,
    **lrn.ENTRIES,
    **shape.ENTRIES,
    **linear.ENTRIES,
    **softmax.ENTRIES,
}
RULES = REGISTRY  # the name the graph builder, lowering and checks have always used

# Every ONNX op type that becomes an alexc op, and the op it becomes.
CONVERTERS = {
    onnx_type: converter
    for entry in REGISTRY.values()
    for onnx_type, converter in entry.onnx_import.items()
}


def normalise_attrs(op: Op, raw: Mapping) -> dict:
    """Check raw attributes against the op's schema, fill defaults, normalise forms."""
    entry = REGISTRY[op]
    schema = entry.attrs
    planned = sorted(set(raw) & set(entry.plan_attrs))
    if planned:
        raise ShapeError(
            f"attribute '{planned[0]}' of op {op.value} is set by the compiler when it fuses a "
            f"following {planned[0]} node into an inference plan; add a {planned[0]} node instead"
        )
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        known = ", ".join(schema) or "none"
        raise ShapeError(f"unknown attribute '{unknown[0]}' for op {op.value} (it takes: {known})")
    out = {}
    for name, spec in schema.items():
        if name in raw:
            out[name] = spec.kind(raw[name], name)
        elif spec.default is REQUIRED:
            raise ShapeError(f"op {op.value} needs attribute '{name}'")
        else:
            out[name] = spec.kind(spec.default, name)
    return out


def check_plan_attrs(op: Op, attrs: Mapping) -> dict:
    """Check a plan step's attributes: a normalised graph schema plus the op's plan attributes
    (each normalised by its kind when present). Returns them normalised."""
    entry = REGISTRY[op]
    graph_attrs = {k: v for k, v in attrs.items() if k not in entry.plan_attrs}
    out = normalise_attrs(op, graph_attrs)
    for name, spec in entry.plan_attrs.items():
        if name in attrs:
            out[name] = spec.kind(attrs[name], name)
    return out
