"""`alexc bench`: the JSON it writes, numbers consistent with the work done, the torch lowering.

No test asserts a speed: every check holds however fast or loaded the machine is.
"""

import json
import math
from statistics import median

import numpy as np
import pytest

from alexc import AlexcError, compile, load_graph, parse_graph
from alexc.bench.profile import timed_kernels
from alexc.bench.timing import (
    EXECUTORS,
    MB,
    Row,
    data_batches,
    plan_rows,
    run_bench,
)
from alexc.ir import Op
from tests.helpers import GRAPHS, color_folder

TINY = """
name: tiny
input: {name: image, shape: [3, 12, 12]}
init: {weight: {kaiming_normal: 1.0}, bias: {constant: 0.1}}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 2, stride: 2}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, units: 3}
"""

# Every op, with the attributes torch cannot take directly (asymmetric padding, ceil_mode
# windows, padding excluded from averages, uneven bins).
EDGES = """
name: edges
input: {name: image, shape: [4, 13, 11]}
init: {weight: {kaiming_normal: 1.0}, bias: {constant: 0.1}}
nodes:
  - {name: c1, op: conv, filters: 6, kernel: [3, 2], pad: [2, 0, 1, 1], dilation: [2, 1],
     stride: [2, 1], groups: 2}
  - {name: r1, op: relu}
  - {name: n1, op: lrn, size: 3, alpha: 0.3, beta: 0.75, bias: 1.5, convention: onnx}
  - {name: m1, op: maxpool, kernel: 3, stride: 2, pad: [1, 0, 2, 1], ceil_mode: true}
  - {name: a1, op: avgpool, kernel: 3, stride: 2, pad: [0, 1, 2, 0], ceil_mode: true,
     count_include_pad: false, inputs: [n1]}
  - {name: a2, op: avgpool, kernel: 2, stride: 2, pad: 1, ceil_mode: true, inputs: [n1]}
  - {name: a3, op: avgpool, kernel: 3, stride: 2, pad: [0, 1, 2, 0], ceil_mode: true,
     inputs: [n1]}
  - {name: p1, op: adaptive_avgpool, output: [3, 2], inputs: [m1]}
  - {name: p2, op: adaptive_avgpool, output: [3, 2], inputs: [a1]}
  - {name: p3, op: adaptive_avgpool, output: [3, 2], inputs: [a2]}
  - {name: p4, op: adaptive_avgpool, output: [3, 2], inputs: [a3]}
  - {name: s, op: add, inputs: [p1, p2]}
  - {name: cat, op: concat, inputs: [s, p3, p4]}
  - {name: f, op: flatten}
  - {name: d, op: dropout, rate: 0.3}
  - {name: fc, op: linear, units: 5}
  - {name: sm, op: softmax, inputs: [fc]}
  - {name: lsm, op: log_softmax, inputs: [fc]}
  - {name: xent, op: softmax_cross_entropy, label_smoothing: 0.1, inputs: [fc]}
outputs: [fc, sm, lsm]
"""

# alexnet-mini's forward FLOPs per image, counted by hand from its layers (28x28, pooled in
# ceil mode to 14, 7 and 3): 2 per multiply-add, relu 1 per element, LRN 2 * size + 4 per
# element, max pooling 1 per window element (9 per output, windows over the edge included).
MINI_FLOPS = (
    2 * 32 * 28 * 28 * (1 * 25)  # conv1: 5x5
    + 2 * 64 * 14 * 14 * (16 * 9)  # conv2: 2 groups of 16 input channels
    + 2 * 96 * 7 * 7 * (64 * 9)  # conv3
    + 2 * 96 * 7 * 7 * (48 * 9)  # conv4: 2 groups
    + 2 * 128 * 7 * 7 * (48 * 9)  # conv5: 2 groups
    + 2 * (128 * 3 * 3 * 1024 + 1024 * 1024 + 1024 * 10)  # fc6, fc7, fc8
    + 32 * 28 * 28
    + 64 * 14 * 14
    + 2 * 96 * 7 * 7
    + 128 * 7 * 7
    + 2 * 1024  # the relus
    + (2 * 5 + 4) * (32 * 28 * 28 + 64 * 14 * 14)  # norm1, norm2
    + 9 * (32 * 14 * 14 + 64 * 7 * 7 + 128 * 3 * 3)  # pool1, pool2, pool5
)

