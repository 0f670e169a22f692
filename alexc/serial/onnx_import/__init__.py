"""ONNX import, split by idea: `reader` (the untrusted file: size and external-data checks,
tensors read on demand), `importer` (the graph walk, name cleaning, the ops that fold away;
per-op converters live in the op registry, alexc.ops) and `metadata` (class names and
preprocessing from metadata_props)."""

from .importer import (
    CONVERTERS,
    MIN_OPSET,
    SUPPORTED_OPS,
    WEIGHTS,
    Imported,
    convert_onnx,
    import_onnx,
)
from .reader import MAX_FILE_BYTES, UnsupportedModel, load_onnx

__all__ = [
    "CONVERTERS",
    "MAX_FILE_BYTES",
    "MIN_OPSET",
    "SUPPORTED_OPS",
    "WEIGHTS",
    "Imported",
    "UnsupportedModel",
    "convert_onnx",
    "import_onnx",
    "load_onnx",
]
