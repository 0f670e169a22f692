"""The optional description an ONNX model carries in metadata_props (as alexc exports it):
class names and preprocessing."""

from __future__ import annotations

import json

import onnx

from ...errors import is_number
from ...ir import Shape


def read_metadata(
    model: onnx.ModelProto, graph_out: Shape, channels: int
) -> tuple[list | None, dict]:
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
