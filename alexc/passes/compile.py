"""`alexc.compile`: a Graph bound to the NumPy runtime, with Plans cached per batch size."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from alexc_runtime.executor import PlanExecutor
from alexc_runtime.plan import Plan

from ..errors import AlexcError
from ..ir import Graph
from .lower import LABELS, LOSS, grad_name, lower


class Executor:
    """Runs a Graph on the NumPy runtime: inference, and loss with gradients for training.

    Plans are compiled on demand for each (batch size, mode, dtype) and cached, each with its
    arena (allocated once, when the plan is compiled). `on_step(index, step, seconds)`, when
    set, is called after every kernel call (the profiler's hook)."""

    name = "numpy"

    def __init__(
        self,
        graph: Graph,
        batch_size: int = 1,
        threads: int = 1,
        seed: int = 0,
        label_smoothing: float = 0.0,
    ):
        self.graph = graph
        self.threads = threads
        self.label_smoothing = label_smoothing
        self.rng = np.random.default_rng(seed)
        self.on_step = None
        self._executors: dict[tuple, PlanExecutor] = {}
        self.plan(batch_size, training=False)

    def plan(self, batch_size: int, *, training: bool, dtype=np.float32) -> Plan:
        """The Plan for this batch size and mode (compiled once, then cached)."""
        return self._executor(batch_size, training, np.dtype(dtype)).plan

    def _executor(self, batch_size: int, training: bool, dtype: np.dtype) -> PlanExecutor:
        key = (batch_size, training, dtype.str)
        if key not in self._executors:
            plan = lower(
                self.graph,
                batch_size,
                training=training,
                dtype=dtype,
                label_smoothing=self.label_smoothing,
                threads=self.threads,
            )
            self._executors[key] = PlanExecutor(plan, self.threads)
        exe = self._executors[key]
        exe.on_step = self.on_step
        return exe

    def _check_input(self, x: np.ndarray) -> None:
        want = self.graph.input.shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != tuple(want):
            raise AlexcError(
                f"graph '{self.graph.name}' takes input of shape (N, {', '.join(map(str, want))}), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype not in (np.float32, np.float64):
            raise AlexcError(f"input must be float32 (or float64), got {x.dtype}")

    def outputs(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output for a batch, in inference mode (dropout off)."""
        self._check_input(x)
        exe = self._executor(x.shape[0], False, x.dtype)
        outs, _ = exe.run({self.graph.input.name: x}, params, train=False)
        # Positional: stripping dropout may rename an output to the dropout's input.
        return dict(zip(self.graph.outputs, (outs[o] for o in exe.plan.outputs), strict=True))

    def forward(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """The first graph output (the logits) for a batch, in inference mode."""
        return self.outputs(params, x)[self.graph.outputs[0]]

    def loss_and_grads(
        self,
        params: Mapping[str, np.ndarray],
        x: np.ndarray,
        labels: np.ndarray,
        *,
        train: bool = True,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy over the batch and its gradient for every parameter.

        `train=False` turns dropout off; `rng` draws the dropout masks (default: the
        executor's own generator, seeded at construction)."""
        loss, _, grads = self.train_step(params, x, labels, train=train, rng=rng)
        return loss, grads

    def train_step(self, params, x, labels, *, train=True, rng=None, loss_scale=1.0, on_grad=None):
        """(loss, logits, grads): `loss_and_grads` plus the logits it computed on the way.

        The gradients are those of `loss_scale` times the batch's mean loss (a rank holding n
        of a global batch's N images uses n / N); `on_grad(param, grad)` is called as each
        gradient becomes final during backward (see `PlanExecutor.run`)."""
        self._check_input(x)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (x.shape[0],):
            raise AlexcError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
        exe = self._executor(x.shape[0], True, x.dtype)
        seed = np.full((), loss_scale, x.dtype)
        feeds = {self.graph.input.name: x, LABELS: labels, grad_name(LOSS): seed}
        outs, grads = exe.run(feeds, params, train=train, rng=rng or self.rng, on_grad=on_grad)
        return float(outs[LOSS]), outs[exe.plan.outputs[-1]], grads

    def predictor(self, params: Mapping[str, np.ndarray]) -> Predictor:
        """An object with `.predict(x)`: the same interface as the onnxruntime executor."""
        return Predictor(self, params)

    def close(self) -> None:
        for exe in self._executors.values():
            exe.close()


class Predictor:
    """The NumPy executor bound to parameters, behind the common inference interface."""

    name = "numpy"

    def __init__(self, executor: Executor, params: Mapping[str, np.ndarray]):
        self.executor, self.params = executor, params

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.executor.forward(self.params, x)


def compile(
    graph: Graph, batch_size: int = 1, threads: int = 1, seed: int = 0, label_smoothing: float = 0.0
) -> Executor:
    """Compile `graph` for the NumPy runtime (other batch sizes compile on demand)."""
    return Executor(graph, batch_size, threads, seed, label_smoothing)
