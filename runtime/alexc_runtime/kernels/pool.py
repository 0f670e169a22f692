"""maxpool, avgpool and adaptive_avgpool, forward and backward.

Windowed pools loop over the kh*kw kernel offsets; each step is one vectorised pass over a strided
view of the (padded) input. Work is sharded per sample over the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from alexc_runtime.geometry import adaptive_bins, window_out
from alexc_runtime.kernels.base import (
    KernelContext,
    block_scratch_bytes,
    padded_block,
    shard_blocks,
    window_slice,
)


@dataclass(frozen=True)
class _Windows:
    """Geometry of a kh*kw window sweep over a padded input."""

    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    left: int
    bottom: int
    right: int
    oh: int
    ow: int
    hb: int  # buffer height: covers every window, including ceil_mode's overhang
    wb: int

    @property
    def needs_buffer(self) -> bool:
        # hb >= top + h, so any top/left padding also shows up as a size difference.
        return (self.hb, self.wb) != (self.h, self.w)

    def offsets(self):
        """(index, rows, cols) of every kernel offset, in row-major order within the window."""
        for i in range(self.kh):
            rows = window_slice(i, self.sh, self.oh)
            for j in range(self.kw):
                yield i * self.kw + j, rows, window_slice(j, self.sw, self.ow)

    def buffer(self, ctx: KernelContext, xb: np.ndarray, fill: float) -> np.ndarray:
        """The samples ``xb`` placed in a (hb, wb) buffer at (top, left), surrounded by ``fill``."""
        if not self.needs_buffer:
            return xb
        return padded_block(ctx, xb, self.top, self.left, self.hb, self.wb, fill)

    def buffer_elements(self, channels: int) -> int:
        """Elements per sample of the padded buffer (0 when the input is used as it is)."""
        return channels * self.hb * self.wb if self.needs_buffer else 0

    def crop(self, buf: np.ndarray) -> np.ndarray:
        return buf[:, :, self.top : self.top + self.h, self.left : self.left + self.w]


def _windows(shape: tuple[int, ...], attrs: Mapping) -> _Windows:
    _, _, h, w = shape
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    top, left, bottom, right = attrs["pad"]
    ceil_mode = attrs["ceil_mode"]
    oh = window_out(h, kh, sh, top, bottom, ceil_mode=ceil_mode)
    ow = window_out(w, kw, sw, left, right, ceil_mode=ceil_mode)
    hb = max((oh - 1) * sh + kh, top + h)
    wb = max((ow - 1) * sw + kw, left + w)
    return _Windows(h, w, kh, kw, sh, sw, top, left, bottom, right, oh, ow, hb, wb)


def _scatter_windows(
    ctx: KernelContext, win: _Windows, dx: np.ndarray, s: int, e: int, contribution
) -> None:
    """dx[s:e] = sum over offsets k of ``contribution(k)`` placed at that offset's positions."""
    if win.needs_buffer:
        buf = ctx.temp((e - s, dx.shape[1], win.hb, win.wb), dx.dtype)
    else:
        buf = dx[s:e]
    buf.fill(0)
    for k, rows, cols in win.offsets():
        target = buf[:, :, rows, cols]
        np.add(target, contribution(k), out=target)
    if win.needs_buffer:
        dx[s:e] = win.crop(buf)


# -- maxpool ---------------------------------------------------------------------------------


