"""What every kernel module shares: the call context, the kernel record, and small helpers."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alexc_runtime.threads import ShardPool, split_range

# Target working set of one sample block inside a shard: small enough that the several passes a
# kernel makes over a block hit the cache (L2 is 512 KiB per core here, L3 32 MiB shared).
CACHE_BLOCK_BYTES = 1 << 20
ALIGN = 64  # bytes: arena slots and the arrays carved from them start on cache lines


class Space:
    """Arrays carved one after another out of a planned byte range (a view into the executor's
    arena); past its end, or without one, they are allocated as usual. Not thread-safe: kernels
    carve their whole-call buffers before they shard."""

    def __init__(self, buffer: np.ndarray | None = None):
        self.buffer = buffer  # uint8, or None
        self.used = 0

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(shape) if np.iterable(shape) else (shape,)
        nbytes = math.prod(shape) * dtype.itemsize
        if self.buffer is None or self.used + nbytes > self.buffer.size:
            return np.empty(shape, dtype=dtype)
        view = self.buffer[self.used : self.used + nbytes].view(dtype).reshape(shape)
        self.used += -(-nbytes // ALIGN) * ALIGN
        return view


_UNPLANNED = Space()
_block_space = threading.local()  # .space: the calling thread's room for block temporaries


@dataclass(frozen=True)
class KernelContext:
    """Per-call settings: the shard pool, training mode, the dropout RNG, the memory the plan
    gives this call, and the kernels' strategy knobs."""

    pool: ShardPool | None = None  # None = single-threaded, inline
    train: bool = False  # dropout is active only when True
    rng: np.random.Generator | None = None  # dropout masks; seeded by the caller
    grad: bool = True  # a backward will follow: build what it needs (masks, argmax indices)
    # Backward: which inputs need a gradient (None: all). A kernel may skip the others' work
    # and return None for them (conv skips the image gradient: the first layer's dx).
    needs: tuple[bool, ...] | None = None
    # Planned memory (the executor's arena): the views results are written into (forward: the
    # output; backward: one per input, None where the kernel allocates, e.g. parameter
    # gradients), the step's scratch and the room for what forward keeps for backward.
    out: tuple[np.ndarray | None, ...] | None = None
    scratch: Space = _UNPLANNED
    keep: Space = _UNPLANNED
    # Strategy knobs (results never depend on them): sample blocks of per-sample work, conv's
    # tap folding in backward ("none", "row", "all"; None: by channel count) and samples per
    # GEMM block (None: by byte budget).
    cache_block_bytes: int = CACHE_BLOCK_BYTES
    conv_fold: str | None = None
    conv_block_samples: int | None = None

    def output(self, shape, dtype, index: int = 0) -> np.ndarray:
        """The planned view for result ``index`` when it fits, else a fresh array."""
        if self.out is not None and index < len(self.out):
            view = self.out[index]
            if view is not None and view.shape == tuple(shape) and view.dtype == dtype:
                return view
        return np.empty(shape, dtype=dtype)

    def temp(self, shape, dtype) -> np.ndarray:
        """A temporary for one block of ``shard_blocks`` work, from the room the calling
        thread's chunk was given (else a fresh array)."""
        space = getattr(_block_space, "space", None)
        return np.empty(shape, dtype=dtype) if space is None else space.empty(shape, dtype)


def no_bytes(attrs, ins, out, itemsize, threads=1) -> int:
    return 0


def no_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    return 0, 0


@dataclass(frozen=True)
class Memory:
    """What a kernel holds beyond its output; the compiler plans arena slots from it. Sizes
    are bytes, batch included.

    `inputs`/`output`: forward values its backward reads (kept alive by reference);
    `saved(attrs, input shapes, output shape, itemsize)`: new arrays kept from forward to
    backward (masks, argmax indices), carved from ``ctx.keep``; `grad_only`: those are built
    only when a backward follows (ctx.grad);
    `workspace(attrs, input shapes, output shape, itemsize, threads)`: (forward, backward)
    scratch carved from ``ctx.scratch``: whole-call buffers, and each thread's room for its
    block temporaries (``block_scratch_bytes``);
    `view`: the output is a view of input 0 (and backward's gradient one of dy);
    `in_place`: elementwise, so the output may be written over input 0 (and dx over dy) when
    nothing reads that input afterwards."""

    inputs: tuple[int, ...]
    output: bool
    saved: Callable
    grad_only: bool
    workspace: Callable
    view: bool
    in_place: bool


