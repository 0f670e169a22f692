"""SGD with momentum and weight decay (the AlexNet paper's update) and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from alexc_runtime.threads import ShardPool

from ..errors import AlexcError, SectionError, is_int, is_number

CHUNK = 1 << 16  # elements per cache-sized piece of the update (256 KiB of float32)


class SGD:
    """The paper's rule, per parameter w with momentum buffer v:

        v <- m * v - wd * lr * w - lr * g
        w <- w + v

    Updates params and buffers in place (float32), with one chunk-sized temporary per thread:
    each tensor is walked in chunks of ``chunk`` elements (cache-sized by default), split over
    ``threads`` threads (elementwise, so the result does not depend on the split)."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        momentum: float,
        weight_decay: float,
        buffers: Mapping[str, np.ndarray] | None = None,
        threads: int = 1,
        chunk: int = CHUNK,
    ):
        self.momentum = momentum
        self.chunk = chunk
        self.weight_decay = weight_decay
        self.buffers = {k: np.zeros_like(v) for k, v in params.items()}
        for k, v in (buffers or {}).items():
            if k in self.buffers and self.buffers[k].shape == v.shape:
                self.buffers[k][...] = v
        # Chunks are split over the runtime's shard pool (its workers exit once the optimizer
        # is garbage-collected).
        self._pool = ShardPool(threads)

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float):
        for name, w in params.items():
            flat_w, flat_v = w.reshape(-1), self.buffers[name].reshape(-1)
            if not (np.shares_memory(flat_w, w) and np.shares_memory(flat_v, self.buffers[name])):
                raise AlexcError(f"SGD updates '{name}' in place: it must be a contiguous array")
            flat_g = grads[name].reshape(-1)

            def update(first: int, last: int, w=flat_w, v=flat_v, g=flat_g) -> None:
                self._update(w, v, g, lr, first * self.chunk, min(last * self.chunk, w.size))

            self._pool.map_range(update, -(-w.size // self.chunk))

    def _update(self, w, v, g, lr: float, start: int, stop: int) -> None:
        """The rule on w[start:stop], chunk by chunk, so the six passes over a chunk hit the
        cache: w, v and g stream through memory once instead of once per pass."""
        m, decay = self.momentum, self.weight_decay * lr
        chunk = self.chunk
        tmp = np.empty(min(chunk, stop - start), w.dtype)  # one per call, not per chunk
        for s in range(start, stop, chunk):
            e = min(s + chunk, stop)
            w_c, v_c, t = w[s:e], v[s:e], tmp[: e - s]
            v_c *= m
            np.multiply(w_c, decay, out=t)
            v_c -= t
            np.multiply(g[s:e], lr, out=t)
            v_c -= t
            w_c += v_c


class Schedule:
    """Learning rate at a point of training: a step list, cosine decay, or divide by `factor`
    on a validation plateau; any of them after an optional linear warm-up.

    Config forms (the `train.schedule` key of a graph file):
        {step: {milestones: [30, 60], factor: 0.1}}
        {plateau: {factor: 0.1, patience: 3}}      # watches validation top-1
        {cosine: {}}                               # from lr down to 0 at the last step
        constant (or absent)
    Each takes `warmup: E`: the rate rises linearly from lr / (steps of E epochs) to lr over the
    first E epochs (fractions allowed), e.g. {cosine: {warmup: 1}}.
    """

    def __init__(self, config, base_lr: float, state: Mapping | None = None, epochs: int = 1):
        self.base_lr = base_lr
        self.epochs = epochs
        self.kind, opts = _parse_schedule(config)
        self.factor = float(opts.get("factor", 0.1))
        self.milestones = sorted(int(m) for m in opts.get("milestones", []))
        self.patience = int(opts.get("patience", 3))
        self.warmup = float(opts.get("warmup", 0))
        self.plateau_lr = base_lr
        self.best = -math.inf
        self.bad_epochs = 0
        if state:
            self.plateau_lr = state["plateau_lr"]
            self.best = state["best"]
            self.bad_epochs = state["bad_epochs"]

    def lr(self, epoch: int, batch: int = 0, batches: int = 1) -> float:
        """The rate for batch `batch` (of `batches` per epoch) of epoch `epoch` (from 0)."""
        done = epoch + batch / batches  # epochs completed before this step
        if self.kind == "step":
            rate = self.base_lr * self.factor ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "plateau":
            rate = self.plateau_lr
        elif self.kind == "cosine":
            rate = 0.5 * self.base_lr * (1 + math.cos(math.pi * min(done / self.epochs, 1.0)))
        else:
            rate = self.base_lr
        if done < self.warmup:
            rate *= min(1.0, (done * batches + 1) / (self.warmup * batches))
        return rate

    def end_epoch(self, metric: float) -> None:
        """Report the epoch's validation top-1 (higher is better)."""
        if self.kind != "plateau":
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.plateau_lr *= self.factor
                self.bad_epochs = 0

    def state(self) -> dict:
        return {"plateau_lr": self.plateau_lr, "best": self.best, "bad_epochs": self.bad_epochs}


def _parse_schedule(config) -> tuple[str, dict]:
    if config in (None, "constant", {}):
        return "constant", {}
    if isinstance(config, Mapping) and len(config) == 1:
        ((kind, opts),) = config.items()
        opts = opts or {}
        known = {
            "constant": {"warmup"},
            "step": {"milestones", "factor", "warmup"},
            "plateau": {"factor", "patience", "warmup"},
            "cosine": {"warmup"},
        }
        if kind in known and isinstance(opts, Mapping) and set(opts) <= known[kind]:
            _check_schedule_values(kind, opts)
            return kind, dict(opts)
    raise SectionError(
        "train",
        "schedule",
        f"schedule {config!r} is not understood; use constant, "
        "{step: {milestones: [30, 60], factor: 0.1}}, {plateau: {factor: 0.1, patience: 3}} "
        "or {cosine: {}}, each optionally with warmup: EPOCHS",
    )


def _check_schedule_values(kind: str, opts: Mapping) -> None:
    def bad(what):
        return SectionError("train", "schedule", f"schedule: {kind}: {what}")

    factor = opts.get("factor", 0.1)
    if not is_number(factor) or not 0 < factor <= 1:
        raise bad(f"factor must be a number in (0, 1] (0.1 divides by 10), got {factor!r}")
    milestones = opts.get("milestones", [])
    if not isinstance(milestones, list) or not all(is_int(m) and m >= 0 for m in milestones):
        raise bad(f"milestones must be a list of epochs (integers >= 0), got {milestones!r}")
    patience = opts.get("patience", 3)
    if not is_int(patience) or patience < 1:
        raise bad(f"patience must be an integer >= 1 (epochs), got {patience!r}")
    warmup = opts.get("warmup", 0)
    if not is_number(warmup) or warmup < 0:
        raise bad(f"warmup must be a number of epochs >= 0, got {warmup!r}")
