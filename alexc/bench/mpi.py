"""`alexc bench --ranks`: training over MPI ranks measured against threads in one process, and
a model of scaling to more ranks and machines from measured per-layer times.

Measured (`measure_ranks`): each configuration is a fresh job of N ranks x T threads (through
`alexc.training.distributed.launch_command`) that times training steps on random images at the
global batch: images/s, the time the helper thread spent in allreduce per step, and the share of it
hidden behind backward (1 - the time the step then waited for it / that time). Each
N-rank row is paired with 1 rank x N*T threads, the same cores used as threads.

Predicted (`predict_scaling`): from per-layer forward/backward times measured here and each
layer's parameter bytes, the step time of N ranks on a link of given bandwidth and latency:
- plain data parallelism: a ring allreduce (2(N-1) latencies + 2(N-1)/N of the bytes) per
  25 MB bucket, buckets leaving in backward order on one link, overlapped with backward;
- Krizhevsky's hybrid ("One weird trick", 2014): conv layers data-parallel (their gradients
  allreduced, overlapped), linear layers model-parallel (each rank holds 1/N of each layer's
  units for the whole batch): no FC gradient traffic, but each FC layer's input is
  all-gathered in forward and its gradient reduce-scattered in backward, on the critical path.
Layer times scale linearly with the per-rank batch (optimistic for small per-rank batches).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import numpy as np

from ..data.loader import batch_share
from ..errors import AlexcError
from ..training.distributed import BUCKET_BYTES, launch_command, process_ranks

LINKS = {"10 Gbit/s": (10e9 / 8, 25e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}  # bytes/s, latency
RANK_COUNTS = (1, 2, 4, 8, 16, 32, 64)
TRANSPORTS = {"shm": {}, "tcp": {"OMPI_MCA_btl": "tcp,self"}}  # Open MPI's loopback TCP


def _worker(graph_path: str, batch: int, threads: int, steps: int, warmup: int) -> None:
    """One rank of a measuring job: rank 0 prints one JSON line of medians."""
    from ..passes.compile import compile
    from ..serial.frontend import load_graph
    from ..training.loop import rank_step
    from ..training.optim import SGD

    ranks = process_ranks()
    graph = load_graph(graph_path)
    params = graph.init_params(0)
    rows = range(batch)[batch_share(batch, *ranks.part)]
    rng = np.random.default_rng([0, batch])
    x = rng.standard_normal((batch, *graph.input.shape), dtype=np.float32)[rows.start : rows.stop]
    y = rng.integers(0, graph.shapes[graph.outputs[0]][0], batch)[rows.start : rows.stop]
    executor = compile(graph, len(y), threads=threads)
    sgd = SGD(params, 0.9, 5e-4, threads=threads)
    averager = ranks.averager()
    step_s, reduce_s, hidden = [], [], []
    for step in range(warmup + steps):
        ranks.sum([0])  # start every rank's step together
        started = time.perf_counter()
        _, _, _, grads = rank_step(executor, params, x, y, 0, step, batch, ranks, averager)
        sgd.step(params, grads, 1e-3)
        elapsed = time.perf_counter() - started
        if step >= warmup:
            step_s.append(elapsed)
            if averager is not None:
                reduce_s.append(averager.reduce_seconds)
                waited = averager.wait_seconds / max(averager.reduce_seconds, 1e-9)
                hidden.append(max(0.0, 1 - waited))  # below 0: waking the thread cost more
    if averager is not None:
        averager.close()
    executor.close()
    if ranks.lead:
        record = {"images_per_s": batch / median(step_s), "step_s": median(step_s)}
        if averager is not None:
            record |= {"allreduce_s": median(reduce_s), "hidden": median(hidden)}
        print(json.dumps(record), flush=True)


def measure_ranks(
    graph_path: Path,
    rank_counts: Sequence[int],
    threads: int,
    batch: int,
    steps: int,
    warmup: int,
    transports: Sequence[str],
    on_row=None,
) -> list[dict]:
    """One row per (ranks, threads, transport) configuration; see the module docstring."""
    configs = []
    for n in rank_counts:
        for transport in transports if n > 1 else ["-"]:
            configs.append((n, threads, transport))
        if n > 1:
            configs.append((1, n * threads, "-"))
    rows = []
    for n, t, transport in dict.fromkeys(configs):
        if on_row is not None:
            on_row(f"{n} rank(s) x {t} thread(s) {transport}")
        program = [sys.executable, "-m", "alexc.bench.mpi", str(graph_path)]
        program += [str(v) for v in (batch, t, steps, warmup)]
        if n == 1:
            command, env = program, None
        else:
            command, env = launch_command(n, program)
            env |= TRANSPORTS[transport]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise AlexcError(f"bench with {n} rank(s): {done.stderr.strip()[-400:]}")
        rows.append({"ranks": n, "threads": t, "transport": transport, "batch_size": batch})
        rows[-1] |= json.loads(lines[-1])
    for row in rows:
        if row["ranks"] > 1:
            same_cores = [
                r["images_per_s"]
                for r in rows
                if r["ranks"] == 1 and r["threads"] == row["ranks"] * row["threads"]
            ]
            row["vs_threads"] = row["images_per_s"] / same_cores[0]
    return rows


def layer_times(graph, batch: int, threads: int, repeats: int = 2) -> list[dict]:
    """Per parameterised stretch of the training step, in backward order: forward and
    backward ms at `batch`, and the parameter bytes whose gradients it makes final; plus the
    SGD update's ms as a last row (params_bytes 0)."""
    from ..passes.compile import compile
    from ..training.optim import SGD
    from .profile import timed_kernels

    params = graph.init_params(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *graph.input.shape), dtype=np.float32)
    y = rng.integers(0, graph.shapes[graph.outputs[0]][0], batch)
    executor = compile(graph, batch, threads=threads)
    plan = executor.plan(batch, training=True)
    sgd = SGD(params, 0.9, 5e-4, threads=threads)
    per_step = [[] for _ in plan.steps]
    updates = []
    log: list = []
    with timed_kernels(executor, log):
        for i in range(1 + repeats):
            log.clear()
            _, grads = executor.loss_and_grads(params, x, y)
            started = time.perf_counter()
            sgd.step(params, grads, 1e-3)
            if i:
                updates.append(time.perf_counter() - started)
                for seconds, (_, _, t) in zip(per_step, log, strict=True):
                    seconds.append(t)
    executor.close()
    owner = {p.name: p.name.rsplit(".", 1)[0] for p in graph.params}
    op_of = {node.name: node.op.value for node in graph.nodes}
    nodes: dict[str, dict] = {}
    for step, seconds in zip(plan.steps, per_step, strict=True):
        row = nodes.setdefault(
            step.node, {"node": step.node, "forward_ms": 0.0, "backward_ms": 0.0, "bytes": 0}
        )
        row["forward_ms" if not step.backward else "backward_ms"] += median(seconds) * 1e3
    for name, value in params.items():
        nodes[owner[name]]["bytes"] += value.nbytes
    # Stretches: each parameterised node with the parameter-free nodes after it (which run
    # before it in backward), so a stretch's gradients are final when its backward ends.
    stretches: list[dict] = []
    for node in graph.nodes:
        row = nodes.get(node.name)
        if row is None:
            continue
        if row["bytes"] or not stretches:
            stretches.append(dict(row, op=op_of[node.name]))
        else:
            for key in ("forward_ms", "backward_ms"):
                stretches[-1][key] += row[key]
    rest = [r for name, r in nodes.items() if name not in op_of]  # the loss node
    for r in rest:
        stretches[-1]["forward_ms"] += r["forward_ms"]
        stretches[-1]["backward_ms"] += r["backward_ms"]
    stretches.reverse()
    stretches.append(
        {
            "node": "sgd update",
            "op": "sgd",
            "forward_ms": 0.0,
            "bytes": 0,
            "backward_ms": median(updates) * 1e3,
        }
    )
    return stretches


