"""ONNX export, the onnxruntime executor and the cross-check.

One-node models over a grid of attributes run in onnxruntime and must agree with the runtime's
NumPy kernels; whole graphs must agree with the NumPy executor; the file itself must be a valid,
inference-form model; the CLI must fail with one clear line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from alexc_runtime.kernels import KERNELS, KernelContext
from alexc_runtime.ort import OrtPredictor

import alexc
from alexc.check import CheckRow, check, compare
from alexc.errors import AlexcError
from alexc.ir import Input, Node, Op
from alexc.ir.graph import build_graph, with_classes, with_input_shape
from alexc.serial.onnx_export import EXPORT, IR_VERSIONS, export_onnx
from alexc.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"
RTOL = 1e-5


def rel_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max|a - b| / max|b|: errors on the reference's own scale (see alexc.check)."""
    return compare(actual, reference)[1]


def one_node(op: Op, attrs: dict, shape: tuple[int, ...]) -> alexc.Graph:
    return build_graph("one", [Input("x", shape)], [Node(op, "y", ("x",), attrs)], ["y"])


def ort_run(graph: alexc.Graph, params: dict, x: np.ndarray, **kw) -> np.ndarray:
    model = export_onnx(graph, params, **kw)
    return OrtPredictor(model.SerializeToString(), threads=1).predict(x)


def kernel_run(graph: alexc.Graph, params: dict, x: np.ndarray) -> np.ndarray:
    (node,) = graph.nodes
    weights = [params[p.name] for p in graph.params]
    y, _ = KERNELS[node.op.value].forward(KernelContext(), node.attrs, x, *weights)
    return y


def assert_one_node(op: Op, attrs: dict, shape: tuple[int, ...], batch: int = 2, scale=1.0, **kw):
    graph = one_node(op, attrs, shape)
    params = graph.init_params(1)
    x = (np.random.default_rng(0).standard_normal((batch, *shape)) * scale).astype(np.float32)
    expected = kernel_run(graph, params, x)
    actual = ort_run(graph, params, x, **kw)
    assert actual.shape == expected.shape == (batch, *graph.shapes["y"])
    assert rel_error(actual, expected) <= RTOL


def test_every_op_has_an_export_rule():
    missing = [op.value for op in Op if op not in EXPORT]
    assert not missing, (
        f"no ONNX export rule for {missing}; rules exist for {[o.value for o in EXPORT]}"
    )


# --- one-node models against the NumPy kernels --------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"filters": 5, "kernel": 3},
        {"filters": 6, "kernel": [3, 2], "stride": [2, 1], "pad": [1, 0, 2, 1]},
        {"filters": 6, "kernel": 3, "pad": 1, "groups": 2},
        {"filters": 8, "kernel": 3, "stride": 3, "pad": [0, 2, 1, 0], "groups": 4, "bias": False},
        {"filters": 4, "kernel": 3, "dilation": 2, "pad": 2},
        {"filters": 4, "kernel": [2, 3], "dilation": [1, 2], "stride": [1, 2], "groups": 2},
        {"filters": 3, "kernel": 1},
    ],
)
def test_conv(attrs):
    assert_one_node(Op.CONV, attrs, (4, 11, 9))


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": 3, "stride": 2},
        {"kernel": 2, "stride": 2, "ceil_mode": True},
        {"kernel": 3, "stride": 2, "pad": 1, "ceil_mode": True},
        {"kernel": [3, 2], "stride": [2, 1], "pad": [1, 0, 2, 1]},
        {"kernel": 3, "stride": 3, "pad": [2, 1, 0, 2], "ceil_mode": True},
        {"kernel": 2, "stride": 3, "ceil_mode": True},
    ],
)
def test_maxpool(attrs):
    assert_one_node(Op.MAXPOOL, attrs, (3, 12, 11))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": 3, "stride": 2},
        {"kernel": 2, "stride": 2, "ceil_mode": True},
        {"kernel": 3, "stride": 2, "pad": 1},
        {"kernel": 3, "stride": 2, "pad": 1, "ceil_mode": True},
        {"kernel": [3, 2], "stride": [2, 1], "pad": [1, 0, 2, 1]},
        {"kernel": 3, "stride": 3, "pad": [2, 1, 0, 2], "ceil_mode": True},
        {"kernel": 2, "stride": 3, "ceil_mode": True},
    ],
)
def test_avgpool(attrs, count_include_pad):
    assert_one_node(Op.AVGPOOL, {**attrs, "count_include_pad": count_include_pad}, (3, 12, 11))