MACHINE_KEYS = {
    "cpu": str,
    "cores": int,
    "threads": int,
    "numpy": str,
    "onnxruntime": str,
    "sgemm_peak_gflops": float,
    "sgemm": list,
    "malloc_keeps_freed_memory": bool,
}
ROW_KEYS = {
    "executor": str,
    "mode": str,
    "batch_size": int,
    "threads": int,
    "repeats": int,
    "latency_ms": float,
    "latency_ms_min": float,
    "latency_ms_max": float,
    "latencies_ms": list,
    "images_per_s": float,
    "images_per_s_min": float,
    "images_per_s_max": float,
    "flops_per_image": int,
    "gflops": float,
    "share_of_peak": float,
    "peak_method": str,
}


def _torch_or_skip():
    from alexc.bench.torch_peer import available

    reason = available()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def mini():
    return load_graph(GRAPHS / "alexnet-mini.yaml")


@pytest.fixture(scope="module")
def document(mini):
    return run_bench(
        mini,
        batch_sizes=(1, 4),
        threads=1,
        executors=("numpy", "onnxruntime", "torch"),
        repeats=2,
        profile=True,
        sgemm_repeats=2,
    )


def test_document_is_json_with_the_machine_described(document):
    assert json.loads(json.dumps(document)) == document
    machine = document["machine"]
    for key, kind in MACHINE_KEYS.items():
        assert isinstance(machine[key], kind), key
    assert "torch" in machine and machine["threads"] == 1
    assert machine["sgemm_peak_gflops"] == max(s["gflops"] for s in machine["sgemm"]) > 0
    for s in machine["sgemm"]:
        assert {"m", "k", "n", "gflops"} <= set(s)


def test_one_row_per_executor_mode_and_batch(document, mini):
    expected = {
        (e, m, b)
        for e in ("numpy", "onnxruntime", "onnxruntime-lrn-decomposed")  # mini has LRN
        for m in ("infer", "train")
        for b in (1, 4)
        if m == "infer" or e == "numpy"
    }
    if "torch" not in {n["executor"] for n in document["skipped"]}:
        expected |= {("torch", m, b) for m in ("infer", "train") for b in (1, 4)}
    keys = [(r["executor"], r["mode"], r["batch_size"]) for r in document["results"]]
    assert sorted(keys) == sorted(expected)
    for r in document["results"]:
        for key, kind in ROW_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["peak_mb"] is None or isinstance(r["peak_mb"], float)


def test_numbers_are_consistent_with_the_work_done(document):
    """GFLOP/s = FLOPs per image (training: 3x forward) * batch / median latency."""
    peak = document["machine"]["sgemm_peak_gflops"]
    for r in document["results"]:
        b, times = r["batch_size"], r["latencies_ms"]
        seconds = r["latency_ms"] / 1e3
        assert len(times) == r["repeats"] == 2
        assert r["latency_ms"] == pytest.approx(median(times))
        assert r["latency_ms_min"] == min(times) <= r["latency_ms"] <= r["latency_ms_max"]
        assert r["latency_ms_max"] == max(times)
        assert r["images_per_s"] == pytest.approx(b / seconds)
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        factor = 3 if r["mode"] == "train" else 1
        assert r["flops_per_image"] == MINI_FLOPS * factor
        assert r["gflops"] == pytest.approx(MINI_FLOPS * factor * b / seconds / 1e9)
        assert r["share_of_peak"] == pytest.approx(r["gflops"] / peak)


