"""ONNX import: round trips, torch- and Caffe-style models against onnxruntime, the bvlc_alexnet
skeleton shipped with onnx, refusals, untrusted files, the graph-file writer and the CLI.

Models are built with onnx.helper; onnxruntime running the original model is the oracle.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import alexc
from alexc.errors import AlexcError
from alexc.serial.graph_yaml import graph_to_yaml, write_graph
from alexc.serial.onnx_export import export_onnx
from alexc.serial.onnx_import import (
    SUPPORTED_OPS,
    UnsupportedModel,
    convert_onnx,
    import_onnx,
)

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
RTOL = 1e-4


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})


def alexc_output(graph: alexc.Graph, params: dict, x: np.ndarray) -> np.ndarray:
    return alexc.compile(graph, x.shape[0]).forward(params, x)


def rel_error(actual: np.ndarray, reference: np.ndarray) -> float:
    assert actual.shape == reference.shape
    return float(np.max(np.abs(actual - reference)) / max(np.max(np.abs(reference)), 1e-30))


def batch(shape, n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def same_graph(a: alexc.Graph, b: alexc.Graph) -> bool:
    """Equal in everything but where each was read from."""
    return replace(a, source=None, lines={}) == replace(b, source=None, lines={})


class Builder:
    """Small ONNX models: nodes, seeded float32 initializers, one NCHW input and output."""

    def __init__(self, seed=0):
        self.nodes, self.inits = [], []
        self.rng = np.random.default_rng(seed)

    def init(self, name, *shape, scale=0.1, dtype=np.float32):
        value = (self.rng.standard_normal(shape) * scale).astype(dtype)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"/{output}/{op}", **attrs))
        return output

    def model(self, opset, input_shape, output, out_shape=None, name="model", check=True):
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            initializer=self.inits,
        )
        opsets = [helper.make_opsetid("", opset)]
        # IR 4 is the oldest that lets initializers stay out of the graph inputs.
        ir = max(4, helper.find_min_ir_version_for(opsets))
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir)
        if check and out_shape is not None:
            onnx.checker.check_model(model, full_check=True)
        return model


def assert_matches_ort(model: onnx.ModelProto, x: np.ndarray, rtol=RTOL):
    graph, params = import_onnx(model)
    actual = alexc_output(graph, params, x)
    (expected,) = ort_outputs(model, x)[:1]
    assert rel_error(actual, expected) <= rtol
    return graph, params


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(GRAPHS.glob("*.yaml")), ids=lambda p: p.stem)
def test_graph_files_survive_yaml_writing(path):
    graph = alexc.load_graph(path)
    again = alexc.parse_graph(graph_to_yaml(graph))
    assert same_graph(again, graph)  # params (names, shapes, init specs) included


def test_yaml_writer_quotes_what_yaml_would_misread():
    from alexc.ir.graph import build_graph

    names = ["1", "yes", "null", "a: b", "#x", "[y]", "'q'", "- d", "0x10", "~", " sp", "ü"]
    previous = ["in put", *names[:-1]]
    nodes = [alexc.Node(alexc.Op.RELU, n, (p,)) for p, n in zip(previous, names, strict=True)]
    nodes.append(alexc.Node(alexc.Op.LINEAR, "fc", (names[-1],), {"units": 2},
                            {"weight": {"constant": 1e-05}}))  # fmt: skip
    graph = build_graph(
        "name: x", [alexc.Input("in put", (5,))], nodes, ["fc", "yes"],
        classes=["a", "no"], train={"lr": 1e-5}, data={"mean": [0.5]},
    )  # fmt: skip
    assert same_graph(alexc.parse_graph(graph_to_yaml(graph, comment="a\nb")), graph)


def round_trip(name: str, n: int = 2):
    graph = alexc.load_graph(GRAPHS / f"{name}.yaml")
    params = graph.init_params(1)
    first = export_onnx(graph, params)
    imported = convert_onnx(first)
    second = export_onnx(imported.graph, imported.params)
    x = batch(graph.input.shape, n)
    reference = alexc_output(graph, params, x)
    assert rel_error(alexc_output(imported.graph, imported.params, x), reference) <= 1e-5
    assert rel_error(ort_outputs(second, x)[0], ort_outputs(first, x)[0]) <= 1e-6
    names = [t.name for t in first.graph.initializer]
    assert [t.name for t in second.graph.initializer] == names
    assert imported.outputs == {o: o for o in graph.outputs}
    for t in second.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), params[t.name])
    return graph, imported


def test_round_trip_alexnet_mini():
    graph, imported = round_trip("alexnet-mini", n=3)
    assert [n.name for n in imported.graph.nodes] == [
        n.name for n in graph.nodes if n.op is not alexc.Op.DROPOUT
    ]
    assert imported.graph.classes == graph.classes
    assert imported.graph.data == {"mean": graph.data["mean"], "std": graph.data["std"]}
    again = alexc.parse_graph(graph_to_yaml(imported.graph))
    assert same_graph(again, imported.graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "alexnet-torchvision"])
def test_round_trip_full_size(name):
    round_trip(name, n=1)


# --- torch-style and Caffe-style models ------------------------------------------------------


def torch_style(opset: int, flatten: str) -> onnx.ModelProto:
    """What torch.onnx exports for a small AlexNet-like net: Conv with bias, Relu, MaxPool,
    Flatten or Reshape to (N, -1), Gemm with transB=1, names like features.0.weight."""
    b = Builder()
    x = b.node("Conv", ["input", b.init("features.0.weight", 8, 3, 3, 3),
                        b.init("features.0.bias", 8)], "conv0",
               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # fmt: skip
    x = b.node("Relu", [x], "relu1")
    x = b.node("MaxPool", [x], "pool2", kernel_shape=[3, 3], strides=[2, 2])
    x = b.node("Conv", [x, b.init("features.3.weight", 16, 8, 3, 3),
                        b.init("features.3.bias", 16)], "conv3", kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])  # fmt: skip
    x = b.node("Relu", [x], "relu4")
    x = b.node("AveragePool", [x], "avgpool", kernel_shape=[1, 1])
    if flatten == "flatten":
        x = b.node("Flatten", [x], "flat", axis=1)
    else:
        shape = b.const("shape", np.array([0, -1] if flatten == "0,-1" else [-1, 16 * 4 * 4]))
        x = b.node("Reshape", [x, shape], "flat")
    x = b.node("Gemm", [x, b.init("classifier.1.weight", 32, 256),
                        b.init("classifier.1.bias", 32)], "fc1", transB=1)  # fmt: skip
    x = b.node("Relu", [x], "relu2")
    x = b.node("Gemm", [x, b.init("classifier.4.weight", 10, 32),
                        b.init("classifier.4.bias", 10)], "output", transB=1)  # fmt: skip
    return b.model(opset, ["batch", 3, 17, 17], x, ["batch", 10])


@pytest.mark.parametrize("opset", [9, 13, 17, 21, 25])
@pytest.mark.parametrize("flatten", ["flatten", "0,-1", "-1,256"])
def test_torch_style_model(opset, flatten):
    model = torch_style(opset, flatten)
    graph, params = assert_matches_ort(model, batch((3, 17, 17), 3))
    assert {"features.0.weight", "features.3.bias", "classifier.4.weight"} <= params.keys()
    assert [n.op for n in graph.nodes][-4:] == [
        alexc.Op.FLATTEN, alexc.Op.LINEAR, alexc.Op.RELU, alexc.Op.LINEAR
    ]  # fmt: skip


def caffe_style(opset: int) -> onnx.ModelProto:
    """A Caffe2-converted AlexNet in miniature (like the zoo's bvlc_alexnet): LRN, two-tower
    convs (group=2), ceil-mode pooling spelt as asymmetric pads, biases added by separate Add
    nodes in places, dropout kept, softmax at the end."""
    b = Builder(1)
    x = b.node("Conv", ["input", b.init("conv1_w_0", 8, 3, 5, 5), b.init("conv1_b_0", 8)],
               "conv1_1", kernel_shape=[5, 5], strides=[2, 2])  # fmt: skip
    x = b.node("Relu", [x], "conv1_2")
    x = b.node("LRN", [x], "norm1_1", size=5, alpha=1e-4, beta=0.75, bias=1.0)
    x = b.node("MaxPool", [x], "pool1_1", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    x = b.node("Conv", [x, b.init("conv2_w_0", 16, 4, 3, 3)], "conv2_0", kernel_shape=[3, 3],
               pads=[1, 1, 1, 1], group=2)  # fmt: skip
    x = b.node("Add", [x, b.init("conv2_b_0", 16, 1, 1)], "conv2_1")  # a per-channel bias
    x = b.node("Relu", [x], "conv2_2")
    x = b.node("LRN", [x], "norm2_1", size=3, alpha=2e-4, beta=0.5, bias=2.0)
    x = b.node("Conv", [x, b.init("conv3_w_0", 16, 8, 3, 3), b.init("conv3_b_0", 16)],
               "conv3_1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)  # fmt: skip
    x = b.node("Relu", [x], "conv3_2")
    x = b.node("MaxPool", [x], "pool3_1", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    x = b.node("Reshape", [x, b.const("shape", np.array([1, 64]))], "pool3_flat")
    x = b.node("Gemm", [x, b.init("fc6_w_0", 24, 64), b.init("fc6_b_0", 24)], "fc6_1", transB=1)
    x = b.node("Relu", [x], "fc6_2")
    x = b.node("Dropout", [x], "fc6_3", ratio=0.5)
    x = b.node("Gemm", [x, b.init("fc7_w_0", 10, 24), b.init("fc7_b_0", 10)], "fc7_1", transB=1)
    x = b.node("Softmax", [x], "prob")
    return b.model(opset, [1, 3, 23, 23], x, [1, 10])


@pytest.mark.parametrize("opset", [7, 11])
def test_caffe_style_model(opset):
    model = caffe_style(opset)
    graph, params = assert_matches_ort(model, batch((3, 23, 23), 1), rtol=1e-5)
    conv2 = graph.node("conv2")  # named after its weight conv2_w_0
    assert conv2.attrs["bias"] and conv2.attrs["groups"] == 2  # the Add became its bias
    assert graph.node("pool1_1/MaxPool").attrs["pad"] == (0, 0, 1, 1)
    assert graph.node("fc6_3/Dropout").attrs["rate"] == 0.5
    assert set(params) >= {"conv1.weight", "conv2.bias", "fc7.bias"}
    # The literal batch 1 of the traced Reshape became a batch-generic flatten.
    many = batch((3, 23, 23), 4)
    expected = np.concatenate([ort_outputs(model, many[i : i + 1])[0] for i in range(4)])
    assert rel_error(alexc_output(graph, params, many), expected) <= 1e-5


def test_gemm_and_matmul_forms_fold_into_linear():
    """Gemm with transB=0, alpha and beta, and MatMul + Add, become linear layers."""
    b = Builder(2)
    x = b.node("Flatten", ["input"], "flat")
    x = b.node("Gemm", [x, b.init("B", 12, 7), b.init("C", 1, 7)], "g1", alpha=0.5, beta=-2.0)
    x = b.node("MatMul", [x, b.init("W", 7, 5)], "mm")
    x = b.node("Add", [b.init("bias", 5), x], "out")
    graph, params = assert_matches_ort(b.model(13, ["N", 3, 2, 2], x), batch((3, 2, 2), 3))
    assert [n.op for n in graph.nodes] == [alexc.Op.FLATTEN, alexc.Op.LINEAR, alexc.Op.LINEAR]
    assert params["mm/MatMul.weight"].shape == (5, 7)
    assert params["mm/MatMul.bias"].shape == (5,)  # the Add became its bias


def test_pools_auto_pad_ceil_and_global():
    b = Builder(3)
    x = b.node("MaxPool", ["input"], "p1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = b.node("AveragePool", [x], "p2", kernel_shape=[3, 2], strides=[2, 1],
               auto_pad="SAME_LOWER")  # fmt: skip
    x = b.node("AveragePool", [x], "p3", kernel_shape=[2, 2], pads=[1, 0, 1, 1],
               count_include_pad=1)  # fmt: skip
    x = b.node("Conv", [x, b.init("w", 4, 3, 3, 3)], "c", kernel_shape=[3, 3],
               auto_pad="SAME_UPPER", strides=[2, 2])  # fmt: skip
    x = b.node("Conv", [x, b.init("v", 4, 4, 2, 2)], "d", pads=[0, 1, 1, 0], dilations=[1, 2])
    x = b.node("GlobalAveragePool", [x], "gap")
    assert_matches_ort(b.model(13, ["N", 3, 14, 13], x), batch((3, 14, 13), 2))


def test_concat_and_add_of_two_branches():
    b = Builder(4)
    left = b.node("Conv", ["input", b.init("l.weight", 4, 3, 1, 1)], "left", kernel_shape=[1, 1])
    right = b.node("Conv", ["input", b.init("r.weight", 4, 3, 1, 1)], "right")
    both = b.node("Concat", [left, right], "both", axis=-3)
    twice = b.node("Add", [both, both], "twice")
    graph, _ = assert_matches_ort(b.model(13, ["N", 3, 5, 5], twice), batch((3, 5, 5)))
    assert [n.op for n in graph.nodes][-2:] == [alexc.Op.CONCAT, alexc.Op.ADD]


def test_log_softmax():
    b = Builder()
    x = b.node("Flatten", ["input"], "flat")
    model = b.model(13, ["N", 2, 3], b.node("LogSoftmax", [x], "out"))
    graph, _ = assert_matches_ort(model, batch((2, 3)))
    assert [n.op for n in graph.nodes] == [alexc.Op.FLATTEN, alexc.Op.LOG_SOFTMAX]


# --- onnx's bvlc_alexnet skeleton --------------------------------------------------------------


def test_bvlc_alexnet_skeleton_imports():
    """The skeleton's weights are ConstantOfShape nodes (0.02 everywhere), folded at import;
    given each its own value here, every one lands in its own parameter."""
    model = onnx.load(str(LIGHT / "light_bvlc_alexnet.onnx"))
    expected = {}
    constants = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    for k, node in enumerate(constants):
        (value,) = node.attribute
        assert numpy_helper.to_array(value.t).tolist() == [np.float32(0.02)]
        value.t.CopyFrom(numpy_helper.from_array(np.array([k + 1], np.float32) / 1000))
        layer, kind, _ = node.output[0].rsplit("_", 2)  # conv1_w_0
        expected[f"{layer}.{ {'w': 'weight', 'b': 'bias'}[kind] }"] = np.float32(k + 1) / 1000
    imported = convert_onnx(model)
    graph = imported.graph
    assert graph.input.shape == (3, 224, 224)
    assert graph.num_params == 60_965_224  # the paper's AlexNet
    assert [n.attrs["groups"] for n in graph.nodes if n.op is alexc.Op.CONV] == [1, 2, 1, 2, 2]
    assert graph.node("fc6").attrs == {"units": 4096, "bias": True}
    assert imported.outputs == {"prob_1": graph.outputs[0]}
    assert imported.params.keys() == expected.keys() and len(expected) == 16
    for name, value in expected.items():
        assert np.all(imported.params[name] == value), name


def skeleton_with_weights(seed: int) -> onnx.ModelProto:
    """The skeleton with its ConstantOfShape weights replaced by seeded random initializers."""
    model = onnx.load(str(LIGHT / "light_bvlc_alexnet.onnx"))
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        scale = 0.01 if len(shape) > 1 else 0.1
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.mark.slow
def test_bvlc_alexnet_skeleton_runs_like_onnxruntime(tmp_path):
    """With seeded random weights (the skeleton's constant ones make every class equally
    likely, which any finite forward pass reproduces), from a file, against onnxruntime."""
    path = tmp_path / "bvlc_alexnet.onnx"
    onnx.save(skeleton_with_weights(0), path)
    x = batch((3, 224, 224), 1)  # the skeleton's batch size
    graph, params = import_onnx(path)
    (expected,) = ort_outputs(onnx.load(str(path)), x)
    assert expected.max() > 2 * expected.min() > 0  # the classes' probabilities differ
    assert rel_error(alexc_output(graph, params, x), expected) <= 1e-5


# --- refusals ---------------------------------------------------------------------------------


def one_node(op, attrs=None, inputs=(), shape=("N", 3, 8, 8), opset=13, **kw):
    b = Builder()
    names = [b.init(n, *s) for n, s in inputs]
    b.node(op, ["input", *names], "y", **(attrs or {}))
    return b.model(opset, list(shape), "y", check=False, **kw)


@pytest.mark.parametrize(
    "model, message",
    [
        (one_node("Sigmoid"), "op Sigmoid is not supported; alexc imports Add, AveragePool"),
        (
            one_node("Gemm", {"transA": 1}, [("B", (3, 4))], shape=[3, 5]),
            "transA=1 transposes the batch",
        ),
        (one_node("Flatten", {"axis": 2}), "axis=2 on a rank-4 tensor merges the batch"),
        (one_node("Add", inputs=[("c", (3, 8, 8))]), "folds the constant into the bias"),
        (
            one_node("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}),
            "alexc pools without dilation",
        ),
        (
            one_node("MaxPool", {"kernel_shape": [2, 2], "storage_order": 1}),
            "storage_order=1",
        ),
        (
            one_node("Conv", inputs=[("w", (2, 3, 3))], shape=["N", 3, 8]),
            "works on images",
        ),
        (one_node("Relu", shape=["N", "C", 8, 8]), r"static sizes .*input_shape=\(3, 224"),
        (one_node("Softmax", {"axis": 1}, opset=11), "flatten first or use opset 13"),
        (
            one_node("Reshape", inputs=[], shape=["N", 3, 8, 8]),
            "has no target shape|takes 2",
        ),
        (one_node("LRN", {"size": 4}), "size must be odd|is even"),
    ],
    ids=[
        "unknown-op",
        "transA",
        "flatten-axis",
        "add-const",
        "pool-dilation",
        "storage-order",
        "conv1d",
        "symbolic-shape",
        "softmax-11",
        "reshape-no-shape",
        "lrn-even",
    ],
)
def test_unsupported_models_are_refused_by_name(model, message):
    with pytest.raises(AlexcError, match=message) as e:
        import_onnx(model)
    assert "node '/y/" in str(e.value) or "input 'input'" in str(e.value)


def test_unsupported_op_message_lists_supported_ops():
    with pytest.raises(UnsupportedModel) as e:
        import_onnx(one_node("BatchNormalization", inputs=[(n, (3,)) for n in "sbmv"]))
    assert ", ".join(SUPPORTED_OPS) in str(e.value)


def test_symbolic_input_shape_can_be_given():
    model = one_node("Relu", shape=["N", "C", "H", "W"])
    graph, _ = import_onnx(model, input_shape=(3, 5, 6))
    assert graph.input.shape == (3, 5, 6)
    with pytest.raises(AlexcError, match="does not fit"):
        import_onnx(one_node("Relu", shape=["N", 3, "H", "W"]), input_shape=(4, 5, 6))


def test_dropout_forms():
    b = Builder()
    ratio, train = b.const("ratio", np.float32(0.25)), b.const("train", np.bool_(False))
    b.node("Dropout", ["input", ratio, train], "y")
    graph, _ = import_onnx(b.model(13, ["N", 6], "y"))
    assert graph.node("y/Dropout").attrs["rate"] == 0.25
    b = Builder()
    b.node("Dropout", ["input", b.const("r", np.float32(0.5)), b.const("t", np.bool_(True))], "y")
    with pytest.raises(UnsupportedModel, match="training_mode is true"):
        import_onnx(b.model(13, ["N", 6], "y"))


# --- untrusted files --------------------------------------------------------------------------


def small_model() -> onnx.ModelProto:
    b = Builder()
    b.node("Conv", ["input", b.init("c.weight", 4, 3, 3, 3), b.init("c.bias", 4)], "c")
    b.node("Relu", ["c"], "r")
    b.node("Flatten", ["r"], "f")
    b.node("Gemm", ["f", b.init("fc.weight", 5, 36), b.init("fc.bias", 5)], "y", transB=1)
    return b.model(13, ["N", 3, 5, 5], "y")


def test_truncated_garbage_and_missing_files(tmp_path):
    blob = small_model().SerializeToString()
    cases = {
        "truncated.onnx": blob[: len(blob) // 2],
        "garbage.onnx": np.random.default_rng(0).bytes(4000),
        "empty.onnx": b"",
        "text.onnx": b"name: 'not a model'\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AlexcError, match=name):
            import_onnx(tmp_path / name)
    with pytest.raises(AlexcError, match="no such ONNX file"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(AlexcError, match="not a file"):
        import_onnx(tmp_path)


def test_corrupted_models_never_crash():
    """Seeded random damage to a small model: every outcome is an import or an AlexcError."""
    blob = small_model().SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(blob)
        if rng.integers(3) == 0:
            damaged = damaged[: rng.integers(len(blob))]
        else:
            for i in rng.integers(len(blob), size=rng.integers(1, 6)):
                damaged[i] = rng.integers(256)
        try:
            import_onnx(bytes(damaged))
            outcomes.add("imported")
        except AlexcError as e:
            assert "malformed model (" not in str(e), e  # a check should have caught it first
            outcomes.add("refused")
    assert outcomes == {"imported", "refused"}


def with_external(model: onnx.ModelProto, tmp_path: Path, name: str = "c.weight", **fields):
    """Move tensor `name` to external data; `fields` override location, offset, length."""
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    data = tensor.raw_data
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16 + data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": "weights.bin", "offset": "16", "length": str(len(data)), **fields}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_is_read_from_the_models_folder(tmp_path):
    model = small_model()
    want = numpy_helper.to_array(model.graph.initializer[0])
    _, params = import_onnx(with_external(model, tmp_path))
    assert np.array_equal(params["c.weight"], want)
    params["c.weight"] += 1  # writable: training updates parameters in place
    with pytest.raises(AlexcError, match="base_dir"):
        import_onnx(onnx.load(str(tmp_path / "model.onnx"), load_external_data=False))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"location": "../weights.bin"}, "leaves the model's folder"),
        ({"location": "/etc/passwd"}, "leaves the model's folder"),
        ({"location": "sub/../../x.bin"}, "leaves the model's folder"),
        ({"location": "escape.bin"}, "resolves outside the model's folder"),
        ({"location": "absent.bin"}, "missing or not a file"),
        ({"length": "8"}, "declares 8 bytes"),
        ({"offset": "1000"}, "which has 448 bytes"),
        ({"offset": "-3"}, "negative"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "missing", "length", "short", "neg"],
)
def test_external_data_attacks_are_refused(tmp_path, fields, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0" * 4096)
    os.symlink(tmp_path / "weights.bin", folder / "escape.bin")
    with pytest.raises(AlexcError, match=message):
        import_onnx(with_external(small_model(), folder, **fields))


def test_sizes_are_checked_before_allocating():
    model = small_model()
    conv = model.graph.initializer[0]
    conv.raw_data = conv.raw_data[:16]
    with pytest.raises(AlexcError, match=r"'c.weight': dims \[4, 3, 3, 3\] need 432 bytes but"):
        import_onnx(model)
    model = small_model()
    (fc,) = [t for t in model.graph.initializer if t.name == "fc.weight"]
    (bias,) = [t for t in model.graph.initializer if t.name == "fc.bias"]
    fc.dims[:], bias.dims[:] = [10**7, 36], [10**7]  # claims 1.44 GB, holds 720 bytes
    with pytest.raises(AlexcError, match="need 1440000000 bytes but the file holds 720"):
        import_onnx(model)
    fc.dims[:] = [1 << 40, 1 << 40]
    with pytest.raises(AlexcError, match="absurdly large"):
        import_onnx(model)
    b = Builder()
    shape = b.const("shape", np.array([1 << 40, 1 << 30], np.int64))
    b.nodes.append(helper.make_node("ConstantOfShape", [shape], ["w"]))
    b.node("MatMul", ["input", "w"], "y")
    with pytest.raises(AlexcError, match="absurdly large"):
        import_onnx(b.model(13, ["N", 8], "y"))


def test_weightless_models_import_with_random_weights():
    model = small_model()
    for t in model.graph.initializer:
        t.ClearField("raw_data")
    with pytest.raises(AlexcError, match="weights='random'"):
        import_onnx(model)
    graph, params = import_onnx(model, weights="random", seed=3)
    assert params.keys() == graph.init_params(3).keys()
    assert all(np.array_equal(params[k], v) for k, v in graph.init_params(3).items())


# --- the CLI ----------------------------------------------------------------------------------


def cli():
    from alexc.cli.onnx import import_cmd

    app = typer.Typer()
    app.command("import")(import_cmd)
    app.command("other")(lambda: None)  # two commands, so "import" is a subcommand
    return app


def test_cli_import_writes_graph_and_weights(tmp_path):
    from alexc.training.checkpoint import load_weights

    source = GRAPHS / "alexnet-mini.yaml"
    graph = alexc.load_graph(source)
    params = graph.init_params(2)
    export_onnx(graph, params, tmp_path / "mini.onnx")
    out, weights = tmp_path / "mini.yaml", tmp_path / "mini.safetensors"
    args = ["import", str(tmp_path / "mini.onnx"), "--graph", str(out), "--weights", str(weights)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "21 nodes" in result.output
    imported = alexc.load_graph(out)
    loaded = load_weights(weights, imported)
    x = batch(graph.input.shape)
    assert rel_error(alexc_output(imported, loaded, x), alexc_output(graph, params, x)) <= 1e-5


def test_cli_import_errors_are_alexc_errors(tmp_path):
    result = CliRunner().invoke(cli(), ["import", str(tmp_path / "no.onnx"), "-g", "x.yaml"])
    assert isinstance(result.exception, AlexcError)
    bad = ["import", str(LIGHT / "light_bvlc_alexnet.onnx"), "-g", "x.yaml", "--input-shape", "a"]
    assert "--input-shape" in str(CliRunner().invoke(cli(), bad).exception)


def test_write_graph_is_readable_and_atomic(tmp_path):
    graph = alexc.load_graph(GRAPHS / "alexnet.yaml")
    write_graph(graph, tmp_path / "g" / "alexnet.yaml", comment="two\nlines")
    assert same_graph(alexc.load_graph(tmp_path / "g" / "alexnet.yaml"), graph)
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["alexnet.yaml"]
    (tmp_path / "file").write_text("")
    with pytest.raises(AlexcError, match="cannot write"):
        write_graph(graph, tmp_path / "file" / "x.yaml")