@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])  # the decomposed form special-cases 0.75, 0.5
@pytest.mark.parametrize("form", ["node", "decomposed"])
@pytest.mark.parametrize("convention", ["paper", "onnx"])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size, convention, form, beta):
    # Large alpha and inputs, so the normalisation changes the values by a lot (not ~1e-4).
    attrs = {"size": size, "alpha": 0.02, "beta": beta, "bias": 2.0, "convention": convention}
    assert_one_node(Op.LRN, attrs, (7, 5, 6), scale=4.0, lrn=form)


def test_lrn_paper_alexnet_settings_both_forms():
    attrs = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0, "convention": "paper"}
    for form in ("node", "decomposed"):
        assert_one_node(Op.LRN, attrs, (16, 6, 6), scale=30.0, lrn=form)


@pytest.mark.parametrize(
    "output, expected_op",
    [
        ((7, 9), "Identity"),
        ((1, 1), "GlobalAveragePool"),
        ((7, 3), "AveragePool"),  # uniform: H identity, W in bins of 3
        ((1, 3), "AveragePool"),
        ((3, 4), "Slice"),  # uneven on both axes
        ((7, 4), "Slice"),  # uneven on W only
        ((2, 9), "Slice"),  # uneven on H only
        ((6, 5), "Slice"),
    ],
)
def test_adaptive_avgpool(output, expected_op):
    attrs = {"output": list(output)}
    assert_one_node(Op.ADAPTIVE_AVGPOOL, attrs, (3, 7, 9))
    model = export_onnx(one_node(Op.ADAPTIVE_AVGPOOL, attrs, (3, 7, 9)), {})
    assert expected_op in {n.op_type for n in model.graph.node}


def test_adaptive_avgpool_torchvision_at_227():
    # torchvision's AdaptiveAvgPool2d(6) after pool5 at 227 px sees 6x6; at 256 px, 7x7: uneven.
    assert_one_node(Op.ADAPTIVE_AVGPOOL, {"output": 6}, (8, 7, 7))
    assert_one_node(Op.ADAPTIVE_AVGPOOL, {"output": 6}, (8, 13, 13))


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    assert_one_node(Op.LINEAR, {"units": 7, "bias": bias}, (13,), batch=3)


def test_relu_and_flatten():
    assert_one_node(Op.RELU, {}, (3, 4, 5))
    assert_one_node(Op.FLATTEN, {"axis": 1}, (3, 4, 5))


@pytest.mark.parametrize("axis", [2, 3, 4])
def test_flatten_inner_axis_keeps_the_batch(axis):
    # alexc's axis counts the batch and keeps the leading per-sample dims (alexc.ops), where
    # ONNX's own Flatten would merge the batch: exported as a Reshape.
    graph = one_node(Op.FLATTEN, {"axis": axis}, (3, 4, 5))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    actual = ort_run(graph, {}, x)
    np.testing.assert_array_equal(actual, x.reshape(2, *graph.shapes["y"]))
    np.testing.assert_array_equal(actual, kernel_run(graph, {}, x))


@pytest.mark.parametrize(
    "axis, shape", [(1, (10,)), (1, (3, 4, 5)), (2, (3, 4, 5)), (3, (3, 4, 5))]
)
@pytest.mark.parametrize("op", [Op.SOFTMAX, Op.LOG_SOFTMAX])
def test_softmax(op, axis, shape):
    assert_one_node(op, {"axis": axis}, shape, scale=3.0)


def test_dropout_output_is_its_input():
    graph = one_node(Op.DROPOUT, {"rate": 0.5}, (3, 4))
    model = export_onnx(graph, {})
    assert "Dropout" not in {n.op_type for n in model.graph.node}
    assert [o.name for o in model.graph.output] == ["y"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(graph, {}, x), x)


