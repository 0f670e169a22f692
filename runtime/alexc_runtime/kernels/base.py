"""What every kernel module shares: the call context, the kernel record, and small helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alexc_runtime.geometry import window_out
from alexc_runtime.threads import ShardPool


@dataclass(frozen=True)
class KernelContext:
    """Per-call settings: the shard pool, training mode, and the dropout RNG."""

    pool: ShardPool | None = None  # None = single-threaded, inline
    train: bool = False  # dropout is active only when True
    rng: np.random.Generator | None = None  # dropout masks; seeded by the caller
    grad: bool = True  # a backward will follow: build what it needs (masks, argmax indices)
    # Backward: which inputs need a gradient (None: all). A kernel may skip the others' work
    # and return None for them (conv skips the image gradient: the first layer's dx).
    needs: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Kernel:
    """An op's forward and hand-derived backward, side by side.

    ``forward(ctx, attrs, *inputs) -> (y, saved)``;
    ``backward(ctx, attrs, dy, saved) -> grads``, one per forward input, in order (None for an
    input that is not differentiable).
    """

    forward: Callable
    backward: Callable


def shard(ctx: KernelContext, fn: Callable[[int, int], object], n: int) -> None:
    """Run ``fn(start, stop)`` over the batch ``range(n)``, on ``ctx.pool`` when there is one."""
    if ctx.pool is None:
        fn(0, n)
    else:
        ctx.pool.map_range(fn, n)


# Target working set of one sample block inside a shard: small enough that the several passes a
# kernel makes over a block hit the cache (L2 is 512 KiB per core here, L3 32 MiB shared).
CACHE_BLOCK_BYTES = 1 << 20


def shard_blocks(
    ctx: KernelContext, fn: Callable[[int, int], object], n: int, bytes_per_sample: int
) -> None:
    """Like ``shard``, but each chunk is walked in blocks of about ``CACHE_BLOCK_BYTES``.

    Only for per-sample work: the blocking then cannot change any result.
    """
    step = max(1, CACHE_BLOCK_BYTES // max(1, bytes_per_sample))

    def walk(start: int, stop: int) -> None:
        for s in range(start, stop, step):
            fn(s, min(s + step, stop))

    shard(ctx, walk, n)


def pooled_size(size: int, kernel: int, stride: int, pad0: int, pad1: int, ceil_mode: bool) -> int:
    """Output length of a pooling window sweep (the PyTorch/ONNX rule, ceil or floor)."""
    return window_out(size, kernel, stride, pad0, pad1, ceil_mode=ceil_mode)


def padded_block(
    x: np.ndarray, top: int, left: int, height: int, width: int, fill: float
) -> np.ndarray:
    """Copy ``x`` (n, c, h, w) into a fresh (n, c, height, width) buffer at (top, left), filled."""
    n, c, h, w = x.shape
    out = np.empty((n, c, height, width), dtype=x.dtype)
    # Fill only the border: the interior is overwritten by the copy right after.
    out[:, :, :top] = fill
    out[:, :, top + h :] = fill
    out[:, :, top : top + h, :left] = fill
    out[:, :, top : top + h, left + w :] = fill
    out[:, :, top : top + h, left : left + w] = x
    return out


def window_slice(offset: int, stride: int, count: int) -> slice:
    """The positions a kernel offset reads for ``count`` outputs: offset, offset+stride, ..."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)
