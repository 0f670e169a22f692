"""Lowering, autodiff, memory planning and the NumPy executor on whole graphs."""

import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import alexc
from alexc.bench.memory import traced_peak
from alexc.passes.compile import compile
from alexc.passes.lower import lower
from tests.helpers import GRAPHS, TINY_TRAINABLE

MINI = GRAPHS / "alexnet-mini.yaml"


@pytest.fixture(scope="module")
def mini():
    return alexc.load_graph(MINI)


def _batch(graph, n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *graph.input.shape)).astype(dtype)
    y = rng.integers(0, graph.shapes[graph.outputs[0]][0], n)
    return x, y


def _reference_forward(graph, params, x):
    """An independent forward pass written here with plain NumPy loops over kernel offsets,
    for the ops of alexnet-mini (conv, relu, lrn paper, maxpool with ceil mode, flatten, linear)."""
    env = {graph.input.name: x.astype(np.float64)}
    for n in graph.nodes:
        a = n.attrs
        v = env[n.inputs[0]]
        if n.op.value == "conv":
            w = params[f"{n.name}.weight"].astype(np.float64)
            pt, pl, pb, pr = a["pad"]
            v = np.pad(v, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
            kh, kw = a["kernel"]
            sh, sw = a["stride"]
            oh = (v.shape[2] - kh) // sh + 1
            ow = (v.shape[3] - kw) // sw + 1
            g = a["groups"]
            cin = v.shape[1] // g
            fout = w.shape[0] // g
            out = np.zeros((v.shape[0], w.shape[0], oh, ow))
            for gi in range(g):
                for i in range(kh):
                    for j in range(kw):
                        patch = v[
                            :, gi * cin : (gi + 1) * cin, i : i + sh * oh : sh, j : j + sw * ow : sw
                        ]
                        out[:, gi * fout : (gi + 1) * fout] += np.einsum(
                            "nchw,fc->nfhw", patch, w[gi * fout : (gi + 1) * fout, :, i, j]
                        )
            v = out + params[f"{n.name}.bias"][None, :, None, None]
        elif n.op.value == "relu":
            v = np.maximum(v, 0)
        elif n.op.value == "lrn":
            half = a["size"] // 2
            sq = np.pad(v * v, ((0, 0), (half, half), (0, 0), (0, 0)))
            window = sum(sq[:, i : i + v.shape[1]] for i in range(a["size"]))
            v = v / (a["bias"] + a["alpha"] * window) ** a["beta"]
        elif n.op.value == "maxpool":
            kh, kw = a["kernel"]
            sh, sw = a["stride"]
            assert not any(a["pad"])  # alexnet-mini's pools have none
            rounding = math.ceil if a["ceil_mode"] else math.floor
            oh = rounding((v.shape[2] - kh) / sh) + 1
            ow = rounding((v.shape[3] - kw) / sw) + 1
            # Ceil mode: a last window hanging over the end sees only what is inside.
            extra_h, extra_w = (oh - 1) * sh + kh - v.shape[2], (ow - 1) * sw + kw - v.shape[3]
            v = np.pad(v, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)), constant_values=-np.inf)
            v = np.max(
                [
                    v[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw]
                    for i in range(kh)
                    for j in range(kw)
                ],
                axis=0,
            )
        elif n.op.value == "flatten":
            v = v.reshape(v.shape[0], -1)
        elif n.op.value == "linear":
            v = v @ params[f"{n.name}.weight"].T.astype(np.float64) + params[f"{n.name}.bias"]
        elif n.op.value != "dropout":
            raise NotImplementedError(n.op)
        env[n.name] = v
    return env[graph.outputs[0]]


def test_forward_matches_independent_reference(mini):
    params = mini.init_params(1)
    x, _ = _batch(mini, 3)
    ours = compile(mini, 3, threads=2).forward(params, x)
    ref = _reference_forward(mini, params, x)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_whole_graph_gradients_against_finite_differences(mini):
    """float64, dropout off, central differences along a random direction per parameter."""
    params = {k: v.astype(np.float64) for k, v in mini.init_params(2).items()}
    # The graph file draws conv1 from N(0, 0.01): its outputs are then so small that a step of
    # 1e-7 crosses ReLU and max-pool kinks (at 1e-9 the gradients agree to 1.5e-7, but rounding
    # then swamps the small ones). At Kaiming's scale no kink is crossed.
    params["conv1.weight"] *= np.sqrt(2 / params["conv1.weight"][0].size) / 0.01
    x, y = _batch(mini, 4, seed=3, dtype=np.float64)
    exe = compile(mini, 4)
    _, grads = exe.loss_and_grads(params, x, y, train=False)
    rng = np.random.default_rng(4)
    eps = 1e-7  # small enough that no ReLU or max-pool kink is crossed
    for name in params:
        d = rng.standard_normal(params[name].shape)
        plus = {**params, name: params[name] + eps * d}
        minus = {**params, name: params[name] - eps * d}
        fd = (
            exe.loss_and_grads(plus, x, y, train=False)[0]
            - exe.loss_and_grads(minus, x, y, train=False)[0]
        ) / (2 * eps)
        analytic = float(np.sum(grads[name] * d))
        assert abs(fd - analytic) <= 1e-5 * max(abs(analytic), 1e-3), name