DAG = """
name: dag
input: {name: image, shape: [3, 10, 10]}
nodes:
  - {name: left, op: conv, filters: 4, kernel: 3, pad: 1, inputs: [image]}
  - {name: right, op: conv, filters: 4, kernel: 1, inputs: [image]}
  - {name: sum, op: add, inputs: [left, right]}
  - {name: joined, op: concat, axis: AXIS, inputs: [sum, left, right]}
  - {name: relu, op: relu}
  - {name: drop, op: dropout}
  - {name: flat, op: flatten}
  - {name: probs, op: softmax}
outputs: [probs, drop, sum]
"""


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_concat_and_add_dag(axis):
    graph = alexc.parse_graph(DAG.replace("AXIS", str(axis)))
    params = graph.init_params(0)
    x = np.random.default_rng(0).standard_normal((3, 3, 10, 10)).astype(np.float32)
    weights = {
        n: [params[p.name] for p in graph.params if p.name.startswith(n + ".")]
        for n in ("left", "right")
    }
    ctx = KernelContext()
    left, _ = KERNELS["conv"].forward(ctx, graph.node("left").attrs, x, *weights["left"])
    right, _ = KERNELS["conv"].forward(ctx, graph.node("right").attrs, x, *weights["right"])
    total, _ = KERNELS["add"].forward(ctx, {}, left, right)
    joined, _ = KERNELS["concat"].forward(ctx, graph.node("joined").attrs, total, left, right)
    relu, _ = KERNELS["relu"].forward(ctx, {}, joined)
    probs, _ = KERNELS["softmax"].forward(ctx, {"axis": 1}, relu.reshape(3, -1))

    model = export_onnx(graph, params)
    assert [o.name for o in model.graph.output] == ["probs", "drop", "sum"]
    outs = OrtPredictor(model.SerializeToString(), threads=1).run(x)
    for actual, expected in zip(outs, (probs, relu, total), strict=True):
        assert rel_error(actual, expected) <= RTOL
    # the cross-check compares every output, the dropout one included (by its input's name)
    rows = check(graph, params, batch_sizes=(2,), threads=1)
    assert [r.output for r in rows] == ["probs", "drop", "sum"] and all(r.ok for r in rows)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(label_smoothing):
    graph = one_node(Op.SOFTMAX_CROSS_ENTROPY, {"label_smoothing": label_smoothing}, (6,))
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    labels = np.array([0, 5, 2, 2], dtype=np.int64)
    expected, _ = KERNELS["softmax_cross_entropy"].forward(
        KernelContext(), graph.node("y").attrs, logits, labels
    )
    model = export_onnx(graph, {})
    assert [i.name for i in model.graph.input] == ["x", "labels"]
    session = OrtPredictor(model.SerializeToString(), threads=1).session
    (actual,) = session.run(None, {"x": logits, "labels": labels})
    assert actual.shape == ()
    assert rel_error(actual, expected) <= RTOL


# --- whole graphs against the NumPy executor ----------------------------------------------


def assert_graph_agrees(name: str, lrn: str = "node", batch_sizes=(1, 5)):
    graph = alexc.load_graph(GRAPHS / name)
    rows = check(graph, graph.init_params(0), batch_sizes=batch_sizes, threads=2, lrn=lrn)
    assert [r.batch_size for r in rows] == list(batch_sizes)
    for r in rows:
        assert r.ok, f"{name} ({lrn}): {r}"


@pytest.mark.parametrize("lrn", ["node", "decomposed"])
def test_mini_alexnet_agrees_with_numpy_executor(lrn):
    assert_graph_agrees("alexnet-mini.yaml", lrn)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, lrn",
    [
        ("alexnet.yaml", "node"),
        ("alexnet.yaml", "decomposed"),
        ("alexnet-torchvision.yaml", "node"),
    ],
)
def test_full_alexnets_agree_with_numpy_executor(name, lrn):
    assert_graph_agrees(name, lrn)


@pytest.mark.slow
def test_torchvision_alexnet_at_256_px_uneven_adaptive_pool():
    # pool5 is 7x7 at 256 px: AdaptiveAvgPool2d(6) has overlapping, uneven bins.
    graph = with_input_shape(alexc.load_graph(GRAPHS / "alexnet-torchvision.yaml"), (3, 256, 256))
    assert graph.shapes["pool5"] == (256, 7, 7)
    for r in check(graph, graph.init_params(0), batch_sizes=(2,)):
        assert r.ok, r


