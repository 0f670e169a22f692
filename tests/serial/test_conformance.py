"""ONNX's own conformance cases, run through ONNX import and the NumPy executor.

The cases are onnx's node tests (`onnx.backend.test.loader.load_model_tests(kind="node")`) and
the on-disk pytorch-converted cases, kept where every node's op is one alexc imports. The first
graph input is the data; later inputs become initializers holding the case's values (so a
Conv's W is a weight, a Reshape's shape a constant). Each case ends as

- pass: imported, and every output matches (the case's rtol/atol, by default 1e-3 / 1e-7);
- not applicable: refused as outside alexc's model (1-D or 3-D conv and pooling, non-float data,
  reductions over the batch, ...), with the refusal message as the reason;
- fail: anything else (a wrong number, a crash, a model called malformed).

The default tier runs the cases of the core ops' own modules; `-m slow` runs every case and prints
the tally with the reason for each case that is not a pass (run with -s to see it).
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import alexc
from alexc.serial.onnx_import import SUPPORTED_OPS, UnsupportedModel, convert_onnx

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
PYTORCH_CONVERTED = DATA / "pytorch-converted"
# The onnx modules defining node cases of the ops AlexNet uses (importing one registers its
# cases); the slow tier loads them all.
CORE_MODULES = (
    "conv", "relu", "lrn", "maxpool", "averagepool", "globalaveragepool", "gemm", "matmul",
    "flatten", "reshape", "dropout", "softmax", "logsoftmax", "concat", "add",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    data_sets: list  # [(inputs, outputs)]
    rtol: float = 1e-3
    atol: float = 1e-7


def applicable_ops(model: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in model.graph.node}
    return bool(ops) and ops <= set(SUPPORTED_OPS)


def node_cases(modules: tuple[str, ...] | None = None) -> list[Case]:
    """onnx's node cases (all, or those of `modules`) whose ops alexc imports."""
    if modules is None:
        from onnx.backend.test.loader import load_model_tests

        tests = load_model_tests(kind="node")
    else:
        for module in modules:
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
        # What the loader reads: the cases of every node-case module imported so far.
        from onnx.backend.test.case.node import _NodeTestCases as tests
    return [
        Case(t.name, t.model, t.data_sets, t.rtol, t.atol)
        for t in tests
        if applicable_ops(t.model) and t.data_sets
    ]


def _tensor(path: Path) -> np.ndarray:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(proto)


def pytorch_cases() -> list[Case]:
    """The on-disk pytorch-converted cases whose ops alexc imports."""
    cases = []
    for folder in sorted(PYTORCH_CONVERTED.iterdir()):
        model = onnx.load(str(folder / "model.onnx"))
        if not applicable_ops(model):
            continue
        data_sets = [
            (
                [_tensor(p) for p in sorted(d.glob("input_*.pb"))],
                [_tensor(p) for p in sorted(d.glob("output_*.pb"))],
            )
            for d in sorted(folder.glob("test_data_set_*"))
        ]
        cases.append(Case(folder.name, model, data_sets))
    return cases


def with_constant_inputs(model: onnx.ModelProto, inputs: list) -> onnx.ModelProto:
    """The model with every graph input after the first turned into an initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initialized = {t.name for t in out.graph.initializer}
    data = [i for i in out.graph.input if i.name not in initialized]
    for info, value in zip(data[1:], inputs[1:], strict=True):
        out.graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
    keep = [i for i in out.graph.input if i.name in initialized or i.name == data[0].name]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    return out


def run_case(case: Case) -> tuple[str, str]:
    """("pass" | "n/a" | "fail", reason)."""
    for inputs, expected in case.data_sets:
        try:
            imported = convert_onnx(with_constant_inputs(case.model, inputs))
        except UnsupportedModel as e:
            return "n/a", str(e).split(": ", 1)[1]
        except Exception as e:  # noqa: BLE001 - any other outcome is a failure to report
            return "fail", f"import: {type(e).__name__}: {e}"
        try:
            x = inputs[0]
            outs = alexc.compile(imported.graph, x.shape[0]).outputs(imported.params, x)
            # Executor.outputs keys an output that is a dropout by the dropout's input, so
            # outputs are looked up by position in graph.outputs.
            values = list(outs.values())
            for info, want in zip(case.model.graph.output, expected, strict=True):
                got = values[imported.graph.outputs.index(imported.outputs[info.name])]
                np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
        except Exception as e:  # noqa: BLE001
            return "fail", f"run: {type(e).__name__}: {str(e).strip()}"
    return "pass", ""


def tally(cases: list[Case]) -> tuple[Counter, dict[str, tuple[str, str]]]:
    results = {c.name: run_case(c) for c in cases}
    return Counter(status for status, _ in results.values()), results


def report(counts: Counter, results: dict) -> str:
    lines = [
        f"ONNX conformance: {counts['pass']} passed, {counts['n/a']} not applicable, "
        f"{counts['fail']} failed, of {sum(counts.values())} cases with supported ops"
    ]
    for name, (status, why) in sorted(results.items()):
        if status != "pass":
            lines.append(f"  {status:4} {name}: {why}")
    return "\n".join(lines)


# Every case of these must pass: the ops and attributes AlexNets use.
MUST_PASS = (
    "test_basic_conv_with_padding",
    "test_conv_with_strides_and_asymmetric_padding",
    "test_conv_with_autopad_same",
    "test_lrn",
    "test_lrn_default",
    "test_maxpool_2d_pads",
    "test_maxpool_2d_ceil",
    "test_maxpool_2d_same_lower",
    "test_averagepool_2d_pads_count_include_pad",
    "test_averagepool_2d_ceil_last_window_starts_on_pad",
    "test_globalaveragepool",
    "test_gemm_transposeB",
    "test_gemm_alpha",
    "test_gemm_beta",
    "test_matmul_2d",
    "test_flatten_axis1",
    "test_reshape_reduced_dims",
    "test_dropout_default_ratio",
    "test_softmax_axis_1",
    "test_Conv2d_groups",
    "test_Conv2d_dilated",
    "test_Linear",
    "test_MaxPool2d",
    "test_AvgPool2d_stride",
)


# The tallies with onnx 1.23: a case that stops passing fails the test, and one that starts to
# (or a new onnx with other cases) asks for the counts to be updated here and in the README.
CORE_COUNTS = {"pass": 85, "n/a": 97}
ALL_COUNTS = {"pass": 85, "n/a": 113}


def test_core_conformance_cases():
    cases = node_cases(CORE_MODULES) + pytorch_cases()
    counts, results = tally(cases)
    failed = {n: why for n, (status, why) in results.items() if status == "fail"}
    assert not failed, report(counts, results)
    passed = {n for n, (status, _) in results.items() if status == "pass"}
    assert set(MUST_PASS) <= passed, sorted(set(MUST_PASS) - passed)
    assert dict(counts) == CORE_COUNTS, f"onnx {onnx.__version__}: {report(counts, results)}"


@pytest.mark.slow
def test_all_conformance_cases():
    counts, results = tally(node_cases() + pytorch_cases())
    print(report(counts, results))
    assert dict(counts) == ALL_COUNTS, f"onnx {onnx.__version__}: {report(counts, results)}"