# h is read twice: directly and through a relu.
TWO_PATHS = """
input: {name: x, shape: [3]}
nodes:
  - {name: h, op: linear, units: 4, inputs: [x]}
  - {name: a, op: relu, inputs: [h]}
  - {name: s, op: add, inputs: [a, h]}
"""


def test_gradient_of_input_sum_of_two_paths():
    """A value read by two nodes gets the sum of both gradient contributions (accumulation)."""
    g = alexc.parse_graph(TWO_PATHS + "  - {name: out, op: linear, units: 2, inputs: [s]}\n")
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    x = np.random.default_rng(0).standard_normal((5, 3))
    y = np.array([0, 1, 1, 0, 1])
    exe = compile(g, 5)
    plan = exe.plan(5, training=True, dtype=np.float64)
    assert any(any(s.accumulate) for s in plan.steps if s.backward)
    _, grads = exe.loss_and_grads(params, x, y)
    w, b = params["h.weight"], params["h.bias"]
    h = x @ w.T + b
    s = np.maximum(h, 0) + h
    logits = s @ params["out.weight"].T + params["out.bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), y] -= 1
    ds = p / 5 @ params["out.weight"]
    dh = ds * ((h > 0) + 1.0)
    np.testing.assert_allclose(grads["h.weight"], dh.T @ x, rtol=1e-10)
    np.testing.assert_allclose(grads["h.bias"], dh.sum(0), rtol=1e-10)


def test_inference_plan_strips_dropout_and_keeps_nothing_for_backward():
    paper = alexc.load_graph(GRAPHS / "alexnet.yaml")  # drop6 and drop7 (the mini has none)
    assert any(s.op == "dropout" for s in lower(paper, 4, training=True).steps)
    plan = lower(paper, 4, training=False)
    assert all(s.op != "dropout" for s in plan.steps)
    assert not plan.training and not plan.grads


def test_inference_fuses_relu_into_the_conv_or_linear_before_it(mini):
    relus = [n.name for n in mini.nodes if n.op.value == "relu"]
    infer = lower(mini, 4, training=False)
    fused = {s.outputs[0]: s for s in infer.steps if s.attrs.get("relu")}
    assert set(fused) == set(relus) and all(s.op in ("conv", "linear") for s in fused.values())
    assert all(s.op != "relu" for s in infer.steps)
    # Training keeps every relu: its backward needs the mask.
    train = lower(mini, 4, training=True)
    assert sum(s.op == "relu" for s in train.steps if not s.backward) == len(relus)
    assert not any(s.attrs.get("relu") for s in train.steps)


def test_relu_is_not_fused_when_the_value_before_it_is_read_elsewhere():
    g = alexc.parse_graph(
        TWO_PATHS
        + "  - {name: k, op: linear, units: 2, inputs: [s]}\n"
        + "  - {name: out, op: relu, inputs: [k]}\n"
    )
    plan = lower(g, 2, training=False)
    assert [s.op for s in plan.steps] == ["linear", "relu", "add", "linear"]
    assert plan.steps[-1].attrs["relu"] and plan.steps[-1].outputs == ("out",)
    params = g.init_params(1)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    h = x @ params["h.weight"].T + params["h.bias"]
    k = (np.maximum(h, 0) + h) @ params["k.weight"].T + params["k.bias"]
    np.testing.assert_allclose(compile(g, 2).forward(params, x), np.maximum(k, 0), rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("path", ["alexnet-mini.yaml", "alexnet.yaml", "alexnet-torchvision.yaml"])
def test_every_buffer_is_dropped_where_its_planned_life_ends(path, training):
    """What the executor honours: a step reads only buffers already written and not yet
    dropped, and each buffer is dropped (`free_after`) at the end of its planned life, which
    the planned peak adds up; only results (outputs, parameter gradients) are kept."""
    plan = lower(alexc.load_graph(GRAPHS / path), 8, training=training)
    present, dropped = set(plan.inputs) | set(plan.params), set()
    for i, step in enumerate(plan.steps):
        for name in step.inputs:
            assert name in present and name not in dropped, (i, step.node, name)
        present.update(o for o in step.outputs if o is not None)
        for name in step.free_after:
            assert plan.slots[name].end == i, (i, name)
        dropped.update(step.free_after)
    results = set(plan.outputs) | set(plan.grads.values())
    assert results <= present and not results & dropped
    assert dropped == set(plan.slots) - results


def test_same_seed_same_numbers(mini):
    params = mini.init_params(0)
    x, y = _batch(mini, 8)
    runs = []
    for _ in range(2):
        exe = compile(mini, 8, threads=2, seed=5)
        runs.append(exe.loss_and_grads(params, x, y, train=True))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in params)


def test_dropout_is_on_in_training_only():
    tiny = alexc.parse_graph(TINY_TRAINABLE)  # drop6 (the mini has no dropout)
    params = tiny.init_params(0)
    x, y = _batch(tiny, 8)
    exe = compile(tiny, 8)
    a = exe.loss_and_grads(params, x, y, train=True, rng=np.random.default_rng(1))[0]
    b = exe.loss_and_grads(params, x, y, train=True, rng=np.random.default_rng(2))[0]
    c = exe.loss_and_grads(params, x, y, train=False)[0]
    d = exe.loss_and_grads(params, x, y, train=False)[0]
    assert a != b and c == d


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("path", ["alexnet-mini.yaml", "alexnet-torchvision.yaml"])
def test_buffers_alive_at_once_never_share_arena_bytes(path, training):
    """Every slot (activation, gradient, saved state, scratch) that lives at the same step as
    another sits in other bytes, unless one is a view or in-place result of the other."""
    plan = lower(alexc.load_graph(GRAPHS / path), 8, training=training)
    links = {**plan.aliases, **plan.in_place}

    def family(key):
        kind, name = key
        while kind == "value" and name in links:
            name = links[name]
        return kind, name

    slots = [(("value", n), s) for n, s in plan.slots.items() if s.offset >= 0]
    slots += [(("saved", n), s) for n, s in plan.saved.items()]
    slots += [(("workspace", i), s) for i, s in plan.workspace.items()]
    assert all(s.offset + s.nbytes <= plan.arena_bytes for _, s in slots)
    for i, (a, sa) in enumerate(slots):
        for b, sb in slots[i + 1 :]:
            lives = sa.start <= sb.end and sb.start <= sa.end
            bytes_ = sa.offset < sb.offset + sb.nbytes and sb.offset < sa.offset + sa.nbytes
            assert not (lives and bytes_) or family(a) == family(b), (a, b)
    if training:  # relu writes over the conv output nobody else reads, and dx over dy
        assert plan.in_place["relu1"] == "conv1" and plan.in_place["grad:conv1"] == "grad:relu1"


# Every op, at a size where the arena dwarfs the executor's own bookkeeping.
EVERY_OP = """
name: every-op
input: {name: image, shape: [4, 40, 36]}
nodes:
  - {name: c1, op: conv, filters: 8, kernel: 3, stride: 2, pad: 1, groups: 2}
  - {name: r1, op: relu}
  - {name: n1, op: lrn, size: 3, alpha: 0.3, beta: 0.75, bias: 1.5, convention: onnx}
  - {name: m1, op: maxpool, kernel: 3, stride: 2, pad: 1, ceil_mode: true}
  - {name: a1, op: avgpool, kernel: 3, stride: 2, pad: 1, ceil_mode: true, inputs: [n1]}
  - {name: p1, op: adaptive_avgpool, output: [4, 3], inputs: [m1]}
  - {name: p2, op: adaptive_avgpool, output: [4, 3], inputs: [a1]}
  - {name: s, op: add, inputs: [p1, p2]}
  - {name: cat, op: concat, inputs: [s, p2]}
  - {name: f, op: flatten}
  - {name: d, op: dropout, rate: 0.3}
  - {name: fc, op: linear, units: 5}
  - {name: sm, op: softmax, inputs: [fc]}
  - {name: lsm, op: log_softmax, inputs: [fc]}
  - {name: xent, op: softmax_cross_entropy, inputs: [fc]}
outputs: [fc, sm, lsm]
"""


def _graph_and_step(name, batch, training, threads=1):
    graph = alexc.load_graph(MINI) if name == "mini" else alexc.parse_graph(EVERY_OP)
    assert name == "mini" or {n.op for n in graph.nodes} == set(alexc.ir.Op)
    params = graph.init_params(0)
    x, y = _batch(graph, batch)
    exe = compile(graph, 1, threads=threads)

    def step():
        if training:
            return exe.loss_and_grads(params, x, y)[1]
        return exe.outputs(params, x)

    return exe, step


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name, threads", [("mini", 1), ("mini", 2), ("every-op", 1)])
def test_after_the_first_call_a_step_allocates_no_large_arrays(name, threads, training):
    """The plan is what runs: every activation, gradient, saved array and scratch (each
    thread's block temporaries included) lives in the arena allocated once, so a later call
    allocates (beyond what it returns) under 5% of it, measured by tracemalloc (NumPy reports
    its allocations to it)."""
    exe, step = _graph_and_step(name, 32, training, threads)
    results = step()  # compiles the plan and allocates its arena
    returned = sum(v.nbytes for v in results.values())
    plan = exe.plan(32, training=training)
    measured = traced_peak(step) - returned
    assert measured < 0.05 * plan.arena_bytes, (measured, plan.arena_bytes)


@pytest.mark.parametrize("training", [False, True])
def test_the_measured_peak_is_the_plans_forecast(mini, training):
    """Compiling a plan and running it once allocates its arena, the parameter gradients
    (training) and little else: within 10% of the forecast."""
    exe, step = _graph_and_step("mini", 64, training)
    measured = traced_peak(step)
    plan = exe.plan(64, training=training)
    planned = plan.arena_bytes + (plan.param_bytes // 2 if training else 0)
    assert 0.9 * planned <= measured <= 1.1 * planned, (planned, measured)


def test_bad_input_shape_is_a_clear_error(mini):
    exe = compile(mini, 2)
    with pytest.raises(alexc.AlexcError, match=r"\(N, 1, 28, 28\)"):
        exe.forward(mini.init_params(0), np.zeros((2, 3, 28, 28), np.float32))


def test_training_a_graph_that_ends_in_softmax_uses_its_logits():
    """Imported classifiers often end in a softmax: the loss must read the logits before it."""
    g = alexc.parse_graph("""
input: {name: x, shape: [3]}
nodes:
  - {name: fc, op: linear, units: 4}
  - {name: prob, op: softmax}
""")
    params = {k: v.astype(np.float64) for k, v in g.init_params(0).items()}
    x = np.random.default_rng(1).standard_normal((2, 3))
    y = np.array([1, 3])
    loss, _ = compile(g, 2).loss_and_grads(params, x, y)
    logits = x @ params["fc.weight"].T + params["fc.bias"]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[[0, 1], y].mean(), rel=1e-12)


def test_forward_of_a_graph_whose_output_is_a_dropout():
    g = alexc.parse_graph("""
input: {name: x, shape: [3]}
nodes:
  - {name: fc, op: linear, units: 4}
  - {name: drop, op: dropout, rate: 0.5}
""")
    params = g.init_params(0)
    x = np.ones((2, 3), np.float32)
    out = compile(g, 2).outputs(params, x)
    np.testing.assert_allclose(
        out["drop"], x @ params["fc.weight"].T + params["fc.bias"], rtol=1e-6
    )


def _python(code: str, **env_changes) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(env_changes)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_library_use_changes_nothing_process_wide():
    """Importing alexc and running an executor sets no environment variable and no allocator
    setting: those are `alexc_runtime.configure`'s, which a library user opts into."""
    code = (
        "import os, numpy as np, alexc, alexc_runtime\n"
        f"g = alexc.load_graph({str(MINI)!r})\n"
        "exe = alexc.compile(g, 2)\n"
        "exe.loss_and_grads(g.init_params(0), np.zeros((2, 1, 28, 28), np.float32), [1, 2])\n"
        "print('OPENBLAS_THREAD_TIMEOUT' in os.environ, *alexc_runtime.settings().values())\n"
    )
    assert _python(code) == ["False", "False", "False"]


@pytest.mark.parametrize("numpy_first", [False, True])
def test_configure_sets_the_blas_spin_only_before_numpy_loads(numpy_first):
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: configure says whether
    its setting holds, and sets the variable for child processes either way."""
    code = (
        ("import numpy\n" if numpy_first else "")
        + "import os, alexc_runtime\n"
        + "done = alexc_runtime.configure(blas_thread_timeout=16)['blas_thread_timeout']\n"
        + "print(done, os.environ['OPENBLAS_THREAD_TIMEOUT'])\n"
    )
    assert _python(code) == [str(not numpy_first), "16"]
    assert _python(code, OPENBLAS_THREAD_TIMEOUT="8")[1] == "8"  # the user's value wins


def test_the_alexc_command_configures_before_numpy_loads():
    """The console entry point (alexc_launch) tunes its own process first, then runs the CLI."""
    code = (
        "import sys, types, alexc_runtime, alexc_launch\n"
        "cli = types.ModuleType('alexc.cli')\n"
        "cli.main = lambda: print(*alexc_runtime.settings().values())\n"
        "sys.modules['alexc.cli'] = cli\n"
        "alexc_launch.main()\n"
    )
    glibc = platform.libc_ver()[0] == "glibc"
    assert _python(code) == [str(glibc), "True"]