@pytest.mark.slow
def test_paper_alexnet_file(tmp_path):
    graph = alexc.load_graph(GRAPHS / "alexnet.yaml")
    path = tmp_path / "alexnet.onnx"
    export_onnx(graph, graph.init_params(0), path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert sum(int(np.prod(i.dims)) for i in model.graph.initializer) == 60_965_224
    assert [i.name for i in model.graph.initializer] == [p.name for p in graph.params]
    assert "Dropout" not in {n.op_type for n in model.graph.node}
    lrns = [n for n in model.graph.node if n.op_type == "LRN"]
    assert [n.name for n in lrns] == ["norm1", "norm2"]
    for n in lrns:
        alpha = onnx.helper.get_node_attr_value(n, "alpha")
        assert alpha == pytest.approx(5e-4)  # the paper's 1e-4 in its convention, times size 5


def test_every_graph_file_is_covered():
    covered = {"alexnet-mini.yaml", "alexnet.yaml", "alexnet-torchvision.yaml"}
    assert {p.name for p in GRAPHS.glob("*.yaml")} <= covered


# --- the file itself ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini():
    graph = alexc.load_graph(GRAPHS / "alexnet-mini.yaml")
    return graph, graph.init_params(0)


@pytest.fixture(scope="module")
def mini_model(mini, tmp_path_factory):
    graph, params = mini
    path = tmp_path_factory.mktemp("onnx") / "mini.onnx"
    export_onnx(graph, params, path)
    return onnx.load(str(path))


def test_file_passes_the_full_checker_at_a_pinned_opset(mini_model):
    onnx.checker.check_model(mini_model, full_check=True)
    assert [(o.domain, o.version) for o in mini_model.opset_import] == [("", 17)]
    assert mini_model.ir_version == 8
    assert mini_model.producer_name == "alexc"
    assert mini_model.doc_string


def test_batch_dimension_is_symbolic(mini_model):
    for value in [*mini_model.graph.input, *mini_model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "N" and not dims[0].HasField("dim_value")
    (image,) = mini_model.graph.input
    assert [d.dim_value for d in image.type.tensor_type.shape.dim[1:]] == [1, 28, 28]


def test_inference_form_has_no_dropout_and_named_initializers(mini, mini_model):
    graph, _ = mini
    ops = {n.op_type for n in mini_model.graph.node}
    assert "Dropout" not in ops
    assert {"Conv", "Gemm", "LRN", "MaxPool", "Flatten", "Relu"} <= ops
    assert [i.name for i in mini_model.graph.initializer] == [p.name for p in graph.params]
    gemms = [n for n in mini_model.graph.node if n.op_type == "Gemm"]
    assert all(onnx.helper.get_node_attr_value(n, "transB") == 1 for n in gemms)


def test_lrn_alpha_is_converted_to_onnx_convention(mini_model):
    lrns = [n for n in mini_model.graph.node if n.op_type == "LRN"]
    assert len(lrns) == 2
    for n in lrns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["size"] == 5
        assert attrs["alpha"] == pytest.approx(5e-4)  # the paper's 1e-4 times size 5
        assert attrs["beta"] == pytest.approx(0.75) and attrs["bias"] == pytest.approx(2.0)


def test_metadata(mini, mini_model):
    graph, _ = mini
    meta = {p.key: p.value for p in mini_model.metadata_props}
    assert json.loads(meta["classes"]) == list(graph.classes)
    assert json.loads(meta["input_shape"]) == [1, 28, 28]
    assert json.loads(meta["mean"]) == [0.286] and json.loads(meta["std"]) == [0.353]
    assert meta["graph"] == "alexnet-mini"
    assert meta["alexc_version"]


def test_metadata_defaults_and_explicit_classes():
    graph = one_node(Op.LINEAR, {"units": 3}, (4,))
    params = graph.init_params(0)
    meta = {p.key: p.value for p in export_onnx(graph, params).metadata_props}
    assert "classes" not in meta
    assert json.loads(meta["mean"]) == [0.0] * 4 and json.loads(meta["std"]) == [1.0] * 4
    model = export_onnx(graph, params, classes=["a", "b", "c"])
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == ["a", "b", "c"]
    with pytest.raises(AlexcError, match="2 class names"):
        export_onnx(graph, params, classes=["a", "b"])
    relu = [Node(Op.RELU, "y", ("x",))]
    scalar = build_graph("s", [Input("x", (2, 3, 3))], relu, data={"mean": 0.5, "std": [2, 4]})
    meta = {p.key: p.value for p in export_onnx(scalar, {}).metadata_props}
    assert json.loads(meta["mean"]) == [0.5, 0.5] and json.loads(meta["std"]) == [2.0, 4.0]


@pytest.mark.parametrize("opset", sorted(IR_VERSIONS))
def test_supported_opsets_load_in_onnxruntime(mini, opset):
    graph, params = mini
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    expected = ort_run(graph, params, x)
    for lrn in ("node", "decomposed"):
        model = export_onnx(graph, params, opset=opset, lrn=lrn)
        assert model.ir_version == IR_VERSIONS[opset]
        actual = OrtPredictor(model.SerializeToString(), threads=1).predict(x)
        assert rel_error(actual, expected) <= RTOL


def test_uneven_adaptive_pool_exports_at_every_opset():
    # ReduceMean takes its axes as an attribute up to opset 17 and as an input from 18 on.
    graph = one_node(Op.ADAPTIVE_AVGPOOL, {"output": [3, 4]}, (2, 7, 9))
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 9)).astype(np.float32)
    expected = kernel_run(graph, {}, x)
    for opset in sorted(IR_VERSIONS):
        assert rel_error(ort_run(graph, {}, x, opset=opset), expected) <= RTOL