def test_comparisons_pair_numpy_with_each_peer_round_by_round(document):
    """Speed: the median over rounds of peer latency / NumPy latency; memory: the peak ratio."""
    rows = {(r["executor"], r["mode"], r["batch_size"]): r for r in document["results"]}
    expected = {(e, m, b) for (e, m, b) in rows if e != "numpy" and ("numpy", m, b) in rows}
    found = {(c["peer"], c["mode"], c["batch_size"]) for c in document["comparisons"]}
    assert found == expected and expected
    for c in document["comparisons"]:
        ours, theirs = (
            rows["numpy", c["mode"], c["batch_size"]],
            rows[c["peer"], c["mode"], c["batch_size"]],
        )
        per_round = [
            t / n for t, n in zip(theirs["latencies_ms"], ours["latencies_ms"], strict=True)
        ]
        assert c["rounds"] == len(per_round) == 2
        assert c["speed"] == pytest.approx(median(per_round))
        assert c["speed_min"] == pytest.approx(min(per_round))
        assert c["speed_max"] == pytest.approx(max(per_round))
        if theirs["peak_mb"]:
            assert c["memory"] == pytest.approx(ours["peak_mb"] / theirs["peak_mb"])
        else:
            assert c["memory"] is None


def test_rows_of_one_mode_and_batch_are_timed_in_alternating_rounds(mini):
    """Each row is warmed up and its memory taken first; then the timed calls alternate."""
    calls = []
    run_bench(
        mini,
        batch_sizes=(2,),
        threads=1,
        executors=("numpy", "onnxruntime"),
        modes=("infer",),
        repeats=3,
        warmup=1,
        sgemm_repeats=1,
        on_call=lambda label, n: calls.extend([label] * n),
    )
    numpy, node, decomposed = (
        f"{e} infer batch 2" for e in ("numpy", "onnxruntime", "onnxruntime-lrn-decomposed")
    )
    readying = [numpy] * 2 + [node] * 2 + [decomposed] * 2  # a warm-up and a memory call each
    assert calls == readying + [numpy, node, decomposed] * 3


def test_numpy_peak_memory_covers_parameters_and_activations(document, mini):
    param_mb = mini.num_params * 4 / MB
    assert document["graph"]["param_mb"] == pytest.approx(param_mb)
    widest = max(math.prod(mini.shapes[n.name]) for n in mini.nodes if n.op is Op.CONV) * 4
    rows = [r for r in document["results"] if r["executor"] == "numpy"]
    for r in rows:
        assert r["peak_method"] == "tracemalloc"
        held = param_mb * (2 if r["mode"] == "train" else 1)  # + momentum buffers
        # The widest conv output is allocated during the call, on top of what is held.
        assert r["peak_mb"] >= held + widest * r["batch_size"] / MB
        assert r["planned_peak_mb"] > param_mb
    for mode in ("infer", "train"):
        by_batch = {r["batch_size"]: r["peak_mb"] for r in rows if r["mode"] == mode}
        assert by_batch[4] > by_batch[1]


def test_other_rows_measure_resident_memory(document):
    for r in document["results"]:
        if r["executor"] != "numpy":
            assert r["peak_method"] in ("rss", "unavailable (VmHWM cannot be reset here)")
            assert (r["peak_mb"] is None) == (r["peak_method"] != "rss")


def test_profile_accounts_for_every_step(document, mini):
    profiles = {(p["mode"], p["batch_size"]): p for p in document["profile"]}
    assert set(profiles) == {(m, b) for m in ("infer", "train") for b in (1, 4)}
    for (mode, _), p in profiles.items():
        # Inference fuses each relu into the conv or linear before it: "conv1+relu1".
        nodes = {name for r in p["nodes"] for name in r["node"].split("+")}
        kept = {n.name for n in mini.nodes if mode == "train" or n.op is not Op.DROPOUT}
        assert kept <= nodes
        assert p["nodes"][-1]["node"] == "overhead"
        assert sum(r["ms"] for r in p["nodes"]) == pytest.approx(p["total_ms"])
        assert sum(r["share"] for r in p["nodes"]) == pytest.approx(1.0)
        assert sum(o["ms"] for o in p["ops"]) == pytest.approx(p["total_ms"])
        for r in p["nodes"][:-1]:
            assert r["ms"] >= 0
            if r["forward_ms"] is not None:
                assert r["ms"] == pytest.approx(r["forward_ms"] + (r["backward_ms"] or 0.0))
        conv1 = next(r for r in p["nodes"] if r["node"].split("+")[0] == "conv1")
        assert (conv1["backward_ms"] is not None) == (mode == "train")


