"""The per-op profile of the NumPy executor (`alexc bench --profile`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from statistics import mean
from typing import TYPE_CHECKING

from ..errors import AlexcError
from ..training.optim import SGD
from .timing import LR, MOMENTUM, WEIGHT_DECAY

if TYPE_CHECKING:
    from .timing import Bench


@contextlib.contextmanager
def timed_kernels(executor, log: list) -> Iterator[None]:
    """Within the block, every kernel call `executor` (an `alexc.passes.compile.Executor`) makes
    appends (op, backward?, seconds) to `log`, through the executor's `on_step` hook."""
    before = executor.on_step
    executor.on_step = lambda index, step, seconds: log.append((step.op, step.backward, seconds))
    try:
        yield
    finally:
        executor.on_step = before


def profile_numpy(
    bench: Bench, mode: str, batch_size: int, warmup: int, repeats: int, tick
) -> dict:
    """Per-node forward and backward time of the NumPy executor (mean over `repeats` calls).

    Training adds the SGD update; "overhead" is the rest of the call (the executor's own loop,
    gradient accumulation, input checks)."""
    training = mode == "train"
    plan = bench.numpy.plan(batch_size, training=training)
    x, labels = bench.inputs(batch_size)
    params = {k: v.copy() for k, v in bench.params.items()} if training else bench.params
    optimizer = SGD(params, MOMENTUM, WEIGHT_DECAY, threads=bench.threads) if training else None
    log: list = []
    step_seconds = [[] for _ in plan.steps]
    totals, updates = [], []
    with timed_kernels(bench.numpy, log):
        for i in range(warmup + repeats):
            log.clear()
            start = time.perf_counter()
            if training:
                _, grads = bench.numpy.loss_and_grads(params, x, labels)
                update_start = time.perf_counter()
                optimizer.step(params, grads, LR)
                updates.append(time.perf_counter() - update_start)
            else:
                bench.numpy.forward(params, x)
            totals.append(time.perf_counter() - start)
            tick(1)
            if [(op, bw) for op, bw, _ in log] != [(s.op, s.backward) for s in plan.steps]:
                raise AlexcError("the profile's kernel calls do not match the plan's steps")
            if i >= warmup:
                for seconds, (_, _, t) in zip(step_seconds, log, strict=True):
                    seconds.append(t)
    total_ms = mean(totals[warmup:]) * 1e3
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    ops: dict[str, str] = {}
    for step, seconds in zip(plan.steps, step_seconds, strict=True):
        node, op = step.node, step.op
        if not step.backward and step.outputs[0] != node:  # a relu fused into this step
            node, op = f"{node}+{step.outputs[0]}", f"{op}+relu"
        ops.setdefault(node, op)
        into = backward if step.backward else forward
        into[node] = into.get(node, 0.0) + mean(seconds) * 1e3
    rows = []
    for node, op in ops.items():
        f, b = forward.get(node, 0.0), backward.get(node, 0.0) if training else None
        rows.append(_profile_row(node, op, f + (b or 0.0), f, b))
    if training:
        rows.append(_profile_row("sgd update", "sgd", mean(updates[warmup:]) * 1e3))
    rows.append(_profile_row("overhead", "executor", total_ms - sum(r["ms"] for r in rows)))
    by_op: dict[str, float] = {}
    for r in rows:
        r["share"] = r["ms"] / total_ms
        by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["ms"]
    return {
        "mode": mode,
        "batch_size": batch_size,
        "repeats": repeats,
        "total_ms": total_ms,
        "images_per_s": batch_size / total_ms * 1e3,
        "nodes": rows,
        "ops": [
            {"op": op, "ms": ms, "share": ms / total_ms}
            for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])
        ],
    }


def _profile_row(node: str, op: str, ms: float, forward_ms=None, backward_ms=None) -> dict:
    return {"node": node, "op": op, "forward_ms": forward_ms, "backward_ms": backward_ms, "ms": ms}