def maxpool_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Max over each window (padding is -inf). saved = (argmax, x.shape).

    argmax is the row-major offset of the first maximum inside each window, as uint8 (uint16 for
    windows over 256 elements): one byte per output element. Without ``ctx.grad`` only the max
    is computed and saved is ().
    """
    win = _windows(x.shape, attrs)
    n, c = x.shape[:2]
    y = ctx.output((n, c, win.oh, win.ow), x.dtype)
    if not ctx.grad:

        def run_max(s: int, e: int) -> None:
            xb, ys = win.buffer(ctx, x[s:e], -np.inf), y[s:e]
            for k, rows, cols in win.offsets():
                if k == 0:
                    np.copyto(ys, xb[:, :, rows, cols])
                else:
                    np.maximum(ys, xb[:, :, rows, cols], out=ys)

        shard_blocks(ctx, run_max, n, x[:1].nbytes, win.buffer_elements(c) * x.itemsize)
        return y, ()
    argmax = ctx.keep.empty(y.shape, np.uint8 if win.kh * win.kw <= 256 else np.uint16)

    def run(s: int, e: int) -> None:
        xb = win.buffer(ctx, x[s:e], -np.inf)
        ys, ids = y[s:e], argmax[s:e]
        better = ctx.temp(ys.shape, bool)
        step = ctx.temp(ys.shape, argmax.dtype)
        for k, rows, cols in win.offsets():
            candidate = xb[:, :, rows, cols]
            if k == 0:
                np.copyto(ys, candidate)
                ids.fill(0)
                continue
            # Strictly greater: on ties the earlier (row-major first) offset keeps the max.
            np.greater(candidate, ys, out=better)
            np.maximum(ys, candidate, out=ys)
            # ids += (k - ids) * better, i.e. ids = k where better. Unsigned wrap-around makes
            # it exact, and it runs several times faster than a masked copy (copyto where=).
            np.subtract(k, ids, out=step)
            np.multiply(step, better, out=step)
            np.add(ids, step, out=ids)

    per_sample = win.buffer_elements(c) * x.itemsize + y[:1].size * (1 + argmax.itemsize)
    shard_blocks(ctx, run, n, x[:1].nbytes, per_sample)
    return y, (argmax, x.shape)


def maxpool_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """Route each output gradient to its window's first maximum; overlaps accumulate."""
    argmax, x_shape = saved
    win = _windows(x_shape, attrs)
    dx = ctx.output(x_shape, dy.dtype)

    def run(s: int, e: int) -> None:
        ids, dys = argmax[s:e], dy[s:e]
        hit = ctx.temp(ids.shape, bool)
        routed = ctx.temp(dys.shape, dy.dtype)

        def contribution(k: int) -> np.ndarray:
            np.equal(ids, k, out=hit)
            return np.multiply(dys, hit, out=routed)

        _scatter_windows(ctx, win, dx, s, e, contribution)

    per_sample = win.buffer_elements(x_shape[1]) * dy.itemsize + dy[:1].size * (1 + dy.itemsize)
    shard_blocks(ctx, run, x_shape[0], dx[:1].nbytes, per_sample)
    return (dx,)


# -- avgpool ---------------------------------------------------------------------------------


def _avg_divisor(win: _Windows, count_include_pad: bool, dtype: np.dtype) -> np.ndarray:
    """(oh, ow) divisors: window area inside the padded input, or inside the real input."""

    def counts(out: int, stride: int, kernel: int, size: int, pad0: int, pad1: int) -> np.ndarray:
        start = np.arange(out) * stride  # in padded coordinates
        stop = start + kernel
        if count_include_pad:
            # Explicit padding counts; ceil_mode's overhang past the padded input does not.
            return np.minimum(stop, size + pad0 + pad1) - start
        return np.minimum(stop, pad0 + size) - np.maximum(start, pad0)

    ch = counts(win.oh, win.sh, win.kh, win.h, win.top, win.bottom)
    cw = counts(win.ow, win.sw, win.kw, win.w, win.left, win.right)
    return np.outer(ch, cw).astype(dtype)


