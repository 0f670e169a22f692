"""The IR, the YAML frontend, the verifier and `alexc summary`."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import alexc
from alexc.ir import Op
from alexc.ir.graph import verify
from alexc.ops import RULES
from tests.helpers import GRAPHS

TINY = """\
name: tiny
input: {name: image, shape: [1, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, units: 3}
"""


# The paper AlexNet's forward FLOPs per image, counted by hand from its layer table: 2 per
# multiply-add, output positions x (input channels per group x kernel area). 1.45 GFLOP.
ALEXNET_FLOPS = {
    "conv1": 2 * 96 * 55 * 55 * (3 * 11 * 11),
    "conv2": 2 * 256 * 27 * 27 * (48 * 5 * 5),
    "conv3": 2 * 384 * 13 * 13 * (256 * 3 * 3),
    "conv4": 2 * 384 * 13 * 13 * (192 * 3 * 3),
    "conv5": 2 * 256 * 13 * 13 * (192 * 3 * 3),
    "fc6": 2 * 256 * 6 * 6 * 4096,
    "fc7": 2 * 4096 * 4096,
    "fc8": 2 * 4096 * 1000,
}


def test_alexnet_paper_counts_and_shapes():
    g = alexc.load_graph(GRAPHS / "alexnet.yaml")
    assert g.num_params == 60_965_224
    assert g.shapes["conv1"] == (96, 55, 55)
    assert g.shapes["pool1"] == (96, 27, 27)
    assert g.shapes["pool2"] == (256, 13, 13)
    assert g.shapes["pool5"] == (256, 6, 6)
    assert g.shapes["fc8"] == (1000,)
    assert g.params[2].name == "conv2.weight" and g.params[2].shape == (256, 48, 5, 5)
    for n in ("conv2", "conv4", "conv5"):
        assert g.node(n).attrs["groups"] == 2
    lrn = g.node("norm1").attrs
    assert (lrn["size"], lrn["alpha"], lrn["beta"], lrn["bias"], lrn["convention"]) == (
        5,
        1e-4,
        0.75,
        2.0,
        "paper",
    )
    assert {n.name: g.flops[n.name] for n in g.nodes if n.op in (Op.CONV, Op.LINEAR)} == (
        ALEXNET_FLOPS
    )
    assert sum(ALEXNET_FLOPS.values()) == 1_448_813_632  # 0.72 G multiply-adds (DESIGN 5)


def test_alexnet_torchvision_counts():
    g = alexc.load_graph(GRAPHS / "alexnet-torchvision.yaml")
    assert g.num_params == 61_100_840
    assert g.shapes["conv1"] == (64, 55, 55)
    assert g.shapes["avgpool"] == (256, 6, 6)
    assert not any(n.op is Op.LRN for n in g.nodes)


def test_alexnet_mini_architecture():
    g = alexc.load_graph(GRAPHS / "alexnet-mini.yaml")
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.CONV) == 5 and ops.count(Op.LRN) == 2 and ops.count(Op.LINEAR) == 3
    # Dropout is the paper's regulariser (its section 4, with the crops), not its architecture
    # (section 3): the 10-epoch recipe underfits and drops it, as it drops random crops.
    assert ops.count(Op.DROPOUT) == 0
    assert g.input.shape == (1, 28, 28) and g.shapes["fc8"] == (10,)
    assert [g.node(n).attrs["groups"] for n in ("conv2", "conv4", "conv5")] == [2, 2, 2]
    assert all(
        g.node(n).attrs["kernel"] == (3, 3) and g.node(n).attrs["stride"] == (2, 2)
        for n in ("pool1", "pool2", "pool5")
    )
    assert [g.shapes[n][1] for n in ("pool1", "pool2", "pool5")] == [14, 7, 3]  # ceil mode
    assert len(g.classes) == 10


def test_param_init_paper_statistics_and_reproducibility():
    g = alexc.load_graph(GRAPHS / "alexnet.yaml")
    a, b, c = g.init_params(0), g.init_params(0), g.init_params(1)
    assert all(a[k].dtype == np.float32 for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    w = a["fc6.weight"]
    assert abs(w.std() - 0.01) < 1e-4 and abs(w.mean()) < 1e-4
    for name, bias in [
        ("conv1", 0),
        ("conv2", 1),
        ("conv3", 0),
        ("conv4", 1),
        ("conv5", 1),
        ("fc6", 0.1),  # the graph file's one deviation from the paper (1), and why, is there
        ("fc7", 0.1),
        ("fc8", 0),
    ]:
        assert np.all(a[f"{name}.bias"] == np.float32(bias)), name


def test_torchvision_init_is_fan_in_uniform():
    g = alexc.load_graph(GRAPHS / "alexnet-torchvision.yaml")
    w = g.init_params(3)["conv2.weight"]
    bound = 1 / math.sqrt(64 * 5 * 5)
    assert w.max() <= bound and w.min() >= -bound
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound  # fills the interval


def test_dag_with_concat_and_add_and_explicit_towers():
    g = alexc.parse_graph("""
input: {name: x, shape: [4, 9, 9]}
nodes:
  - {name: a, op: conv, filters: 6, kernel: 3, inputs: [x]}
  - {name: b, op: conv, filters: 6, kernel: 3, inputs: [x]}
  - {name: s, op: add, inputs: [a, b]}
  - {name: c, op: concat, inputs: [a, s]}
  - {name: f, op: flatten}
  - {name: fc, op: linear, units: 2}
""")
    assert g.shapes["c"] == (12, 7, 7)
    assert g.outputs == ("fc",)
    assert g.num_params == 2 * (6 * 4 * 9 + 6) + 12 * 49 * 2 + 2


def test_nodes_out_of_order_are_sorted():
    g = alexc.parse_graph("""
input: {name: x, shape: [2]}
nodes:
  - {name: b, op: relu, inputs: [a]}
  - {name: a, op: linear, units: 3, inputs: [x]}
outputs: [b]
""")
    assert [n.name for n in g.nodes] == ["a", "b"]


def test_verifier_catches_tampering():
    g = alexc.parse_graph(TINY)
    verify(g)
    bad_shape = replace(g, shapes={**g.shapes, "relu1": (4, 7, 7)})
    with pytest.raises(alexc.GraphError, match="relu1"):
        verify(bad_shape)
    dangling = replace(g, nodes=(g.nodes[0], replace(g.nodes[1], inputs=("ghost",)), *g.nodes[2:]))
    with pytest.raises(alexc.GraphError, match="ghost"):
        verify(dangling)
    twice = replace(g, nodes=(*g.nodes, g.nodes[-1]))
    with pytest.raises(alexc.GraphError, match="assigned twice"):
        verify(twice)
    with pytest.raises(alexc.GraphError, match="parameter"):
        verify(replace(g, params=g.params[1:]))


def test_every_op_has_every_rule():
    from alexc_runtime.kernels import KERNELS

    missing = [op.value for op in Op if op not in RULES or op.value not in KERNELS]
    assert not missing, f"ops without rules: {missing}"
    for op, rule in RULES.items():
        assert callable(rule.shape) and callable(rule.params) and callable(rule.flops), op


def test_summary_json(run_cli):
    code, out, err = run_cli("summary", GRAPHS / "alexnet.yaml", "--json", "--batch-size", "2")
    assert code == 0, err
    s = json.loads(out)
    assert s["total_params"] == 60_965_224
    assert s["flops"] == sum(layer["flops"] for layer in s["layers"])
    for layer in s["layers"]:
        if layer["name"] in ALEXNET_FLOPS:
            assert layer["flops"] == 2 * ALEXNET_FLOPS[layer["name"]], layer["name"]  # batch 2
    conv1 = s["layers"][0]
    assert conv1 == {
        "name": "conv1",
        "op": "conv",
        "output_shape": [2, 96, 55, 55],
        "params": 34_944,
        "flops": 2 * 2 * 96 * 55 * 55 * 3 * 11 * 11,
        "activation_bytes": 2 * 96 * 55 * 55 * 4,
    }
    assert sum(layer["params"] for layer in s["layers"]) == s["total_params"]


@pytest.mark.parametrize(
    "name,count", [("alexnet", "60,965,224"), ("alexnet-torchvision", "61,100,840")]
)
def test_summary_table(run_cli, name, count):
    code, out, _ = run_cli("summary", GRAPHS / f"{name}.yaml")
    assert code == 0
    assert count in out and "fc8" in out and "GFLOPs" in out


# --- errors: one line naming the file, line and node; exit 1; no traceback -----------------

BROKEN = {
    "yaml_syntax": ("nodes: [\n  - {name: a, op: relu\n", "not valid YAML", None),
    "empty": ("", "empty", None),
    "top_level_list": ("- 1\n- 2\n", "top level must be a mapping", None),
    "unknown_op": (TINY.replace("op: relu", "op: gelu"), "unknown op 'gelu'", "relu1"),
    "unknown_attr": (TINY.replace("pad: 1", "padding: 1"), "unknown attribute 'padding'", "conv1"),
    "dangling": (
        TINY.replace("units: 3", "units: 3, inputs: [nowhere]"),
        "'nowhere' is not defined",
        "fc",
    ),
    "cycle": (
        """input: {name: x, shape: [2]}
nodes:
  - {name: a, op: relu, inputs: [b]}
  - {name: b, op: relu, inputs: [a]}
""",
        "cycle: a -> b -> a",
        "a",
    ),
    "duplicate": (TINY.replace("name: relu1", "name: conv1"), "duplicate name 'conv1'", "conv1"),
    "reserved_loss": (TINY.replace("name: fc", "name: loss"), "'loss' is reserved", "loss"),
    "reserved_labels": (
        TINY.replace("name: relu1", "name: labels"),
        "'labels' is reserved",
        "labels",
    ),
    "reserved_input": (TINY.replace("name: image", "name: labels"), "input name 'labels'", None),
    "non_positive": (TINY.replace("filters: 4", "filters: 0"), "'filters' must be >= 1", "conv1"),
    "negative_input": (TINY.replace("[1, 8, 8]", "[1, -8, 8]"), "positive integers", None),
    "absurd": (TINY.replace("units: 3", "units: 100000000000"), "absurdly large", "fc"),
    "absurd_param": (TINY.replace("units: 3", "units: 10000000"), "absurdly large", "fc"),
    "kernel_too_big": (
        TINY.replace("kernel: 3, pad: 1", "kernel: 11"),
        "larger than its padded input",
        "conv1",
    ),
    "groups": (TINY.replace("pad: 1}", "pad: 1, groups: 3}"), "groups=3 does not divide", "conv1"),
    "even_lrn": (
        TINY.replace("op: relu", "op: lrn, size: 4, alpha: 1.0e-4, beta: 0.75, convention: paper"),
        "size=4 is even",
        "relu1",
    ),
    "shape_mismatch": (
        """input: {name: x, shape: [3, 8, 8]}
nodes:
  - {name: a, op: conv, filters: 4, kernel: 3, inputs: [x]}
  - {name: s, op: add, inputs: [a, x]}
""",
        "add needs equal shapes, got (4, 6, 6) and (3, 8, 8)",
        "s",
    ),
    "linear_needs_flatten": (
        TINY.replace("  - {name: flat, op: flatten}\n", ""),
        "add a flatten node",
        "fc",
    ),
    "bad_convention": (
        TINY.replace("op: relu", "op: lrn, size: 5, alpha: 1, beta: 1, convention: caffe"),
        "convention",
        "relu1",
    ),
    "second_loss": (
        TINY + "  - {name: l1, op: softmax_cross_entropy}\n"
        "  - {name: l2, op: softmax_cross_entropy, inputs: [fc]}\n",
        "a second loss node (the first is 'l1')",
        "l2",
    ),
    "reads_loss": (
        TINY + "  - {name: l1, op: softmax_cross_entropy}\n  - {name: after, op: relu}\n",
        "reads the loss 'l1'",
        "after",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_graph_files(tmp_path, run_cli, case):
    text, message, node = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = run_cli("summary", path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(path) in lines[0] and message in lines[0], lines[0]
    if node is not None:
        assert f"node '{node}'" in lines[0]
        # The line number points at that node's line (for a duplicate, the second one).
        line_no = max(i + 1 for i, t in enumerate(text.splitlines()) if f"name: {node}" in t)
        assert f":{line_no}:" in lines[0]


def test_missing_graph_file(run_cli, tmp_path):
    code, _, err = run_cli("summary", tmp_path / "nope.yaml")
    assert code == 1 and "no such graph file" in err and "Traceback" not in err


# The train: and data: sections: each wrong value is one line naming the file, the line of
# the key, the key and what it takes, from every command that reads a graph file.
SECTIONS = (
    TINY
    + """\
train:
  batch_size: 8
  epochs: 2
  lr: 0.05
  momentum: 0.9
  weight_decay: 0.0005
  label_smoothing: 0.1
  schedule: {step: {milestones: [1], factor: 0.1}}
data:
  flip: true
  mean: [0.5]
  std: [0.25]
"""
)

BAD_SECTIONS = {
    "label_smoothing_text": ("label_smoothing: 0.1", "label_smoothing: abc", "label_smoothing"),
    "label_smoothing_one": ("label_smoothing: 0.1", "label_smoothing: 1.0", "label_smoothing"),
    "momentum_text": ("momentum: 0.9", "momentum: fast", "momentum must be a number in [0, 1)"),
    "momentum_above_one": ("momentum: 0.9", "momentum: 1.5", "momentum"),
    "weight_decay_negative": ("weight_decay: 0.0005", "weight_decay: -1", "weight_decay"),
    "weight_decay_nan": ("weight_decay: 0.0005", "weight_decay: .nan", "weight_decay"),
    "batch_size_float": ("batch_size: 8", "batch_size: 8.5", "batch_size must be an integer"),
    "epochs_bool": ("epochs: 2", "epochs: true", "epochs must be an integer"),
    "unknown_train_key": ("epochs: 2", "epoch: 2", "unknown key 'epoch'"),
    "schedule_kind": ("{step: {milestones: [1], factor: 0.1}}", "{cosine: 1}", "schedule"),
    "schedule_milestones": ("milestones: [1]", "milestones: abc", "milestones must be a list"),
    "schedule_factor": ("factor: 0.1", "factor: ten", "factor must be a number"),
    "mean_text": ("mean: [0.5]", "mean: abc", "mean must be a number or a list"),
    "mean_length": ("mean: [0.5]", "mean: [0.5, 0.5, 0.5]", "mean needs 1 values"),
    "mean_empty": ("mean: [0.5]", "mean: []", "mean must be a number or a list"),
    "std_zero": ("std: [0.25]", "std: [0]", "std values must be positive"),
    "flip_null": ("flip: true", "flip: null", "flip must be true or false"),
    "resize_negative": ("flip: true", "resize: -4", "resize must be an integer >= 1"),
    "resize_absurd": ("flip: true", "resize: 1000000", "resize (1000000) is absurd"),
    "crop_mismatch": ("flip: true", "crop: 5", "must match the graph's input size 8x8"),
    "crop_null": ("flip: true", "crop: null", "crop None must match"),
    "pad_without_crop": ("flip: true", "pad: 2", "pad only applies with random_crop"),
    "pca_gray": ("flip: true", "pca_jitter: 0.1", "pca_jitter needs 3 input channels"),
    "unknown_data_key": ("flip: true", "rotate: 10", "unknown key 'rotate'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SECTIONS))
def test_train_and_data_sections_are_checked_where_they_are_written(tmp_path, run_cli, case):
    old, new, message = BAD_SECTIONS[case]
    assert old in SECTIONS
    text = SECTIONS.replace(old, new)
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    key = new.split(":")[0].strip("{ ")
    line_no = next(i + 1 for i, t in enumerate(text.splitlines()) if new in t)
    code, out, err = run_cli("export", path, "--onnx", tmp_path / "out.onnx")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    section = "train" if text.index(new) < text.index("data:") else "data"
    assert lines[0].startswith(f"error: {path}:{line_no}: {section}: "), lines[0]
    assert message in lines[0] and key in lines[0], lines[0]
    assert not (tmp_path / "out.onnx").exists()


def test_good_sections_load_and_train_reads_them():
    from alexc.data import Augment
    from alexc.training.recipe import Recipe

    graph = alexc.parse_graph(SECTIONS, "sections.yaml")
    recipe = Recipe.from_graph(graph)
    assert (recipe.momentum, recipe.label_smoothing, recipe.batch_size) == (0.9, 0.1, 8)
    assert Augment.from_config(graph.data, graph.input.shape).std == (0.25,)


def test_a_long_chain_listed_backwards_and_deep_nesting_are_errors_not_crashes():
    # Found by hand beside the fuzzer: both once ended in RecursionError.
    n = 3000
    nodes = [
        f"  - {{name: r{i}, op: relu, inputs: [{f'r{i - 1}' if i else 'x'}]}}" for i in range(n)
    ]
    text = "\n".join(
        ["input: {name: x, shape: [4]}", "nodes:", *nodes[::-1], f"outputs: [r{n - 1}]"]
    )
    graph = alexc.parse_graph(text, "backwards.yaml")
    assert [nd.name for nd in graph.nodes] == [f"r{i}" for i in range(n)]
    with pytest.raises(alexc.GraphError, match=r"deep.yaml: nested too deeply"):
        alexc.parse_graph("input: " + "[" * 5000 + "]" * 5000, "deep.yaml")
