"""The op registry (alexc.ops): every op has every column, and each op's plain-NumPy reference
is the oracle twice over: the runtime kernel must match it, and it must match onnxruntime on
the op's own ONNX export (an independent implementation of the same spec)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from alexc_runtime import geometry
from alexc_runtime.kernels import KERNELS, KernelContext

from alexc.errors import GraphError
from alexc.ir import Input, Node, Op
from alexc.ir.graph import build_graph
from alexc.ops import REGISTRY, OpDef, ShapeError, check_plan_attrs, normalise_attrs
from alexc.passes.lower import FUSES_RELU, lower
from alexc.serial.frontend import load_graph
from alexc.serial.onnx_export import export_onnx

ROOT = Path(__file__).resolve().parents[2]

# --- every op, every column -----------------------------------------------------------------

_CALLABLE = ("shape", "params", "flops", "export", "torch", "reference")


def missing_columns(registry: dict, kernels: dict) -> list[str]:
    """'<op>: <column>' for every column an op lacks, compiler and runtime side."""
    missing = []
    for op in Op:
        entry = registry.get(op)
        if not isinstance(entry, OpDef):
            missing.append(f"{op.value}: registry entry")
            continue
        missing += [f"{op.value}: {c}" for c in _CALLABLE if not callable(getattr(entry, c))]
        if not isinstance(entry.attrs, dict) or not isinstance(entry.arity, tuple):
            missing.append(f"{op.value}: attrs/arity")
        # A loss is what training minimises: inference models hold none, so none is imported.
        if not entry.onnx_import and not entry.loss:
            missing.append(f"{op.value}: onnx_import")
        missing += [
            f"{op.value}: onnx_import[{t}]"
            for t, c in entry.onnx_import.items()
            if not (callable(c.convert) and c.versions)
        ]
        if op.value not in kernels:
            missing.append(f"{op.value}: runtime KERNELS entry")
    return missing


def test_every_op_has_every_column():
    assert missing_columns(REGISTRY, KERNELS) == []


@pytest.mark.parametrize(
    "broken",
    [
        lambda r, k: r.pop(Op.LRN),
        lambda r, k: r.__setitem__(Op.CONV, dataclasses.replace(r[Op.CONV], torch=None)),
        lambda r, k: r.__setitem__(Op.RELU, dataclasses.replace(r[Op.RELU], onnx_import={})),
        lambda r, k: r.__setitem__(Op.ADD, dataclasses.replace(r[Op.ADD], reference=None)),
        lambda r, k: k.pop("maxpool"),
    ],
)
def test_a_missing_column_is_reported(broken):
    registry, kernels = dict(REGISTRY), dict(KERNELS)
    broken(registry, kernels)
    assert len(missing_columns(registry, kernels)) == 1


def test_the_fused_relu_is_a_plan_attribute_of_exactly_the_ops_lowering_fuses():
    assert {op.value for op, e in REGISTRY.items() if "relu" in e.plan_attrs} == set(FUSES_RELU)
    attrs = normalise_attrs(Op.CONV, {"filters": 4, "kernel": 3})
    assert check_plan_attrs(Op.CONV, {**attrs, "relu": True})["relu"] is True
    with pytest.raises(ShapeError, match="'relu' must be true or false"):
        check_plan_attrs(Op.CONV, {**attrs, "relu": 1})


def test_every_step_of_a_fused_inference_plan_checks_against_the_schema():
    plan = lower(load_graph(ROOT / "graphs" / "alexnet-mini.yaml"), 2, training=False)
    fused = [s for s in plan.steps if s.attrs.get("relu")]
    assert fused, "lowering fused no relu into the mini AlexNet's plan"
    for step in plan.steps:
        assert check_plan_attrs(Op(step.op), step.attrs) == dict(step.attrs)


def test_a_graph_cannot_set_the_fused_relu():
    node = Node(Op.LINEAR, "fc", ("x",), {"units": 3, "relu": True})
    with pytest.raises(GraphError, match="set by the compiler.*add a relu node"):
        build_graph("g", [Input("x", (4,))], [node], ["fc"])


# --- shared arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_window_out_counts_the_windows_it_can_place(ceil_mode):
    """Against a literal count: windows start at 0, s, 2s...; floor mode keeps those that fit
    in the padded input; ceil mode also the one partial window after the last full one, unless
    it starts in the end padding."""
    for size in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 4):
                for lo, hi in ((0, 0), (1, 0), (0, 2), (1, 1)):
                    if lo >= k or hi >= k or k > size + lo + hi:
                        continue
                    padded = size + lo + hi
                    starts = range(0, padded, s)
                    want = sum(
                        st + k <= padded or (ceil_mode and st - s + k < padded and st < size + lo)
                        for st in starts
                    )
                    assert geometry.window_out(size, k, s, lo, hi, ceil_mode=ceil_mode) == want


def test_adaptive_bins_cover_the_axis_and_lrn_alphas_agree():
    for size in range(1, 10):
        for out in range(1, size + 1):
            bins = geometry.adaptive_bins(size, out)
            assert bins[0][0] == 0 and bins[-1][1] == size
            assert all(a < b and a2 <= b for (a, b), (a2, _) in zip(bins, bins[1:], strict=False))
    assert geometry.lrn_onnx_alpha(1e-4, 5, "paper") == pytest.approx(5e-4)
    assert geometry.lrn_coefficient(5e-4, 5, "onnx") == pytest.approx(1e-4)


# --- the reference as oracle ----------------------------------------------------------------

# (op, attrs, per-sample input shapes): every op at least once; plan attributes allowed.
CASES = [
    (Op.CONV, {"filters": 4, "kernel": 3}, [(3, 7, 6)]),
    (
        Op.CONV,
        {"filters": 6, "kernel": [3, 2], "stride": [2, 1], "pad": [1, 0, 2, 1], "groups": 2},
        [(4, 9, 8)],
    ),
    (Op.CONV, {"filters": 3, "kernel": 3, "dilation": 2, "bias": False}, [(2, 9, 9)]),
    (Op.CONV, {"filters": 5, "kernel": 3, "stride": 2, "pad": 1, "relu": True}, [(3, 8, 8)]),
    (Op.RELU, {}, [(3, 4, 5)]),
    (Op.LRN, {"size": 5, "alpha": 1e-2, "beta": 0.75, "convention": "paper"}, [(7, 3, 3)]),
    (
        Op.LRN,
        {"size": 3, "alpha": 0.1, "beta": 0.6, "bias": 2.0, "convention": "onnx"},
        [(4, 2, 3)],
    ),
    (Op.MAXPOOL, {"kernel": 3, "stride": 2}, [(2, 9, 9)]),
    (Op.MAXPOOL, {"kernel": 3, "stride": 2, "pad": [1, 0, 0, 1], "ceil_mode": True}, [(2, 8, 7)]),
    (Op.AVGPOOL, {"kernel": 2, "stride": 2, "pad": 1}, [(2, 7, 6)]),
    (
        Op.AVGPOOL,
        {"kernel": 3, "stride": 2, "pad": 1, "ceil_mode": True, "count_include_pad": False},
        [(2, 8, 8)],
    ),
    (Op.AVGPOOL, {"kernel": 3, "stride": 2, "pad": 1, "ceil_mode": True}, [(2, 8, 8)]),
    (Op.ADAPTIVE_AVGPOOL, {"output": [3, 2]}, [(2, 7, 5)]),
    (Op.ADAPTIVE_AVGPOOL, {"output": 1}, [(3, 4, 4)]),
    (Op.FLATTEN, {}, [(2, 3, 4)]),
    (Op.FLATTEN, {"axis": 2}, [(2, 3, 4)]),
    (Op.DROPOUT, {"rate": 0.3}, [(5,)]),
    (Op.LINEAR, {"units": 4}, [(6,)]),
    (Op.LINEAR, {"units": 3, "bias": False, "relu": True}, [(5,)]),
    (Op.SOFTMAX, {}, [(6,)]),
    (Op.SOFTMAX, {"axis": 2}, [(3, 4)]),
    (Op.LOG_SOFTMAX, {}, [(6,)]),
    (Op.CONCAT, {}, [(2, 3, 3), (3, 3, 3)]),
    (Op.ADD, {}, [(3, 4), (3, 4)]),
    (Op.SOFTMAX_CROSS_ENTROPY, {}, [(5,)]),
    (Op.SOFTMAX_CROSS_ENTROPY, {"label_smoothing": 0.1}, [(5,)]),
]
BATCH = 3


def _case(op: Op, attrs: dict, shapes: list):
    """(graph attrs, plan attrs, graph, params, data inputs) for one case, seeded by its index."""
    entry = REGISTRY[op]
    graph_attrs = {k: v for k, v in attrs.items() if k not in entry.plan_attrs}
    names = [f"x{i}" for i in range(len(shapes))]
    graph = build_graph(
        "one",
        [Input(n, s) for n, s in zip(names, shapes, strict=True)],
        [Node(op, "y", tuple(names), graph_attrs)],
        ["y"],
    )
    node = graph.nodes[0]
    plan_attrs = check_plan_attrs(op, {**node.attrs, **attrs})
    rng = np.random.default_rng(CASES.index((op, attrs, shapes)))
    xs = [rng.standard_normal((BATCH, *s)).astype(np.float32) for s in shapes]
    if entry.loss:
        xs.append(rng.integers(0, shapes[0][0], BATCH).astype(np.int64))
    params = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in graph.params}
    return graph, plan_attrs, params, xs


@pytest.mark.parametrize(("op", "attrs", "shapes"), CASES)
def test_kernel_matches_the_reference(op, attrs, shapes):
    graph, plan_attrs, params, xs = _case(op, attrs, shapes)
    weights = [params[p.name] for p in graph.params]
    expected = REGISTRY[op].reference(plan_attrs, *xs, *weights)
    y, _ = KERNELS[op.value].forward(KernelContext(grad=False), plan_attrs, *xs, *weights)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    if not REGISTRY[op].loss:
        assert y.shape == (BATCH, *graph.shapes["y"])


@pytest.mark.parametrize(
    ("op", "attrs", "shapes"), [c for c in CASES if not set(c[1]) & set(REGISTRY[c[0]].plan_attrs)]
)
def test_reference_matches_onnxruntime_on_the_export(op, attrs, shapes):
    graph, plan_attrs, params, xs = _case(op, attrs, shapes)
    model = export_onnx(graph, params)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in session.get_inputs()], xs, strict=True))
    (actual,) = session.run(["y"], feeds)
    expected = REGISTRY[op].reference(plan_attrs, *xs, *[params[p.name] for p in graph.params])
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_every_op_has_a_reference_case():
    assert {op for op, _, _ in CASES} == set(Op)