def test_refuses_unsupported_opsets_and_lrn_forms(mini):
    graph, params = mini
    for opset in (13, 16, 22, 28):
        with pytest.raises(AlexcError, match=f"opset {opset} is not supported"):
            export_onnx(graph, params, opset=opset)
    with pytest.raises(AlexcError, match="lrn must be one of"):
        export_onnx(graph, params, lrn="fused")


def test_refuses_even_lrn_size():
    # The graph builder refuses even sizes; the exporter guards on its own all the same.
    graph = one_node(
        Op.LRN, {"size": 3, "alpha": 1e-4, "beta": 0.75, "convention": "paper"}, (4, 3, 3)
    )
    (node,) = graph.nodes
    even = replace(graph, nodes=(replace(node, attrs={**node.attrs, "size": 4}),))
    with pytest.raises(AlexcError, match="size 4 is even"):
        export_onnx(even, {})


def test_missing_or_misshaped_params_are_named(mini):
    graph, params = mini
    with pytest.raises(AlexcError, match="fc8.bias"):
        export_onnx(graph, {k: v for k, v in params.items() if k != "fc8.bias"})
    with pytest.raises(AlexcError, match=r"conv1.weight.*\[32, 1, 5, 5\]"):
        export_onnx(graph, {**params, "conv1.weight": np.zeros((32, 1, 3, 3), np.float32)})


def test_unwritable_path(mini, tmp_path):
    graph, params = mini
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AlexcError, match="is not a folder"):
        export_onnx(graph, params, blocker / "model.onnx")
    assert not list(tmp_path.glob(".model.onnx*"))


# --- the onnxruntime predictor and the cross-check ----------------------------------------


