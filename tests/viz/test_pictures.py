"""The pictures: curves, filters, confusion matrix, activations, the network diagram.

The files are checked for what they are (valid PNG or SVG, the expected size) and for the
numbers they were built from (the texts in an SVG, the counts beside a confusion matrix),
never pixel by pixel against a stored picture."""

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import alexc
from alexc.data import open_source
from alexc.training.checkpoint import save_checkpoint
from alexc.training.evaluate import evaluate
from alexc.viz.diagram import BOX_WIDTH, boxes
from alexc.viz.plot import layer_activations, lr_curve, normalise_kernels, tower_count
from tests.helpers import GRAPHS, color_folder

TINY = """\
name: tiny
input: {name: image, shape: [3, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 2, stride: 2}
  - {name: conv2, op: conv, filters: 6, kernel: 3, pad: 1}
  - {name: flatten, op: flatten}
  - {name: fc8, op: linear, units: 3}
train: {batch_size: 8, epochs: 2, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
data: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
"""

BRANCHES = """\
name: branches
input: {name: image, shape: [1, 12, 12]}
nodes:
  - {name: a1, op: conv, filters: 4, kernel: 3, pad: 1, inputs: [image]}
  - {name: a2, op: relu}
  - {name: b1, op: conv, filters: 4, kernel: 3, pad: 1, inputs: [image]}
  - {name: b2, op: relu}
  - {name: both, op: concat, inputs: [a2, b2]}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, units: 3}
"""

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path) -> list[str]:
    """Every text element of an SVG (matplotlib writes text as text with svg.fonttype none)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()  # decodes every byte: a truncated file fails here
        return img.size


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return alexc.load_graph(path), path


# --- curves -------------------------------------------------------------------------------


def fake_run(run, val_top1):
    """A metrics.jsonl like alexc train writes: step records every 50 steps, epoch records."""
    run.mkdir()
    lines = [{"event": "start", "graph": "tiny"}]
    for e, top1 in enumerate(val_top1, start=1):
        lines += [
            {"event": "step", "epoch": e, "step": s, "lr": 0.1 / e, "loss": 2.0 / s}
            for s in range(100 * (e - 1) + 50, 100 * e + 1, 50)
        ]
        lines.append(
            {
                "event": "epoch",
                "epoch": e,
                "step": 100 * e,
                "lr": 0.1 / e,
                "train_loss": 1.0 / e,
                "train_top1": top1 - 0.01,
                "val_top1": top1,
                "val_top5": min(1.0, top1 + 0.2),
                "val_loss": 1.2 / e,
            }
        )
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_curves_as_png_and_svg_mark_the_best_epoch(tmp_path, run_cli):
    run = tmp_path / "run"
    fake_run(run, [0.5, 0.7, 0.65, 0.7])  # best: epoch 2 (the first of the two 0.7s)
    code, out, err = run_cli("plot", run)
    assert code == 0, err
    assert png_size(run / "curves.png") == (1500, 440)
    code, _, err = run_cli("plot", run, "--out", tmp_path / "curves.svg")
    assert code == 0, err
    texts = svg_texts(tmp_path / "curves.svg")
    assert "best: epoch 2, val top-1 0.7000" in texts
    for title in ("loss", "accuracy", "learning rate", "end of epoch"):
        assert texts.count(title) >= 1, title
    assert {"1", "2", "3", "4"} <= set(texts)  # the epoch ticks on the top axes


def test_learning_rate_panel_follows_the_logged_steps_inside_an_epoch():
    # Half an epoch of warm-up, then a cosine to 0 over two epochs of 200 steps, logged every
    # 50 steps as alexc train does; the epoch records hold the rate at each epoch's first step.
    def rate(step):
        return 0.1 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / 400))

    epochs = [{"step": 200, "lr": rate(0)}, {"step": 400, "lr": rate(200)}]
    steps = [{"step": s, "lr": rate(s)} for s in range(50, 401, 50)]
    xs, lrs = lr_curve(epochs, steps)
    assert xs == [0, *range(50, 401, 50)]
    assert lrs == [rate(x) for x in xs]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] > lrs[3] > lrs[-1]  # the ramp, then the decay
    # Without step records: one value per epoch, held to the last step.
    assert lr_curve(epochs, []) == ([0, 200, 400], [rate(0), rate(200), rate(200)])


def test_curves_refuse_other_formats_in_one_line(tmp_path, run_cli):
    run = tmp_path / "run"
    fake_run(run, [0.5])
    code, _, err = run_cli("plot", run, "--out", tmp_path / "curves.jpg")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "curves.jpg" in err and ".png or .svg" in err
    assert not (tmp_path / "curves.jpg").exists()


# --- filters ------------------------------------------------------------------------------


def test_towers_of_the_first_conv_follow_the_next_grouped_conv(tiny):
    for name, towers in [("alexnet", 2), ("alexnet-mini", 2), ("alexnet-torchvision", 1)]:
        graph = alexc.load_graph(GRAPHS / f"{name}.yaml")
        assert tower_count(graph, graph.nodes[0]) == towers, name
    graph, _ = tiny
    assert tower_count(graph, graph.node("conv1")) == 1


def test_each_kernel_is_scaled_to_its_own_min_and_max():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 4, 4)).astype(np.float32) * np.arange(1, 6)[:, None, None, None]
    got = normalise_kernels(w)
    assert got.shape == (5, 4, 4, 3)
    for k in range(5):
        kernel = w[k].astype(np.float64)
        want = (kernel - kernel.min()) / (kernel.max() - kernel.min())
        np.testing.assert_allclose(got[k], want.transpose(1, 2, 0), atol=1e-12)


def test_filter_grid_of_the_mini_net_is_grey_in_two_tower_blocks(tmp_path, run_cli):
    graph_path = GRAPHS / "alexnet-mini.yaml"
    weights = tmp_path / "w.safetensors"
    save_checkpoint(weights, alexc.load_graph(graph_path).init_params(0))
    for suffix in ("png", "svg"):
        out = tmp_path / f"filters.{suffix}"
        code, _, err = run_cli("filters", graph_path, "--weights", weights, "--out", out)
        assert code == 0, err
    texts = svg_texts(tmp_path / "filters.svg")
    assert "tower 1 of 2: filters 0-15" in texts and "tower 2 of 2: filters 16-31" in texts
    width, height = png_size(tmp_path / "filters.png")
    assert width > 300 and height > width / 2  # two blocks of 2 rows of 8, one above the other
    pixels = np.asarray(Image.open(tmp_path / "filters.png").convert("RGB")).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_filter_grid_of_rgb_kernels_is_in_colour(tiny, tmp_path):
    from alexc.viz.plot import plot_filters

    graph, _ = tiny
    out = plot_filters(graph, graph.init_params(0), tmp_path / "f.png")
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert (pixels[..., 0] != pixels[..., 1]).any()


# --- confusion matrix ---------------------------------------------------------------------


class TablePredictor:
    """Predicts class `table[i]` for the image whose first pixel is i."""

    def __init__(self, table, classes):
        self.table, self.classes = table, classes

    def predict(self, x):
        logits = np.zeros((len(x), self.classes), np.float32)
        logits[np.arange(len(x)), self.table[x[:, 0, 0, 0].astype(int)]] = 1.0
        return logits


def test_evaluate_counts_every_true_and_predicted_pair():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 50)
    predicted = rng.integers(0, 4, 50)
    x = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
    batches = [(x[i : i + 16], labels[i : i + 16]) for i in range(0, 50, 16)]
    result = evaluate(TablePredictor(predicted, 4), batches, confusion=True)
    want = [[0] * 4 for _ in range(4)]
    for true, guess in zip(labels, predicted, strict=True):
        want[true][guess] += 1
    assert result["confusion"] == want
    assert result["top1"] == pytest.approx((labels == predicted).mean())
    assert "confusion" not in evaluate(TablePredictor(predicted, 4), batches)


def test_eval_confusion_counts_sum_to_the_images_and_trace_is_top1(tiny, tmp_path, run_cli):
    graph_path = tiny[1]
    folder = color_folder(tmp_path / "images", per_class=10)
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", graph_path, "--data", folder, "--out", run, "--epochs", "2", "--threads", "1"
    )
    assert code == 0, err
    out = tmp_path / "confusion.png"
    code, stdout, err = run_cli(
        "eval", graph_path, "--weights", run / "best.safetensors", "--data", folder,
        "--split", "val", "--json", "--confusion", out,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    counts = np.array(result["confusion"])
    assert result["classes"] == ["blue", "green", "red"]
    assert counts.shape == (3, 3) and counts.sum() == result["images"]
    assert np.trace(counts) == round(result["top1"] * result["images"])
    source = open_source(folder, split="val", channels=3)
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(source.labels, minlength=3))
    width, height = png_size(out)
    assert width >= 500 and height >= 500
    code, stdout, err = run_cli(
        "eval", graph_path, "--weights", run / "best.safetensors", "--data", folder,
        "--split", "val", "--confusion", tmp_path / "c.svg",
    )  # fmt: skip
    assert code == 0, err
    texts = svg_texts(tmp_path / "c.svg")
    for i in range(3):
        for j in range(3):
            assert str(counts[i, j]) in texts
    assert any(f"{np.trace(counts)} of {counts.sum()} on the diagonal" in t for t in texts)


# --- activations --------------------------------------------------------------------------


def conv_relu_oracle(x, w, b):
    """A 3x3, pad 1, stride 1 convolution and ReLU written out as loops over the taps."""
    n, c, h, wd = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, :, dy : dy + h, dx : dx + wd]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx].astype(np.float64))
    return np.maximum(y, 0)


def test_activations_are_each_conv_layers_output_after_its_relu(tiny):
    graph, _ = tiny
    params = graph.init_params(2)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    layers = layer_activations(graph, params, x)
    assert list(layers) == ["relu1", "conv2"]  # conv2 has no relu: its own output
    want = conv_relu_oracle(x, params["conv1.weight"], params["conv1.bias"])
    np.testing.assert_allclose(layers["relu1"], want, rtol=1e-5, atol=1e-6)
    assert layers["conv2"].shape == (1, 6, 4, 4)


def test_infer_explain_draws_a_strip_per_conv_layer(tiny, tmp_path, run_cli):
    graph, graph_path = tiny
    folder = color_folder(tmp_path / "images", per_class=2)
    weights = tmp_path / "w.safetensors"
    save_checkpoint(weights, graph.init_params(0))
    image = folder / "red" / "0.png"
    for suffix in ("png", "svg"):
        out = tmp_path / f"act.{suffix}"
        code, stdout, err = run_cli(
            "infer", graph_path, image, "--weights", weights, "--explain", out
        )
        assert code == 0, err
    texts = svg_texts(tmp_path / "act.svg")
    assert "input" in texts
    for layer, channels, size in [("relu1", 4, "8x8"), ("conv2", 6, "4x4")]:
        i = texts.index(layer)  # the strip's label, then each map's channel number
        assert texts[i + 1 : i + 3] == [f"{channels} of {channels}", size]
        assert sorted(texts[i + 3 : i + 3 + channels]) == [f"#{c}" for c in range(channels)]
    width, height = png_size(tmp_path / "act.png")
    assert width > 300 and height > 250
    code, _, err = run_cli(
        "infer", graph_path, image, image, "--weights", weights, "--explain", out
    )
    assert code == 1 and "one image" in err and len(err.strip().splitlines()) == 1


# --- diagram ------------------------------------------------------------------------------


def test_diagram_boxes_carry_each_nodes_shape_and_parameters():
    graph = alexc.load_graph(GRAPHS / "alexnet.yaml")
    drawn = boxes(graph)
    split = {name for name, b in drawn.items() if len(b) == 2}
    # The paper's towers: conv2, conv4, conv5 and the channel-wise ops after them.
    assert split == {"conv2", "relu2", "conv4", "relu4", "conv5", "relu5", "pool5"}
    params = {}
    for p in graph.params:
        params[p.name.split(".")[0]] = params.get(p.name.split(".")[0], 0) + np.prod(p.shape)
    for name, node_boxes in drawn.items():
        if name in params:
            share = params[name] // len(node_boxes)
            assert all(b.detail.endswith(f"{share:,} params") for b in node_boxes), name
    assert drawn["conv2"][0].detail.startswith("128x27x27")
    assert drawn["fc8"][0].detail == "1000  |  4,097,000 params"


def test_summary_diagram_puts_the_towers_side_by_side(tmp_path, run_cli):
    paper, torchvision = GRAPHS / "alexnet.yaml", GRAPHS / "alexnet-torchvision.yaml"
    code, _, err = run_cli("summary", paper, "--diagram", tmp_path / "paper.svg")
    assert code == 0, err
    texts = svg_texts(tmp_path / "paper.svg")
    graph = alexc.load_graph(paper)
    for n in graph.nodes:
        assert any(t.startswith(f"{n.name}:") or t.startswith(f"{n.name} [") for t in texts)
    assert "conv2 [tower 2/2]: conv 5x5/1, 128 of 256 filters" in texts
    assert texts.count("128x27x27  |  153,728 params") == 2
    sizes = {}
    for name, path in [("paper", paper), ("torchvision", torchvision)]:
        code, stdout, err = run_cli(
            "summary", path, "--json", "--diagram", tmp_path / f"{name}.png"
        )
        assert code == 0, err
        assert json.loads(stdout)["total_params"] == alexc.load_graph(path).num_params
        sizes[name] = png_size(tmp_path / f"{name}.png")
    # The paper net's towers stand side by side: two boxes wide; torchvision's has one column.
    assert sizes["paper"][0] >= 2 * BOX_WIDTH * 100 > sizes["torchvision"][0]  # 100 dpi


def test_diagram_puts_explicit_branches_side_by_side(tmp_path, run_cli):
    branches = tmp_path / "branches.yaml"
    branches.write_text(BRANCHES)
    code, _, err = run_cli("summary", branches, "--diagram", tmp_path / "b.png")
    assert code == 0, err
    assert png_size(tmp_path / "b.png")[0] >= 2 * BOX_WIDTH * 100
    assert [len(b) for b in boxes(alexc.load_graph(branches)).values()] == [1] * 8