def avgpool_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Mean over each window (padding is 0). saved = (x.shape,)."""
    win = _windows(x.shape, attrs)
    divisor = _avg_divisor(win, attrs["count_include_pad"], x.dtype)
    n, c = x.shape[:2]
    y = ctx.output((n, c, win.oh, win.ow), x.dtype)

    def run(s: int, e: int) -> None:
        xb = win.buffer(ctx, x[s:e], 0)
        ys = y[s:e]
        for k, rows, cols in win.offsets():
            if k == 0:
                np.copyto(ys, xb[:, :, rows, cols])
            else:
                np.add(ys, xb[:, :, rows, cols], out=ys)
        np.divide(ys, divisor, out=ys)

    shard_blocks(ctx, run, n, x[:1].nbytes, win.buffer_elements(c) * x.itemsize)
    return y, (x.shape,)


def avgpool_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """Spread each output gradient evenly over its window; overlaps accumulate."""
    (x_shape,) = saved
    win = _windows(x_shape, attrs)
    divisor = _avg_divisor(win, attrs["count_include_pad"], dy.dtype)
    dx = ctx.output(x_shape, dy.dtype)

    def run(s: int, e: int) -> None:
        share = np.divide(dy[s:e], divisor, out=ctx.temp(dy[s:e].shape, dy.dtype))
        _scatter_windows(ctx, win, dx, s, e, lambda k: share)

    per_sample = (win.buffer_elements(x_shape[1]) + dy[:1].size) * dy.itemsize
    shard_blocks(ctx, run, x_shape[0], dx[:1].nbytes, per_sample)
    return (dx,)


# -- adaptive_avgpool ------------------------------------------------------------------------


def adaptive_avgpool_forward(
    ctx: KernelContext, attrs: Mapping, x: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """Mean over adaptive bins, one axis at a time. saved = (x.shape,); identity returns x."""
    oh, ow = attrs["output"]
    n, c, h, w = x.shape
    if (h, w) == (oh, ow):
        return x, (x.shape,)
    rows, cols = adaptive_bins(h, oh), adaptive_bins(w, ow)
    y = ctx.output((n, c, oh, ow), x.dtype)
    divisor = np.outer([b - a for a, b in rows], [b - a for a, b in cols]).astype(x.dtype)

    def run(s: int, e: int) -> None:
        xb = x[s:e]
        if w != ow:
            narrowed = ctx.temp((e - s, c, h, ow), x.dtype)
            for j, (a, b) in enumerate(cols):
                np.sum(xb[..., a:b], axis=3, out=narrowed[..., j])
            xb = narrowed
        ys = y[s:e]
        if h != oh:
            for i, (a, b) in enumerate(rows):
                np.sum(xb[:, :, a:b, :], axis=2, out=ys[:, :, i, :])
        else:
            np.copyto(ys, xb)
        np.divide(ys, divisor, out=ys)

    per_sample = c * h * ow * x.itemsize if w != ow else 0
    shard_blocks(ctx, run, n, x[:1].nbytes, per_sample)
    return y, (x.shape,)


def adaptive_avgpool_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """Spread each bin's gradient evenly over the bin, one axis at a time."""
    (x_shape,) = saved
    oh, ow = attrs["output"]
    n, c, h, w = x_shape
    if (h, w) == (oh, ow):
        return (dy,)
    rows, cols = adaptive_bins(h, oh), adaptive_bins(w, ow)
    divisor = np.outer([b - a for a, b in rows], [b - a for a, b in cols]).astype(dy.dtype)
    dx = ctx.output(x_shape, dy.dtype)

    def run(s: int, e: int) -> None:
        share = np.divide(dy[s:e], divisor, out=ctx.temp(dy[s:e].shape, dy.dtype))
        if h != oh:
            tall = ctx.temp((e - s, c, h, ow), dy.dtype)
            tall.fill(0)
            for i, (a, b) in enumerate(rows):
                target = tall[:, :, a:b, :]
                np.add(target, share[:, :, i : i + 1, :], out=target)
            share = tall
        if w != ow:
            dxs = dx[s:e]
            dxs.fill(0)
            for j, (a, b) in enumerate(cols):
                target = dxs[..., a:b]
                np.add(target, share[..., j : j + 1], out=target)
        else:
            dx[s:e] = share

    per_sample = (dy[:1].size + (c * h * ow if h != oh else 0)) * dy.itemsize
    shard_blocks(ctx, run, n, dx[:1].nbytes, per_sample)
    return (dx,)


# -- scratch: what the kernels above carve for their block temporaries -----------------------


def _block_bytes(ins, itemsize: int, threads: int, fwd: int, bwd: int) -> tuple[int, int]:
    """(forward, backward) scratch for block temporaries of fwd and bwd bytes per sample."""
    n, c, h, w = ins[0]
    per_sample = c * h * w * itemsize
    return (
        block_scratch_bytes(n, per_sample, fwd, threads),
        block_scratch_bytes(n, per_sample, bwd, threads),
    )


def maxpool_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    win = _windows(ins[0], attrs)
    c = ins[0][1]
    pad = win.buffer_elements(c) * itemsize
    outs = c * win.oh * win.ow
    index = 1 if win.kh * win.kw <= 256 else 2
    return _block_bytes(
        ins, itemsize, threads, pad + outs * (1 + index), pad + outs * (1 + itemsize)
    )


def avgpool_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    win = _windows(ins[0], attrs)
    c = ins[0][1]
    pad = win.buffer_elements(c) * itemsize
    return _block_bytes(ins, itemsize, threads, pad, pad + c * win.oh * win.ow * itemsize)


def adaptive_avgpool_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    (oh, ow), (_, c, h, w) = attrs["output"], ins[0]
    if (h, w) == (oh, ow):
        return 0, 0
    narrowed = c * h * ow * itemsize if w != ow else 0
    tall = c * h * ow * itemsize if h != oh else 0
    return _block_bytes(ins, itemsize, threads, narrowed, c * oh * ow * itemsize + tall)
