"""relu, dropout and add: elementwise ops, forward and backward."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import prod

import numpy as np

from alexc_runtime.kernels.base import KernelContext, block_scratch_bytes, shard, shard_blocks

# Below this many elements a thread hop costs more than the pass it would split.
SHARD_MIN_ELEMENTS = 1 << 16


def _map_batch(ctx: KernelContext, fn: Callable[[object], object], x: np.ndarray) -> None:
    """Run ``fn(index)`` over ``x``: index is a slice of samples, or ``...`` for all of x at once.

    Shards over the batch axis only when ``x`` is big enough; 0-d arrays run whole.
    """
    if x.ndim == 0 or x.size < SHARD_MIN_ELEMENTS:
        fn(...)
    else:
        shard(ctx, lambda s, e: fn(slice(s, e)), x.shape[0])


# -- relu ------------------------------------------------------------------------------------


def relu_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = max(x, 0). saved = (y,), the output itself (y > 0 exactly where x > 0); () without
    ctx.grad. y may be x itself (the plan writes relu in place)."""
    y = ctx.output(x.shape, x.dtype)
    _map_batch(ctx, lambda i: np.maximum(x[i], 0, out=y[i]), x)
    return y, ((y,) if ctx.grad else ())


def relu_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = dy where y > 0, else 0 (the subgradient at 0 is 0). dx may be dy itself."""
    (y,) = saved
    dx = ctx.output(dy.shape, dy.dtype)

    def run(s: int, e: int) -> None:
        positive = np.greater(y[s:e], 0, out=ctx.temp(y[s:e].shape, bool))
        np.multiply(dy[s:e], positive, out=dx[s:e])

    if dy.size < SHARD_MIN_ELEMENTS:
        run(0, len(dy))
    else:
        shard_blocks(ctx, run, len(dy), dy[:1].nbytes, dy[:1].size)
    return (dx,)


def relu_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    """(forward, backward) scratch: backward's bool y > 0 for a block of samples per chunk."""
    n, elements = out[0], prod(out)
    if elements < SHARD_MIN_ELEMENTS:
        return 0, 0
    per_sample = elements // n
    return 0, block_scratch_bytes(n, per_sample * itemsize, per_sample, threads)


# -- dropout ---------------------------------------------------------------------------------


def dropout_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Inverted dropout: y = x * mask / (1 - rate) when training, else y = x (the same array).

    The mask keeps an element when a float32 uniform draw is >= rate, so it depends only on the
    RNG state and x's shape (not x's dtype). saved = (mask, scale) with mask a bool array of x's
    shape, or () at inference.
    """
    rate = float(attrs["rate"])
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if not ctx.train or rate == 0.0:
        return x, ()
    if ctx.rng is None:
        raise ValueError("dropout in training mode needs ctx.rng (a seeded numpy Generator)")
    # The draws are a temporary of the rng's (dropout follows the small linear layers).
    draws = ctx.rng.random(x.shape, dtype=np.float32)
    mask = np.greater_equal(draws, np.float32(rate), out=ctx.keep.empty(x.shape, bool))
    scale = 1.0 / (1.0 - rate)
    y = np.multiply(x, mask, out=ctx.output(x.shape, x.dtype))
    y *= scale
    return y, (mask, scale)


def dropout_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = dy * mask / (1 - rate) with the forward mask; dy itself at inference."""
    if not saved:
        return (dy,)
    mask, scale = saved
    dx = np.multiply(dy, mask, out=ctx.output(dy.shape, dy.dtype))
    dx *= scale
    return (dx,)


# -- add -------------------------------------------------------------------------------------


def add_forward(
    ctx: KernelContext, attrs: Mapping, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """y = a + b, same shapes and dtypes (no broadcasting). saved = ()."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
            f"add needs equal shapes and dtypes, got {a.shape} {a.dtype} and {b.shape} {b.dtype}"
        )
    y = ctx.output(a.shape, a.dtype)
    _map_batch(ctx, lambda i: np.add(a[i], b[i], out=y[i]), y)
    return y, ()


def add_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Both operands receive dy: the very same array, twice (callers must not write into it)."""
    return dy, dy
