"""Runs a Plan: kernel calls in order, over the plan's arena.

The executor allocates the plan's arena once (one 64-byte aligned byte buffer of
`Plan.arena_bytes`) and binds every activation, gradient, saved array and kernel workspace to
the view its `Slot` gives: kernels write their results into those views (`ctx.output`) and carve
their scratch and saved state from them (`ctx.scratch`, `ctx.keep`), so after the first call a
step allocates no large arrays. Views of inputs (flatten) stay views: the plan gives them their
source's offset (`Plan.aliases`); relu and dropout run in place where the plan gives their
result its input's bytes (`Plan.in_place`). Two things live outside the arena: the caller's
feeds and parameters, and what a call returns (its outputs, copied out so the next call cannot
overwrite them, and parameter gradients, fresh arrays the executor never writes again once
final).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

from .kernels import KERNELS, KernelContext, Space
from .kernels.base import ALIGN, CACHE_BLOCK_BYTES
from .plan import Plan, Slot, Step
from .threads import ShardPool

_controller = None


def blas_threads(threads: int):
    """A context in which BLAS uses `threads` threads (the executor's own pool is idle then)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=threads, user_api="blas")


def aligned_bytes(nbytes: int) -> np.ndarray:
    """A uint8 buffer of `nbytes` whose first byte sits on a 64-byte boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


class PlanExecutor:
    """Executes one Plan with `threads` threads for both BLAS and the batch-sharded kernels.

    `on_step(index, step, seconds)`, when given, is called after every kernel call (the
    profiler's hook). `cache_block_bytes`, `conv_fold` and `conv_block_samples` are the
    kernels' strategy knobs (see `KernelContext`); results never depend on them. One call runs
    at a time (the arena is shared by every call)."""

    def __init__(
        self,
        plan: Plan,
        threads: int = 1,
        *,
        on_step: Callable[[int, Step, float], None] | None = None,
        cache_block_bytes: int = CACHE_BLOCK_BYTES,
        conv_fold: str | None = None,
        conv_block_samples: int | None = None,
    ):
        self.plan = plan
        self.threads = threads
        self.pool = ShardPool(threads)
        self.on_step = on_step
        self.knobs = dict(
            cache_block_bytes=cache_block_bytes,
            conv_fold=conv_fold,
            conv_block_samples=conv_block_samples,
        )
        self.grads_final_after = _grads_final_after(plan)
        self.arena = aligned_bytes(plan.arena_bytes)
        dtype = np.dtype(plan.dtype)
        # Feeds are the caller's arrays; their slots (kept for the forecast) are not bound.
        # An alias is the view its kernel returns, at its source's offset.
        self.views = {
            name: self._view(slot, dtype)
            for name, slot in plan.slots.items()
            if name not in plan.inputs and name not in plan.aliases
        }
        self._bound = [self._bind(index, step) for index, step in enumerate(plan.steps)]
        self._lock = threading.Lock()

    def _bind(self, index: int, step: Step) -> tuple:
        """What a step's context gets from the arena, found once rather than at every call:
        (needs, result views, scratch bytes, keep bytes). A backward gradient that adds to an
        earlier one gets no view: it is computed aside, then added."""
        scratch = self._bytes(self.plan.workspace.get(index))
        if step.backward:
            needs = tuple(out is not None for out in step.outputs)
            outs = tuple(
                None if out is None or add else self.views.get(out)
                for out, add in zip(step.outputs, step.accumulate, strict=True)
            )
            return needs, outs, scratch, None
        keep = self._bytes(self.plan.saved.get(step.node))
        return None, (self.views.get(step.outputs[0]),), scratch, keep

    def _view(self, slot: Slot, dtype: np.dtype) -> np.ndarray:
        return self._bytes(slot).view(dtype).reshape(slot.shape)

    def _bytes(self, slot: Slot | None) -> np.ndarray | None:
        return None if slot is None else self.arena[slot.offset : slot.offset + slot.nbytes]

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        params: Mapping[str, np.ndarray],
        *,
        train: bool = False,
        rng: np.random.Generator | None = None,
        on_grad: Callable[[str, np.ndarray], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(outputs, parameter gradients); gradients are empty for an inference plan.

        `on_grad(param, grad)` is called as soon as a parameter's gradient is final, in the
        middle of the backward pass (the last layers' first), so a caller can start
        communicating it while the rest of backward runs. The executor never writes that
        array again. Outputs are copies: the next call does not change them."""
        with self._lock, blas_threads(self.threads):
            return self._run(feeds, params, train, rng, on_grad)

    def _run(self, feeds, params, train, rng, on_grad):
        plan = self.plan
        env: dict[str, np.ndarray] = {**params, **feeds}
        keep_saved = plan.training
        saved: dict[str, tuple] = {}
        pool, knobs = self.pool, self.knobs
        timer = _Timer(self.on_step)
        for index, step in enumerate(plan.steps):
            kernel = KERNELS[step.op]
            needs, outs, scratch, keep = self._bound[index]
            # Built directly, not with dataclasses.replace: this runs for every step.
            ctx = KernelContext(
                pool, train, rng, keep_saved, needs, outs, Space(scratch), Space(keep), **knobs
            )
            if step.backward:
                timer.start()
                grads = kernel.backward(ctx, step.attrs, env[step.inputs[0]], saved.pop(step.node))
                for out, grad, view, add in zip(
                    step.outputs, grads, outs, step.accumulate, strict=True
                ):
                    if out is None:
                        continue
                    if add:
                        np.add(env[out], grad, out=env[out])
                    else:
                        env[out] = _into(view, grad)
                timer.stop(index, step)
            else:
                out = step.outputs[0]
                timer.start()
                y, kept = kernel.forward(ctx, step.attrs, *(env[name] for name in step.inputs))
                env[out] = _into(outs[0], y)
                timer.stop(index, step)
                if keep_saved:
                    saved[step.node] = kept
            for name in step.free_after:
                env.pop(name, None)
            if on_grad is not None:
                for param in self.grads_final_after.get(index, ()):
                    on_grad(param, env[plan.grads[param]])
        outputs = {name: env[name].copy() for name in plan.outputs}
        grads = {p: env[g] for p, g in plan.grads.items()}
        return outputs, grads

    def close(self) -> None:
        self.pool.close()


def _into(view: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """The planned view holding `result` (copied there when the kernel returned another array,
    e.g. x itself from dropout at inference, or dy from add's backward)."""
    if view is None or result is view:
        return result
    np.copyto(view, result)
    return view


class _Timer:
    """Times each kernel call for the `on_step` hook; does nothing without one."""

    def __init__(self, on_step):
        self.on_step = on_step
        self.began = 0.0

    def start(self) -> None:
        if self.on_step is not None:
            self.began = time.perf_counter()

    def stop(self, index: int, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(index, step, time.perf_counter() - self.began)


def _grads_final_after(plan: Plan) -> dict[int, tuple[str, ...]]:
    """Step index -> the parameters whose gradient that step writes for the last time."""
    param_of = {grad: param for param, grad in plan.grads.items()}
    last = {}
    for index, step in enumerate(plan.steps):
        for out in step.outputs if step.backward else ():
            if out in param_of:
                last[param_of[out]] = index
    final: dict[int, tuple[str, ...]] = {}
    for param in plan.grads:  # one no step writes (never expected) is reported at the end
        index = last.get(param, len(plan.steps) - 1)
        final[index] = (*final.get(index, ()), param)
    return final
