"""Checkpoints: safetensors files (never pickle), written atomically.

Layout: parameters under their own names (`conv1.weight`), optimizer state under
`momentum/<param name>`, and one metadata entry `alexc` holding JSON (epoch, step, lr, RNG
state, class names, graph fingerprint, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..files import write_atomic
from ..ir import Graph
from ..ir.graph import check_params, with_classes

MOMENTUM = "momentum/"


def save_checkpoint(
    path: str | Path,
    params: Mapping[str, np.ndarray],
    *,
    momentum: Mapping[str, np.ndarray] | None = None,
    meta: Mapping | None = None,
) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over `path`.

    A reader (or a crash at any moment) sees either the old file or the new one, whole."""
    from safetensors.numpy import save

    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in params.items()}
    for k, v in (momentum or {}).items():
        tensors[MOMENTUM + k] = np.ascontiguousarray(v)
    blob = save(tensors, metadata={"alexc": json.dumps(dict(meta or {}))})
    write_atomic(path, blob, "checkpoint", CheckpointError)


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(params, momentum, meta) from a checkpoint; CheckpointError if missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weights file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tensors = load(blob)
        meta_text = _metadata(blob).get("alexc", "{}")
        meta = json.loads(meta_text)
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'alexc' metadata is not a JSON object")
    params = {k: v for k, v in tensors.items() if not k.startswith(MOMENTUM)}
    momentum = {k[len(MOMENTUM) :]: v for k, v in tensors.items() if k.startswith(MOMENTUM)}
    return params, momentum, meta


def _metadata(blob: bytes) -> dict:
    # safetensors' header: 8-byte little-endian length, then JSON with "__metadata__".
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__") or {}


def load_weights(path: str | Path, graph: Graph) -> dict[str, np.ndarray]:
    """Parameters for `graph` from a checkpoint or weights file, checked name by name."""
    params, _, _ = read_checkpoint(path)
    return check_params(params, graph, str(path))


def load_for_graph(path: str | Path, graph: Graph) -> tuple[Graph, dict[str, np.ndarray]]:
    """(graph, params) from a checkpoint: a graph trained on another data set (e.g. the paper
    net on Fashion-MNIST's 10 classes) gets its last layer resized to the checkpoint's classes."""
    params, _, meta = read_checkpoint(path)
    classes = meta.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        if graph.shapes[graph.outputs[0]] != (len(classes),) or graph.classes != tuple(classes):
            graph = with_classes(graph, len(classes), classes)
    return graph, check_params(params, graph, str(path))