def test_timed_kernels_hooks_the_executor_not_the_kernel_table(mini):
    """The profiler is the executor's on_step hook: it sees every step of the plan, in order,
    and leaves the global kernel table and other executors alone."""
    from alexc_runtime.kernels import KERNELS

    before = dict(KERNELS)
    exe, other = compile(mini, 2), compile(mini, 2)
    x = np.zeros((2, *mini.input.shape), np.float32)
    log = []
    with timed_kernels(exe, log):
        exe.loss_and_grads(mini.init_params(0), x, np.array([1, 2]))
        other.forward(mini.init_params(0), x)
        assert KERNELS == before
    plan = exe.plan(2, training=True)
    assert [(op, bw) for op, bw, _ in log] == [(s.op, s.backward) for s in plan.steps]
    assert all(seconds >= 0 for _, _, seconds in log)
    exe.forward(mini.init_params(0), x)
    assert len(log) == len(plan.steps)  # the hook is gone


def test_plan_rows_expands_onnxruntime_and_explains_what_it_leaves_out(mini, monkeypatch):
    import alexc.bench.torch_peer

    rows, notes = plan_rows(mini, ["torch", "numpy", "onnxruntime"], ["infer"], [4, 1, 4])
    executors = list(dict.fromkeys(r.executor for r in rows))
    torch_rows = [] if any(n["executor"] == "torch" for n in notes) else ["torch"]
    assert executors == ["numpy", "onnxruntime", "onnxruntime-lrn-decomposed", *torch_rows]
    assert [r.batch_size for r in rows if r.executor == "numpy"] == [4, 1]

    tiny = parse_graph(TINY)
    monkeypatch.setattr(alexc.bench.torch_peer, "available", lambda: "PyTorch is not installed")
    rows, notes = plan_rows(tiny, list(EXECUTORS), ["infer", "train"], [2])
    assert rows == [
        Row("numpy", "infer", 2),
        Row("numpy", "train", 2),
        Row("onnxruntime", "infer", 2),
    ]
    reasons = {n["executor"]: n["reason"] for n in notes}
    assert reasons["torch"] == "PyTorch is not installed"
    assert "no LRN" in reasons["onnxruntime-lrn-decomposed"]
    assert "inference only" in reasons["onnxruntime"]
    with pytest.raises(AlexcError, match="unknown executor 'tensorflow'"):
        plan_rows(tiny, ["tensorflow"], ["infer"], [1])
    with pytest.raises(AlexcError, match="batch sizes"):
        plan_rows(tiny, ["numpy"], ["infer"], [0])


def test_torch_rows_are_skipped_with_a_note_when_torch_is_missing(monkeypatch):
    import alexc.bench.torch_peer

    monkeypatch.setattr(alexc.bench.torch_peer, "available", lambda: "PyTorch is not installed")
    doc = run_bench(
        parse_graph(TINY), batch_sizes=(2,), threads=1, executors=("torch",), sgemm_repeats=1
    )
    assert doc["results"] == []
    assert doc["skipped"][0] == {"executor": "torch", "reason": "PyTorch is not installed"}


@pytest.mark.parametrize("graph", ["alexnet-mini", "edges"])
def test_torch_lowering_matches_the_numpy_executor(graph):
    """An independent oracle for alexc's forward: torch.nn.functional on the same Graph."""
    _torch_or_skip()
    from alexc.bench.torch_peer import forward_numpy

    g = load_graph(GRAPHS / f"{graph}.yaml") if graph != "edges" else parse_graph(EDGES)
    params = g.init_params(3)
    x = np.random.default_rng(1).standard_normal((4, *g.input.shape), dtype=np.float32)
    ours = compile(g, 4, threads=1).forward(params, x)
    theirs = forward_numpy(g, params, x, threads=1)
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()