def _ring(bytes_: float, n: int, bandwidth: float, latency: float) -> float:
    """Seconds of a ring allreduce of `bytes_` over n ranks."""
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * bytes_ / bandwidth if n > 1 else 0.0


def _gather(bytes_: float, n: int, bandwidth: float, latency: float) -> float:
    """Seconds of an allgather (or reduce-scatter) whose result is `bytes_` on every rank."""
    return (n - 1) * latency + (n - 1) / n * bytes_ / bandwidth if n > 1 else 0.0


def _overlapped(stretches, scale: float, n: int, link, start_ms: float = 0.0) -> tuple:
    """(backward end, last allreduce end) in ms, buckets leaving as gradients become final."""
    bandwidth, latency = link
    clock = link_free = start_ms
    bucket = 0
    for s in stretches:
        clock += s["backward_ms"] * scale
        bucket += s["bytes"]
        if bucket >= BUCKET_BYTES or (s is stretches[-1] and bucket):
            link_free = max(link_free, clock) + _ring(bucket, n, bandwidth, latency) * 1e3
            bucket = 0
    return clock, link_free


def predict_step_ms(stretches, batch: int, measured_batch: int, n: int, link, hybrid: bool):
    """Predicted ms of one step of global batch `batch` over n ranks (see the module doc)."""
    update = stretches[-1]["backward_ms"]
    layers = stretches[:-1]
    scale = batch_share(batch, 0, n).stop / measured_batch  # the largest share sets the pace
    forward = sum(s["forward_ms"] for s in layers) * scale
    total_bytes = sum(s["bytes"] for s in layers)
    if not hybrid:
        end, comm = _overlapped(layers, scale, n, link)
        return forward + max(end, comm) + update
    fc = [s for s in layers if s["op"] == "linear"]
    conv = [s for s in layers if s["op"] != "linear"]
    fc_bytes = sum(s["bytes"] for s in fc)
    # Each FC layer's input (the batch x its in-features, float32) crosses the link twice.
    widths = [s["bytes"] / 4 // s["units"] for s in fc]
    exchange = sum(2 * _gather(batch * w * 4, n, *link) for w in widths) * 1e3
    fc_backward = sum(s["backward_ms"] for s in fc) * scale
    end, comm = _overlapped(conv, scale, n, link, start_ms=fc_backward)
    update_share = update * (total_bytes - fc_bytes + fc_bytes / n) / total_bytes
    return forward + exchange + max(end, comm) + update_share


def predict_scaling(graph, stretches, measured_batch: int, batch: int) -> list[dict]:
    """Images/s and efficiency of 1..64 ranks, for each link and both schemes."""
    units = {n.name: n.attrs.get("units") for n in graph.nodes}
    stretches = [dict(s, units=units.get(s["node"])) for s in stretches]
    rows = []
    for link_name, link in LINKS.items():
        for hybrid in (False, True):
            one = predict_step_ms(stretches, batch, measured_batch, 1, link, False)
            for n in RANK_COUNTS:
                ms = predict_step_ms(stretches, batch, measured_batch, n, link, hybrid)
                rows.append(
                    {
                        "link": link_name,
                        "scheme": "hybrid" if hybrid else "data parallel",
                        "ranks": n,
                        "step_ms": ms,
                        "images_per_s": batch / ms * 1e3,
                        "efficiency": one / (n * ms),
                    }
                )
    return rows


def scaling_limits(rows: Sequence[dict]) -> list[str]:
    """Per link and scheme: where images/s peaks, and the last rank count at >= 50%."""
    lines = []
    for link in LINKS:
        for scheme in ("data parallel", "hybrid"):
            mine = [r for r in rows if r["link"] == link and r["scheme"] == scheme]
            best = max(mine, key=lambda r: r["images_per_s"])
            half = max((r["ranks"] for r in mine if r["efficiency"] >= 0.5), default=1)
            lines.append(
                f"{link}, {scheme}: images/s peak at {best['ranks']} ranks "
                f"({best['images_per_s']:,.0f}/s); efficiency >= 50% up to {half} ranks"
            )
    return lines


if __name__ == "__main__":
    import alexc_runtime

    alexc_runtime.configure(keep_freed_memory=True)  # as the alexc command does for itself
    _worker(sys.argv[1], *(int(v) for v in sys.argv[2:6]))