def test_ort_predictor_accepts_bytes_and_paths(mini, tmp_path):
    graph, params = mini
    path = tmp_path / "m.onnx"
    model = export_onnx(graph, params, path)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    results = [
        OrtPredictor(source, threads=2).predict(x)
        for source in (model.SerializeToString(), str(path), path)
    ]
    predictor = OrtPredictor(path, threads=1)
    assert predictor.name == "onnxruntime" and predictor.input_name == "image"
    assert results[0].shape == (3, 10)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # float64 input is converted, not refused
    np.testing.assert_allclose(
        predictor.predict(x.astype(np.float64)), results[0], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(FileNotFoundError):
        OrtPredictor(tmp_path / "missing.onnx", threads=1)


def test_compare_uses_the_reference_scale():
    reference = np.array([1e-9, 10.0, -4.0], np.float32)
    actual = reference + np.array([1e-6, 0, 0], np.float32)  # huge elementwise, tiny on scale
    max_abs, max_rel = compare(actual, reference)
    assert max_abs == pytest.approx(1e-6, rel=1e-3) and max_rel == pytest.approx(1e-7, rel=1e-3)
    assert compare(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert compare(np.ones(3), np.zeros(3))[1] == float("inf")
    assert not CheckRow(1, "y", (1,), 1.0, 2e-5, 1e-5).ok


def test_check_refuses_graphs_with_a_loss():
    graph = one_node(Op.SOFTMAX_CROSS_ENTROPY, {}, (6,))
    with pytest.raises(AlexcError, match="outputs a loss"):
        check(graph, {})


# --- the command line ---------------------------------------------------------------------


def alexc_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'runtime'}", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "alexc", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def mini_weights(tmp_path_factory, mini):
    graph, params = mini
    path = tmp_path_factory.mktemp("weights") / "mini.safetensors"
    save_checkpoint(path, params, meta={"classes": list(graph.classes)})
    return path


def test_cli_export_writes_a_model(tmp_path, mini_weights):
    out = tmp_path / "sub" / "mini.onnx"
    result = alexc_cli(
        "export",
        GRAPHS / "alexnet-mini.yaml",
        "--onnx",
        out,
        "--weights",
        mini_weights,
        "--lrn",
        "decomposed",
        "--opset",
        "19",
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "opset 19" in result.stdout
    assert f"{alexc.load_graph(GRAPHS / 'alexnet-mini.yaml').num_params:,}" in result.stdout
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 19
    assert "LRN" not in {n.op_type for n in model.graph.node}


def test_cli_export_checkpoint_trained_on_other_classes(tmp_path, mini):
    graph, _ = mini
    three = with_classes(graph, 3, ["cat", "dog", "bird"])
    path = tmp_path / "three.safetensors"
    save_checkpoint(path, three.init_params(0), meta={"classes": ["cat", "dog", "bird"]})
    out = tmp_path / "three.onnx"
    result = alexc_cli("export", GRAPHS / "alexnet-mini.yaml", "--onnx", out, "--weights", path)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog", "bird"]
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_cli_export_missing_weights(tmp_path):
    missing = tmp_path / "nope.safetensors"
    result = alexc_cli(
        "export", GRAPHS / "alexnet-mini.yaml", "--onnx", tmp_path / "m.onnx", "--weights", missing
    )
    assert_one_line_error(result, str(missing), "no such weights file")


def test_cli_export_weights_of_another_graph(tmp_path, mini_weights):
    result = alexc_cli(
        "export", GRAPHS / "alexnet.yaml", "--onnx", tmp_path / "m.onnx", "--weights", mini_weights
    )
    assert_one_line_error(result, "conv1.weight", "[96, 3, 11, 11]")
    graph = alexc.load_graph(GRAPHS / "alexnet-mini.yaml")
    partial = {k: v for k, v in graph.init_params(0).items() if k != "fc7.weight"}
    path = tmp_path / "partial.safetensors"
    save_checkpoint(path, partial)
    result = alexc_cli(
        "export", GRAPHS / "alexnet-mini.yaml", "--onnx", tmp_path / "m.onnx", "--weights", path
    )
    assert_one_line_error(result, "fc7.weight")


def test_cli_export_unwritable_output(tmp_path):
    blocker = tmp_path / "regular-file"
    blocker.write_text("")
    result = alexc_cli("export", GRAPHS / "alexnet-mini.yaml", "--onnx", blocker / "m.onnx")
    assert_one_line_error(result, str(blocker / "m.onnx"), "not a folder")


def test_cli_export_bad_opset(tmp_path):
    result = alexc_cli(
        "export", GRAPHS / "alexnet-mini.yaml", "--onnx", tmp_path / "m.onnx", "--opset", "9"
    )
    assert_one_line_error(result, "opset 9")


def test_cli_check_passes_and_fails_on_tolerance():
    result = alexc_cli("check", GRAPHS / "alexnet-mini.yaml", "-b", "1", "-b", "3")
    assert result.returncode == 0, result.stderr
    assert "fc8" in result.stdout and "ok" in result.stdout
    result = alexc_cli("check", GRAPHS / "alexnet-mini.yaml", "-b", "2", "--rtol", "0")
    assert_one_line_error(result, "exceed rtol 0")


def test_cli_check_of_a_file_onnxruntime_cannot_load(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    result = alexc_cli("check", GRAPHS / "alexnet-mini.yaml", "--onnx", garbage)
    assert_one_line_error(result, str(garbage), "onnxruntime cannot load it")
