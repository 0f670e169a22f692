"""The op registry: everything the compiler side knows about each op, one entry per op
(`REGISTRY`, also called `RULES`), one module per op family. See `entry.OpDef` for the columns
and the README's "Adding an op" for what a new op touches."""

from .attrs import MAX_ELEMENTS, REQUIRED, Attr, ShapeError
from .entry import Converter, OpDef
from .registry import CONVERTERS, REGISTRY, RULES, check_plan_attrs, normalise_attrs

__all__ = [
    "CONVERTERS",
    "MAX_ELEMENTS",
    "REGISTRY",
    "REQUIRED",
    "RULES",
    "Attr",
    "Converter",
    "OpDef",
    "ShapeError",
    "check_plan_attrs",
    "normalise_attrs",
]
