"""Timing rounds behind `alexc bench`: speed, GFLOP/s and peak memory of every executor.

Every public function returns plain data (what `alexc bench --json` writes); the CLI draws it.

Conventions (also written into the JSON, under "conventions"):
- latency is the wall time of one call on a whole batch, after `warmup` untimed calls; images/s
  is batch / median latency (min and max images/s come from the max and min latency);
- the rows of one mode and batch size are timed in rounds, one call of each row per round, so a
  change in the shared machine's speed falls on all of them alike; the comparisons pair them by
  round: NumPy's speed over a peer's is the median over rounds of peer latency / NumPy latency;
- an inference call does `graph.total_flops` per image; a training step (forward, backward and the
  SGD update) counts 3x that: backward does two GEMMs of forward's size per layer (the update and
  the input gradient conv1 skips are ignored); GFLOP/s = FLOPs per image * batch / median latency;
- the machine's sgemm peak is NumPy float32 matmul on AlexNet-shaped GEMMs with the same thread
  count: the median GFLOP/s of each shape over its repeats, and the best shape is the peak;
- peak memory (MB = 10^6 bytes) is what the row needs beyond its input batch, parameters
  included. NumPy rows: the parameters (and the momentum buffers when training) and the plan's
  arena (allocated once, when the plan is compiled) plus tracemalloc's peak during one call
  (NumPy reports its allocations to tracemalloc). onnxruntime and torch rows:
  growth of this process's resident memory (VmHWM after the timed calls, VmHWM reset after
  warm-up, minus VmRSS before the executor was built), so their own copy of the weights counts;
  the libraries' one-time set-up is excluded by a batch-1 call before each one's first row.
- the data pipeline (with `data`): `alexc train`'s own training loader on the graph's data
  section, consumed as fast as it delivers, alone (no training step runs beside it); each repeat
  takes at least DATA_IMAGES images, epoch after epoch; ratio = its images/s over the NumPy
  training step's at the same batch size (the performance target is >= 2).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from statistics import median

import numpy as np
from alexc_runtime import settings

from ..errors import AlexcError
from ..ir import Graph, Op
from ..passes.compile import compile as compile_graph
from ..training.loop import training_data, training_loader
from ..training.optim import SGD
from .compare import compare
from .machine import machine_info
from .memory import PEAK_METHODS, proc_status, release_free_memory, reset_hwm, traced_peak

EXECUTORS = ("numpy", "onnxruntime", "onnxruntime-lrn-decomposed", "torch")
MODES = ("infer", "train")
TRAINS = {"numpy", "torch"}  # executors with a training step
TRAIN_FLOPS_FACTOR = 3
MB = 1e6
DATA_IMAGES = 512  # the least images one timed repeat of the data pipeline takes
DATA_TARGET = 2.0  # the pipeline should deliver at least this many times the step's images/s
# The training step's optimizer, as the paper's recipe sets it (lr only affects the numbers).
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 5e-4

CONVENTIONS = {
    "latency_ms": "wall time of one call on the whole batch, after warm-up calls",
    "images_per_s": "batch_size / median latency (min/max from the max/min latency)",
    "gflops": "flops_per_image * batch_size / median latency / 1e9",
    "flops_per_image": f"graph.total_flops for infer; {TRAIN_FLOPS_FACTOR}x that for train",
    "share_of_peak": "gflops / machine.sgemm_peak_gflops",
    "malloc_keeps_freed_memory": "glibc keeps freed memory mapped for reuse, for every row "
    "(alexc_runtime.configure, which the alexc command calls; False where the user tuned malloc, "
    "it is not glibc, or nobody configured it)",
    "sgemm_peak_gflops": "best per-shape median of NumPy float32 matmul, same thread count",
    "peak_mb": "memory the row needs beyond its input batch, parameters included; 1 MB = 1e6 B",
    "planned_peak_mb": "numpy rows: the memory plan's peak (parameters, their gradients when "
    "training, and the arena: activations, gradients, saved state, scratch; no optimizer state)",
    "comparisons.speed": "numpy images/s over the peer's, same mode and batch: the median (min, "
    "max) over rounds of the peer's latency / numpy's latency in the same round",
    "comparisons.memory": "numpy peak_mb / the peer's peak_mb (None when either is unknown)",
    "data.images_per_s": "images per second alexc train's training loader delivers, consumed "
    f"as fast as it can, alone: median over repeats of >= {DATA_IMAGES} images each",
    "data.ratio": f"data images_per_s / numpy train images_per_s, same batch (target >= "
    f"{DATA_TARGET:g})",
}


@dataclass(frozen=True)
class Row:
    """One measurement to make: an executor, a mode and a batch size."""

    executor: str
    mode: str
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.executor} {self.mode} batch {self.batch_size}"


# --- the executors --------------------------------------------------------------------------


@dataclass
class _Setup:
    """A row made ready: the call to time, and how its peak memory is measured."""

    call: Callable[[], object]
    peak_method: str  # "tracemalloc" or "rss"
    held_bytes: int = 0  # tracemalloc rows: what the row holds before the call (params, ...)
    extra: dict = field(default_factory=dict)  # more keys for the row's result


class Bench:
    """Builds each row's call for one graph, sharing parameters, inputs and exports."""

    def __init__(self, graph: Graph, threads: int, seed: int):
        self.graph, self.threads, self.seed = graph, threads, seed
        self.params = graph.init_params(seed)
        self.param_bytes = sum(v.nbytes for v in self.params.values())
        self.numpy = compile_graph(graph, 1, threads=threads, seed=seed)
        self._onnx: dict[str, bytes] = {}
        self._torch = None
        self._batch: tuple[int, np.ndarray, np.ndarray] | None = None  # the latest inputs

    def close(self) -> None:
        self.numpy.close()

    def inputs(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A seeded random batch and labels (the same for every executor)."""
        if self._batch is None or self._batch[0] != batch_size:
            rng = np.random.default_rng([self.seed, batch_size])
            x = rng.standard_normal((batch_size, *self.graph.input.shape), dtype=np.float32)
            classes = self.graph.shapes[self.graph.outputs[0]][0]
            self._batch = (batch_size, x, rng.integers(0, classes, batch_size))
        return self._batch[1:]

    def prepare(self, row: Row) -> None:
        """Make what a row shares with others (inputs, the ONNX export, the torch program), so
        building the row itself allocates only what the executor needs."""
        self.inputs(row.batch_size)
        if row.executor.startswith("onnxruntime"):
            self.onnx_model(self._lrn_form(row))
        elif row.executor == "torch":
            self.torch_program()

    def setup(self, row: Row) -> _Setup:
        x, labels = self.inputs(row.batch_size)
        if row.executor == "numpy":
            return self._numpy(row, x, labels)
        if row.executor.startswith("onnxruntime"):
            return self._onnxruntime(row, x)
        return self._torch_row(row, x, labels)

    def _numpy(self, row: Row, x, labels) -> _Setup:
        exe = self.numpy
        training = row.mode == "train"
        plan = exe.plan(row.batch_size, training=training)  # allocates the plan's arena
        extra = {"planned_peak_mb": plan.planned_peak_bytes / MB}
        held = plan.arena_bytes + self.param_bytes
        if not training:
            predictor = exe.predictor(self.params)
            return _Setup(lambda: predictor.predict(x), "tracemalloc", held, extra)
        params = {k: v.copy() for k, v in self.params.items()}  # the update changes them
        optimizer = SGD(params, MOMENTUM, WEIGHT_DECAY, threads=self.threads)

        def step():
            _, grads = exe.loss_and_grads(params, x, labels)
            optimizer.step(params, grads, LR)

        return _Setup(step, "tracemalloc", held + self.param_bytes, extra)

    @staticmethod
    def _lrn_form(row: Row) -> str:
        return "decomposed" if row.executor.endswith("lrn-decomposed") else "node"

    def onnx_model(self, form: str) -> bytes:
        if form not in self._onnx:
            from ..serial.onnx_export import export_onnx

            model = export_onnx(self.graph, self.params, lrn=form)
            self._onnx[form] = model.SerializeToString()
        return self._onnx[form]

    def _onnxruntime(self, row: Row, x) -> _Setup:
        from alexc_runtime.ort import OrtPredictor

        model = self.onnx_model(self._lrn_form(row))
        predictor = OrtPredictor(model, self.threads)
        return _Setup(lambda: predictor.predict(x), "rss")

    def torch_program(self):
        if self._torch is None:
            from .torch_peer import TorchProgram, set_threads

            set_threads(self.threads)
            self._torch = TorchProgram(self.graph)
        return self._torch

    def _torch_row(self, row: Row, x, labels) -> _Setup:
        from .torch_peer import TorchTrainer

        program = self.torch_program()
        torch = program.torch
        torch.manual_seed(self.seed)
        xt = torch.from_numpy(x)  # shares x's memory: inputs are outside every row's peak
        if row.mode == "infer":
            params = program.tensors(self.params)

            def infer():
                with torch.inference_mode():
                    return program(params, xt)

            return _Setup(infer, "rss")
        trainer = TorchTrainer(
            program, self.params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        yt = torch.from_numpy(labels)
        return _Setup(lambda: trainer.step(xt, yt), "rss")


def plan_rows(
    graph: Graph, executors: Sequence[str], modes: Sequence[str], batch_sizes: Sequence[int]
) -> tuple[list[Row], list[dict]]:
    """The rows to measure, and a note for every executor or mode left out and why.

    Executors run in a fixed order (numpy, onnxruntime, torch) whatever order they are asked
    in, and so within each round of timed calls: torch last, in case its OpenMP workers still
    spin after a call (measured here: no slower NumPy or onnxruntime call right after torch's).
    "onnxruntime" on a graph with LRN means both LRN forms (DESIGN §7: the node form is slow)."""
    unknown = [e for e in executors if e not in EXECUTORS]
    if unknown:
        raise AlexcError(f"unknown executor '{unknown[0]}'; choose from {', '.join(EXECUTORS)}")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise AlexcError(f"unknown mode '{bad_modes[0]}'; choose from {', '.join(MODES)}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise AlexcError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    has_lrn = any(n.op is Op.LRN for n in graph.nodes)
    wanted = set(executors)
    if "onnxruntime" in wanted and has_lrn:
        wanted.add("onnxruntime-lrn-decomposed")
    notes = []
    if "onnxruntime-lrn-decomposed" in wanted and not has_lrn:
        wanted.discard("onnxruntime-lrn-decomposed")
        notes.append(
            {"executor": "onnxruntime-lrn-decomposed", "reason": f"{graph.name} has no LRN"}
        )
    if "torch" in wanted:
        from .torch_peer import available

        reason = available()
        if reason is not None:
            wanted.discard("torch")
            notes.append({"executor": "torch", "reason": reason})
    if "train" in modes and wanted - TRAINS:
        for e in sorted(wanted - TRAINS):
            notes.append({"executor": e, "reason": "inference only (no training step)"})
    rows = [
        Row(e, m, b)
        for e in EXECUTORS
        if e in wanted
        for m in MODES
        if m in modes and (m == "infer" or e in TRAINS)
        for b in dict.fromkeys(batch_sizes)
    ]
    return rows, notes


def _uses_rss(row: Row) -> bool:
    return row.executor != "numpy"


def _ready(bench: Bench, row: Row, warmup: int, primed: set, tick) -> tuple[_Setup, dict]:
    """Build a row, warm it up, and take its peak memory during one call of its own."""
    bench.prepare(row)
    if _uses_rss(row):
        if (row.executor, row.mode) not in primed:
            # One-time library set-up (thread pools, allocators, autograd) stays resident for
            # the rest of the process: keep it out of the first row's memory growth.
            primed.add((row.executor, row.mode))
            bench.setup(Row(row.executor, row.mode, 1)).call()
        release_free_memory()
        baseline = proc_status()["VmRSS"]
    ready = bench.setup(row)
    for _ in range(warmup):
        ready.call()
        tick(1)
    if not _uses_rss(row):
        peak, method = (ready.held_bytes + traced_peak(ready.call)) / MB, "tracemalloc"
    else:
        # What building and warm-up freed is no part of a call's footprint; with freed memory
        # kept mapped (alexc_runtime.malloc) it would otherwise stay resident and count.
        release_free_memory()
        measurable = reset_hwm()
        ready.call()
        peak, method = (proc_status()["VmHWM"] - baseline) / MB, "rss"
        if not measurable:
            peak, method = None, "unavailable (VmHWM cannot be reset here)"
    tick(1)
    return ready, {"peak_mb": peak, "peak_method": method}


def _measure_group(
    bench: Bench,
    rows: Sequence[Row],
    warmup: int,
    repeats: int,
    peak_gflops: float,
    primed: set,
    on_call: Callable[[str, int], None] | None,
) -> list[dict]:
    """Rows of one mode and batch size, in rounds: each row is built, warmed up and its memory
    taken in turn; then every round times one call of each row, in the rows' order. A change in
    the machine's speed during the run (it is shared) thus falls on all rows alike, and the
    latencies of one round can be compared pairwise (`compare`)."""
    ticks = {row: _ticker(on_call, row.label) for row in rows}
    readied = [(row, *_ready(bench, row, warmup, primed, ticks[row])) for row in rows]
    times: dict[Row, list[float]] = {row: [] for row in rows}
    for _ in range(repeats):
        for row, ready, _ in readied:
            start = time.perf_counter()
            ready.call()
            times[row].append(time.perf_counter() - start)
            ticks[row](1)
    return [
        _result(bench, row, warmup, times[row], peak_gflops, ready, memory)
        for row, ready, memory in readied
    ]


def _result(
    bench: Bench,
    row: Row,
    warmup: int,
    times: list,
    peak_gflops: float,
    ready: _Setup,
    memory: dict,
) -> dict:
    """A row's JSON record from its timed latencies (seconds, in round order) and memory."""
    b = row.batch_size
    flops = bench.graph.total_flops * (TRAIN_FLOPS_FACTOR if row.mode == "train" else 1)
    mid = median(times)
    gflops = flops * b / mid / 1e9
    return {
        "executor": row.executor,
        "mode": row.mode,
        "batch_size": b,
        "threads": bench.threads,
        "warmup": warmup,
        "repeats": len(times),
        "latency_ms": mid * 1e3,
        "latency_ms_min": min(times) * 1e3,
        "latency_ms_max": max(times) * 1e3,
        "latencies_ms": [t * 1e3 for t in times],
        "images_per_s": b / mid,
        "images_per_s_min": b / max(times),
        "images_per_s_max": b / min(times),
        "flops_per_image": flops,
        "gflops": gflops,
        "share_of_peak": gflops / peak_gflops,
        **memory,
        **ready.extra,
    }


def calls_per_row(row: Row, warmup: int, repeats: int) -> int:
    """How many calls a row makes (for progress bars): warm-up, timed, and the memory one."""
    return warmup + repeats + 1


# --- the data pipeline ----------------------------------------------------------------------


def data_batches(batch_size: int) -> int:
    """Batches in one repeat of the data pipeline's timing: at least DATA_IMAGES images."""
    return -(-DATA_IMAGES // batch_size)


def data_calls(rows: Sequence[Row], batch_sizes: Sequence[int], warmup: int, repeats: int) -> int:
    """How many batches and step calls `run_bench(data=...)` adds (for progress bars)."""
    step = [Row("numpy", "train", b) for b in dict.fromkeys(batch_sizes)]
    return sum(
        (warmup + repeats) * data_batches(r.batch_size)
        + (0 if r in rows else calls_per_row(r, warmup, repeats))
        for r in step
    )


def _epochs(loader) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The loader's batches, epoch after epoch, as training takes them."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        delivered = False
        for batch in loader:
            delivered = True
            yield batch
        if not delivered:
            raise AlexcError(
                f"the data set has no full batch of {loader.batch_size} readable images"
            )


def measure_data(
    graph: Graph,
    data: str,
    batch_sizes: Sequence[int],
    *,
    seed: int,
    workers: int,
    warmup: int,
    repeats: int,
    on_call: Callable[[str, int], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Images/s of `alexc train`'s training loader on `data`, per batch size; returns the
    measurements and a note for each batch size (or the whole data set) left out and why."""
    try:
        source, _, augment = training_data(graph, data)
    except AlexcError as e:
        return [], [{"executor": "data pipeline", "reason": f"not measured: {e}"}]
    found, notes = [], []
    for b in dict.fromkeys(batch_sizes):
        tick = _ticker(on_call, f"data pipeline batch {b}")
        group, rates, images = data_batches(b), [], 0
        try:
            loader = training_loader(source, augment, b, seed, workers)
            with loader, contextlib.closing(_epochs(loader)) as batches:
                for repeat in range(warmup + repeats):
                    start, count = time.perf_counter(), 0
                    for _ in range(group):
                        count += len(next(batches)[1])
                        tick(1)
                    if repeat >= warmup:
                        rates.append(count / (time.perf_counter() - start))
                        images += count
        except AlexcError as e:
            notes.append({"executor": "data pipeline", "reason": f"batch {b}: not measured: {e}"})
            continue
        found.append(
            {
                "batch_size": b,
                "images_per_s": median(rates),
                "images_per_s_min": min(rates),
                "images_per_s_max": max(rates),
                "repeats": repeats,
                "batches": repeats * group,
                "images": images,
            }
        )
    return found, notes


def run_bench(
    graph: Graph,
    *,
    batch_sizes: Sequence[int] = (1, 16, 64),
    threads: int = 2,
    executors: Sequence[str] = ("numpy", "onnxruntime", "torch"),
    modes: Sequence[str] = MODES,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    profile: bool = False,
    sgemm_repeats: int = 5,
    on_call: Callable[[str, int], None] | None = None,
    rows: tuple[list[Row], list[dict]] | None = None,
    data: str | None = None,
    workers: int = 2,
) -> dict:
    """Measure every (executor, mode, batch size) row; returns the JSON document `bench` writes.

    `on_call(label, n)` is told after every n executor calls (for a progress bar); `rows` are
    `plan_rows(...)`'s answer when the caller already has it. With `data` (a data set as
    `alexc train --data` takes it), also time the training data pipeline against the NumPy
    training step (measured for the purpose where `modes` leave it out)."""
    from .profile import profile_numpy  # profile.py builds on this module's Bench

    if repeats < 1 or warmup < 0 or threads < 1 or workers < 1:
        raise AlexcError("repeats, threads and workers must be >= 1, warmup >= 0")
    planned, notes = rows or plan_rows(graph, executors, modes, batch_sizes)
    # The allocator setting `alexc_runtime.configure` chose for this process (the `alexc`
    # command keeps freed memory), the same for every row.
    keeps_freed = settings()["keep_freed_memory"]
    machine = {**machine_info(threads, sgemm_repeats), "malloc_keeps_freed_memory": keeps_freed}
    peak = machine["sgemm_peak_gflops"]
    pipeline = []
    if data is not None:  # first: torch's spinning workers would slow it (see plan_rows)
        pipeline, data_notes = measure_data(
            graph,
            data,
            batch_sizes,
            seed=seed,
            workers=workers,
            warmup=warmup,
            repeats=repeats,
            on_call=on_call,
        )
        notes = [*notes, *data_notes]
    bench = Bench(graph, threads, seed)
    results, profiles, primed = [], [], set()
    try:
        for d in pipeline:
            row = Row("numpy", "train", d["batch_size"])
            if row not in planned:
                results += _measure_group(bench, [row], warmup, repeats, peak, primed, on_call)
        if profile:
            for mode in (m for m in MODES if m in modes):
                for b in dict.fromkeys(batch_sizes):
                    tick = _ticker(on_call, f"profile numpy {mode} batch {b}")
                    profiles.append(profile_numpy(bench, mode, b, warmup, repeats, tick))
        groups: dict[tuple[str, int], list[Row]] = {}
        for row in planned:
            groups.setdefault((row.mode, row.batch_size), []).append(row)
        for group in groups.values():
            results += _measure_group(bench, group, warmup, repeats, peak, primed, on_call)
    finally:
        bench.close()
    steps = {Row(r["executor"], r["mode"], r["batch_size"]): r for r in results}
    results = [steps[row] for row in planned]  # the planned order: executor, mode, batch
    for d in pipeline:
        step = steps[Row("numpy", "train", d["batch_size"])]["images_per_s"]
        d.update(step_images_per_s=step, ratio=d["images_per_s"] / step)
    document = {
        "alexc_bench": 1,
        "graph": {
            "name": graph.name,
            "source": graph.source,
            "params": graph.num_params,
            "param_mb": bench.param_bytes / MB,
            "flops_per_image": graph.total_flops,
            "input_shape": list(graph.input.shape),
        },
        "config": {
            "batch_sizes": list(dict.fromkeys(batch_sizes)),
            "threads": threads,
            "executors": list(executors),
            "modes": [m for m in MODES if m in modes],
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "sgd": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
            "data": None if data is None else {"source": str(data), "workers": workers},
        },
        "conventions": {**CONVENTIONS, "peak_method": PEAK_METHODS},
        "machine": machine,
        "results": results,
        "comparisons": compare(results),
        "skipped": notes,
    }
    if profile:
        document["profile"] = profiles
    if data is not None:
        document["data"] = pipeline
    return document


def _ticker(on_call, label) -> Callable[[int], None]:
    return (lambda n: on_call(label, n)) if on_call else (lambda n: None)
