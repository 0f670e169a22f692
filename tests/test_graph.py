"""The IR, the YAML frontend, the verifier and `alexc summary`."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from conftest import GRAPHS

import alexc
from alexc.graph import verify
from alexc.ir import Op
from alexc.ops import RULES

TINY = """\
name: tiny
input: {name: image, shape: [1, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, units: 3}
"""


def conv_out(size, k, s=1, p=0):
    return (size + 2 * p - k) // s + 1


def test_alexnet_paper_counts_and_shapes():
    g = alexc.load_graph(GRAPHS / "alexnet.yaml")
    assert g.num_params == 60_965_224
    assert conv_out(227, 11, 4) == 55
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
    # About 0.72 G multiply-adds per image (DESIGN section 5).
    macs = sum(g.flops[n.name] for n in g.nodes if n.op in (Op.CONV, Op.LINEAR)) / 2
    assert 0.70e9 < macs < 0.74e9


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
    assert ops.count(Op.DROPOUT) == 2
    assert g.input.shape == (1, 28, 28) and g.shapes["fc8"] == (10,)
    assert [g.node(n).attrs["groups"] for n in ("conv2", "conv4", "conv5")] == [2, 2, 2]
    assert all(
        g.node(n).attrs["kernel"] == (3, 3) and g.node(n).attrs["stride"] == (2, 2)
        for n in ("pool1", "pool2", "pool5")
    )
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
    from alexc.lower import MEMORY

    missing = [op.value for op in Op if op not in RULES or op not in MEMORY]
    assert not missing, f"ops without rules: {missing}"
    for op, rule in RULES.items():
        assert callable(rule.shape) and callable(rule.params) and callable(rule.flops), op


def test_summary_json(run_cli):
    code, out, err = run_cli("summary", GRAPHS / "alexnet.yaml", "--json", "--batch-size", "2")
    assert code == 0, err
    s = json.loads(out)
    assert s["total_params"] == 60_965_224
    assert s["flops"] == 2 * sum(layer["flops"] for layer in s["layers"]) // 2
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