def test_every_op_has_a_torch_rule():
    from alexc.bench import torch_peer as bench_torch

    missing = [op.value for op in Op if op not in bench_torch.RULES]
    assert not missing, f"ops the torch lowering lacks: {missing}"


def test_every_op_lowers_to_torch_and_matches_the_numpy_executor():
    """Every output of a graph holding every op, and its declared loss, through torch."""
    _torch_or_skip()
    import torch

    from alexc.bench.torch_peer import TorchProgram

    g = parse_graph(EDGES)
    assert {n.op for n in g.nodes} == set(Op)
    params = g.init_params(3)
    x = np.random.default_rng(1).standard_normal((4, *g.input.shape), dtype=np.float32)
    labels = np.array([0, 4, 1, 1])
    exe = compile(g, 4, threads=1)
    program = TorchProgram(g)
    theirs = program.values(
        program.tensors(params), torch.from_numpy(x), labels=torch.from_numpy(labels)
    )
    for name, ours in exe.outputs(params, x).items():
        assert np.abs(theirs[name].numpy() - ours).max() <= 1e-4 * np.abs(ours).max(), name
    loss, _ = exe.loss_and_grads(params, x, labels, train=False)
    assert float(theirs["xent"]) == pytest.approx(loss, rel=1e-5)


def test_torch_gradients_match_the_numpy_executor(mini):
    """And for the backward pass: torch autograd against alexc's hand-derived gradients."""
    _torch_or_skip()
    import torch

    from alexc.bench.torch_peer import TorchProgram

    params = mini.init_params(5)
    x = np.random.default_rng(2).standard_normal((4, *mini.input.shape), dtype=np.float32)
    labels = np.array([0, 3, 9, 3])
    loss, grads = compile(mini, 4, threads=1).loss_and_grads(params, x, labels, train=False)
    program = TorchProgram(mini)
    tensors = {k: t.requires_grad_(True) for k, t in program.tensors(params).items()}
    logits = program(tensors, torch.from_numpy(x), train=False)
    theirs = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    theirs.backward()
    assert float(theirs.detach()) == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():
        t = tensors[name].grad.numpy()
        assert np.abs(t - g).max() <= 1e-4 * np.abs(g).max(), name