NO_MEMORY = Memory((), False, no_bytes, False, no_workspace, False, False)


@dataclass(frozen=True)
class Kernel:
    """An op's forward and hand-derived backward, side by side, and what they hold.

    ``forward(ctx, attrs, *inputs) -> (y, saved)``;
    ``backward(ctx, attrs, dy, saved) -> grads``, one per forward input, in order (None for an
    input that is not differentiable); ``memory``: what they save and the scratch they need.
    """

    forward: Callable
    backward: Callable
    memory: Memory


def shard(ctx: KernelContext, fn: Callable[[int, int], object], n: int) -> None:
    """Run ``fn(start, stop)`` over the batch ``range(n)``, on ``ctx.pool`` when there is one."""
    if ctx.pool is None:
        fn(0, n)
    else:
        ctx.pool.map_range(fn, n)


def _chunks(n: int, threads: int) -> list[tuple[int, int]]:
    """The chunks ``ShardPool.map_range`` splits ``range(n)`` into."""
    return split_range(n, threads) if threads > 1 and n > 1 else [(0, n)]


def _block_room(n: int, bytes_per_sample: int, temp_per_sample: int, cache_block: int) -> int:
    """Bytes of block temporaries one chunk of ``n`` samples needs (up to 4 arrays a block)."""
    step = min(n, max(1, cache_block // max(1, bytes_per_sample)))
    return step * temp_per_sample + 4 * ALIGN


def block_scratch_bytes(
    n: int,
    bytes_per_sample: int,
    temp_per_sample: int,
    threads: int,
    cache_block: int = CACHE_BLOCK_BYTES,
) -> int:
    """The scratch ``shard_blocks`` carves for block temporaries of ``temp_per_sample`` bytes
    per sample: one block's worth per chunk."""
    if not temp_per_sample:
        return 0
    return sum(
        _block_room(e - s, bytes_per_sample, temp_per_sample, cache_block)
        for s, e in _chunks(n, threads)
    )


def shard_blocks(
    ctx: KernelContext,
    fn: Callable[[int, int], object],
    n: int,
    bytes_per_sample: int,
    temp_per_sample: int = 0,
) -> None:
    """Like ``shard``, but each chunk is walked in blocks of about ``ctx.cache_block_bytes``.

    ``fn``'s temporaries (``ctx.temp``, at most ``temp_per_sample`` bytes per sample of its
    block) come from room each chunk gets in ``ctx.scratch``, reused block after block.
    Only for per-sample work: the blocking then cannot change any result.
    """
    step = max(1, ctx.cache_block_bytes // max(1, bytes_per_sample))
    rooms = {}
    if temp_per_sample:
        for s, e in _chunks(n, 1 if ctx.pool is None else ctx.pool.threads):
            room = _block_room(e - s, bytes_per_sample, temp_per_sample, ctx.cache_block_bytes)
            rooms[s] = ctx.scratch.empty(room, np.uint8)

    def walk(start: int, stop: int) -> None:
        space = Space(rooms[start]) if start in rooms else None
        _block_space.space = space
        try:
            for s in range(start, stop, step):
                if space is not None:
                    space.used = 0
                fn(s, min(s + step, stop))
        finally:
            _block_space.space = None

    shard(ctx, walk, n)


def padded_block(
    ctx: KernelContext, x: np.ndarray, top: int, left: int, height: int, width: int, fill: float
) -> np.ndarray:
    """Copy ``x`` (n, c, h, w) into a (n, c, height, width) temporary at (top, left), filled."""
    n, c, h, w = x.shape
    out = ctx.temp((n, c, height, width), x.dtype)
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
