"""Cross-check: the NumPy executor against onnxruntime running alexc's own ONNX export.

Both run the same seeded random batches; every graph output is compared. The relative error of an
output is ``max|ort - numpy| / max|numpy|``: the largest absolute error over the largest magnitude
of the reference (alexc's NumPy executor). Dividing element by element would blow up on outputs
near zero, where float32 rounding alone gives large ratios; the max-magnitude form measures errors
on the output's own scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AlexcError
from .ir import Graph
from .ir.graph import check_params
from .ops import RULES

DEFAULT_RTOL = 1e-5


@dataclass(frozen=True)
class CheckRow:
    """One graph output at one batch size: largest errors of onnxruntime vs the NumPy executor."""

    batch_size: int
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max_abs / max|reference|
    rtol: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.rtol


def compare(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max absolute error, max absolute error / max |reference|) in float64."""
    if actual.shape != reference.shape:
        raise AlexcError(f"shapes differ: {actual.shape} vs reference {reference.shape}")
    a, b = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if a.size == 0:
        return 0.0, 0.0
    max_abs = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    if not np.isfinite(max_abs):
        return float("inf"), float("inf")
    if scale == 0.0:
        return max_abs, 0.0 if max_abs == 0.0 else float("inf")
    return max_abs, max_abs / scale


def load_onnx(model: bytes | str | Path, threads: int):
    """onnxruntime on a model's bytes or file (an OrtPredictor); a file it cannot read or load
    is an AlexcError naming it."""
    from alexc_runtime.ort import OrtPredictor

    what = "the ONNX model" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):
        try:
            model = Path(model).read_bytes()
        except OSError as e:
            raise AlexcError(f"{what}: cannot read the ONNX file ({e.strerror})") from None
    try:
        return OrtPredictor(model, threads)
    except Exception as e:  # onnxruntime's own exception types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AlexcError(f"{what}: onnxruntime cannot load it ({reason})") from None


def check(
    graph: Graph,
    params: Mapping[str, np.ndarray],
    batch_sizes: Sequence[int] = (1, 5),
    threads: int = 2,
    seed: int = 0,
    lrn: str = "node",
    *,
    opset: int | None = None,
    rtol: float = DEFAULT_RTOL,
    model: bytes | str | Path | None = None,
) -> list[CheckRow]:
    """Run the NumPy executor and onnxruntime on the same seeded N(0, 1) batches; one row per
    output and batch size. Inputs of batch size b come from ``default_rng([seed, b])``.

    onnxruntime runs `model` (an ONNX file or its bytes, e.g. what `alexc export` wrote) when
    given, else a fresh export of `graph` and `params`."""
    from .passes.compile import compile
    from .serial.onnx_export import DEFAULT_OPSET, export_onnx

    losses = [n.name for n in graph.nodes if RULES[n.op].loss and n.name in graph.outputs]
    if losses:
        raise AlexcError(
            f"graph '{graph.name}' outputs a loss ('{losses[0]}'); check compares inference outputs"
        )
    if not batch_sizes or min(batch_sizes) < 1:
        raise AlexcError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    params = check_params(params, graph, "parameters")
    if model is None:
        model = export_onnx(
            graph, params, opset=opset or DEFAULT_OPSET, lrn=lrn
        ).SerializeToString()
    ort = load_onnx(model, threads)
    if len(ort.output_names) != len(graph.outputs):
        raise AlexcError(
            f"the ONNX model has {len(ort.output_names)} output(s), graph '{graph.name}' has "
            f"{len(graph.outputs)}: was it exported from this graph?"
        )
    executor = compile(graph, batch_size=batch_sizes[0], threads=threads, seed=seed)
    rows = []
    try:
        for b in batch_sizes:
            rng = np.random.default_rng([seed, b])
            x = rng.standard_normal((b, *graph.input.shape)).astype(np.float32)
            reference = executor.outputs(params, x)
            outputs = zip(graph.outputs, ort.run(x), strict=True)  # in declaration order
            for name, actual in outputs:
                max_abs, max_rel = compare(actual, reference[name])
                rows.append(CheckRow(b, name, tuple(actual.shape), max_abs, max_rel, rtol))
    finally:
        executor.close()
    return rows
