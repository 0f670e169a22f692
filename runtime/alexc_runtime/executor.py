"""Runs a Plan: kernel calls in order over a dictionary of named buffers.

A buffer is dropped as soon as its last reader is done (`Step.free_after`), so the process holds
what the plan's liveness analysis says it holds. What a forward kernel saves for its backward is
kept only in training plans, and released by that backward step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
from threadpoolctl import ThreadpoolController

from .kernels import KERNELS, KernelContext
from .malloc import keep_freed_memory
from .plan import Plan
from .threads import ShardPool

_controller = None


def blas_threads(threads: int):
    """A context in which BLAS uses `threads` threads (the executor's own pool is idle then)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=threads, user_api="blas")


class PlanExecutor:
    """Executes one Plan with `threads` threads for both BLAS and the batch-sharded kernels."""

    def __init__(self, plan: Plan, threads: int = 1):
        keep_freed_memory()  # every step allocates afresh: reuse freed pages, not new ones
        self.plan = plan
        self.threads = threads
        self.pool = ShardPool(threads)
        self.grads_final_after = _grads_final_after(plan)

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
        array again."""
        plan = self.plan
        env: dict[str, np.ndarray] = {**params, **feeds}
        keep_saved = plan.training
        saved: dict[str, tuple] = {}
        ctx = KernelContext(pool=self.pool, train=train, rng=rng, grad=keep_saved)
        with blas_threads(self.threads):
            for index, step in enumerate(plan.steps):
                kernel = KERNELS[step.op]
                if step.backward:
                    needs = tuple(out is not None for out in step.outputs)
                    grads = kernel.backward(
                        replace(ctx, needs=needs),
                        step.attrs,
                        env[step.inputs[0]],
                        saved.pop(step.node),
                    )
                    for out, grad, add in zip(step.outputs, grads, step.accumulate, strict=True):
                        if out is not None:
                            # Not in place: a kernel may hand back a view of its upstream grad.
                            env[out] = env[out] + grad if add else grad
                else:
                    y, kept = kernel.forward(ctx, step.attrs, *(env[name] for name in step.inputs))
                    env[step.outputs[0]] = y
                    if keep_saved:
                        saved[step.node] = kept
                for name in step.free_after:
                    env.pop(name, None)
                if on_grad is not None:
                    for param in self.grads_final_after.get(index, ()):
                        on_grad(param, env[plan.grads[param]])
        outputs = {name: env[name] for name in plan.outputs}
        grads = {p: env[g] for p, g in plan.grads.items()}
        return outputs, grads

    def close(self) -> None:
        self.pool.close()


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