def test_cli_writes_json_and_prints_a_table(run_cli, tmp_path):
    graph = tmp_path / "tiny.yaml"
    graph.write_text(TINY)
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_cli(
        "bench", graph, "-b", "1,4", "-e", "numpy,onnxruntime", "-r", "2", "-t", "1",
        "--json", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert "images/s" in stdout and "tiny" in stdout and f"wrote {out}" in stdout
    doc = json.loads(out.read_text())
    assert {"machine", "results", "graph", "config", "conventions", "skipped"} <= set(doc)
    assert "paired by round" in stdout and "numpy speed / peer" in stdout
    assert {(c["peer"], c["batch_size"]) for c in doc["comparisons"]} == {
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    }
    keys = {(r["executor"], r["mode"], r["batch_size"]) for r in doc["results"]}
    assert keys == {
        ("numpy", "infer", 1),
        ("numpy", "infer", 4),
        ("numpy", "train", 1),
        ("numpy", "train", 4),
        ("onnxruntime", "infer", 1),
        ("onnxruntime", "infer", 4),
    }


def test_cli_markdown_profile_and_no_data_installed(run_cli, tmp_path, monkeypatch):
    """--data without the data set: a note, the other rows, exit 0."""
    import alexc.data.sources

    monkeypatch.setattr(alexc.data.sources, "FASHION_MNIST_DIR", tmp_path / "fashion-mnist")
    graph = tmp_path / "tiny.yaml"
    graph.write_text(TINY)
    code, stdout, stderr = run_cli(
        "bench", graph, "-b", "2", "-e", "numpy", "--modes", "train", "-r", "1", "-t", "1",
        "--markdown", "--profile", "--data",
    )  # fmt: skip
    assert code == 0, stderr
    assert "| numpy | train | 2 |" in stdout
    assert "paired by round" not in stdout  # no peer, no comparison
    assert "sgd update" in stdout and "by op:" in stdout
    assert "Note: data pipeline: not measured: Fashion-MNIST not found at" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["-e", "numpy,tensorflow"], "--executors: unknown name 'tensorflow'"),
        (["-b", "1,many"], "--batch-sizes takes comma-separated positive integers"),
        (["-b", "0"], "--batch-sizes takes comma-separated positive integers"),
        (["-b", ""], "--batch-sizes takes comma-separated positive integers"),
        (["--modes", "eval"], "--modes: unknown name 'eval'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(run_cli, tmp_path, args, message):
    graph = tmp_path / "tiny.yaml"
    graph.write_text(TINY)
    code, stdout, stderr = run_cli("bench", graph, *args)
    assert code == 1
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


# --- the data pipeline (--data) -------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 images of 28x28 in three class folders: alexnet-mini's training data for a test."""
    return color_folder(tmp_path_factory.mktemp("data") / "images", per_class=8, size=28)


def test_data_pipeline_against_a_step_measured_for_the_ratio(mini, images):
    doc = run_bench(
        mini, batch_sizes=(4, 32), threads=1, executors=("numpy",), modes=("infer",),
        repeats=2, sgemm_repeats=1, data=str(images), workers=2,
    )  # fmt: skip
    assert json.loads(json.dumps(doc)) == doc
    assert doc["config"]["data"] == {"source": str(images), "workers": 2}
    (d,) = doc["data"]  # 21 training images (24 less 3 for val) hold no batch of 32: a note
    assert d["batch_size"] == 4 and d["repeats"] == 2
    assert d["batches"] == 2 * data_batches(4) and d["images"] == 4 * d["batches"] >= 512
    assert d["images_per_s_min"] <= d["images_per_s"] <= d["images_per_s_max"]
    assert d["images_per_s"] > 0 and d["step_images_per_s"] > 0
    assert d["ratio"] == pytest.approx(d["images_per_s"] / d["step_images_per_s"])
    # The step was measured for the ratio only: the results keep to the modes asked for.
    assert {r["mode"] for r in doc["results"]} == {"infer"}
    notes = [n["reason"] for n in doc["skipped"] if n["executor"] == "data pipeline"]
    assert notes == [
        f"batch 32: not measured: {images}: 21 image(s), fewer than one batch of 32; "
        "lower the batch size (--batch-size) or add images"
    ]


def test_missing_data_set_is_a_note_and_the_rows_stay(tmp_path):
    missing = tmp_path / "missing"
    doc = run_bench(
        parse_graph(TINY), batch_sizes=(2,), threads=1, executors=("numpy",), repeats=1,
        sgemm_repeats=1, data=str(missing),
    )  # fmt: skip
    assert doc["data"] == [] and len(doc["results"]) == 2
    (note,) = doc["skipped"]
    assert note["executor"] == "data pipeline"
    assert note["reason"].startswith(f"not measured: {missing} does not exist")


def test_cli_data_uses_the_train_row_of_the_same_run(run_cli, images, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_cli(
        "bench", GRAPHS / "alexnet-mini.yaml", "-b", "4", "-e", "numpy", "--modes", "train",
        "-r", "2", "-t", "1", "--data", "--data-source", images, "--workers", "1", "--json", out,
    )  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(out.read_text())
    (d,) = doc["data"]
    (step,) = doc["results"]
    assert d["step_images_per_s"] == step["images_per_s"] > 0 and d["images_per_s"] > 0
    assert d["ratio"] == pytest.approx(d["images_per_s"] / step["images_per_s"])
    assert doc["config"]["data"]["workers"] == 1
    assert "data pipeline, batch 4:" in stdout and "(target >= 2x)" in stdout
