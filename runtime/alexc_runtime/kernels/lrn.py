"""lrn: local response normalisation across channels, forward and backward.

With s_c = k + a * sum_{j in window(c)} x_j^2 and window(c) = [c - h, c + h] clipped to the
channels (h = (size-1)/2): y_c = x_c * s_c^-beta. The two conventions differ only in ``a``:
``a = alpha`` (paper) or ``a = alpha / size`` (onnx). Windows are symmetric, so "i in window(j)"
is "j in window(i)" and backward reuses the same window sum:
dx_i = g_i * s_i^-beta - 2*a*beta * x_i * sum_{j in window(i)} g_j * y_j / s_j.

Window sums add ``size`` shifted slices (not a cumulative sum, which loses float32 precision to
cancellation). ``saved`` is ``(x, s, s^-beta)``: a reference to the input, the denominator base
and its power.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alexc_runtime.geometry import lrn_coefficient
from alexc_runtime.kernels.base import KernelContext, block_scratch_bytes, shard_blocks


def _coefficient(attrs: Mapping) -> float:
    return lrn_coefficient(attrs["alpha"], attrs["size"], attrs["convention"])


def _window_sum(v: np.ndarray, half: int, out: np.ndarray) -> None:
    """out[:, c] = sum of v[:, c-half : c+half+1], the window clipped at the channel edges."""
    np.copyto(out, v)
    for d in range(1, min(half, v.shape[1] - 1) + 1):
        np.add(out[:, d:], v[:, :-d], out=out[:, d:])
        np.add(out[:, :-d], v[:, d:], out=out[:, :-d])


def _negative_power(base: np.ndarray, beta: float, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """out = base ** -beta; AlexNet's beta = 0.75 uses square roots (and ``tmp``), several
    times faster."""
    if beta == 0.75:
        np.sqrt(base, out=out)
        out *= np.sqrt(out, out=tmp)
        return np.reciprocal(out, out=out)
    return np.power(base, -beta, out=out)


def lrn_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = x / (k + a * window_sum(x^2))^beta.

    saved = (x, s, s^-beta), both the same shape as x: backward needs the power too, and keeping
    it saves recomputing it (four passes of sixteen). Without ``ctx.grad`` everything is
    computed in y itself and saved is ()."""
    size, beta, k = attrs["size"], float(attrs["beta"]), float(attrs["bias"])
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd number, got {size}")
    a = _coefficient(attrs)
    y = ctx.output(x.shape, x.dtype)
    base = ctx.keep.empty(x.shape, x.dtype) if ctx.grad else y
    power = ctx.keep.empty(x.shape, x.dtype) if ctx.grad else y

    def run(s: int, e: int) -> None:
        xb, bb, pb, yb = x[s:e], base[s:e], power[s:e], y[s:e]
        squares = np.square(xb, out=ctx.temp(xb.shape, xb.dtype))
        _window_sum(squares, size // 2, bb)
        bb *= a
        bb += k
        _negative_power(bb, beta, out=pb, tmp=squares)
        np.multiply(pb, xb, out=yb)

    shard_blocks(ctx, run, x.shape[0], x[:1].nbytes, x[:1].nbytes)
    return y, ((x, base, power) if ctx.grad else ())


def lrn_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx_i = g_i s_i^-beta - 2 a beta x_i sum_{j in window(i)} g_j y_j / s_j."""
    x, base, power = saved
    size, beta = attrs["size"], float(attrs["beta"])
    a = _coefficient(attrs)
    dx = ctx.output(x.shape, x.dtype)

    def run(s: int, e: int) -> None:
        xb, bb, pb, g, dxb = x[s:e], base[s:e], power[s:e], dy[s:e], dx[s:e]
        # becomes g * y / s = g * x * s^-beta / s
        ratio = np.multiply(g, xb, out=ctx.temp(xb.shape, x.dtype))
        ratio *= pb
        ratio /= bb
        spread = ctx.temp(bb.shape, x.dtype)
        _window_sum(ratio, size // 2, spread)
        spread *= xb
        spread *= 2.0 * a * beta
        np.multiply(g, pb, out=dxb)
        dxb -= spread

    shard_blocks(ctx, run, x.shape[0], x[:1].nbytes, 2 * x[:1].nbytes)
    return (dx,)


def lrn_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    """(forward, backward) scratch: x^2, then two arrays, for a block of samples per chunk."""
    n, per_sample = ins[0][0], itemsize * int(np.prod(ins[0][1:]))
    return (
        block_scratch_bytes(n, per_sample, per_sample, threads),
        block_scratch_bytes(n, per_sample, 2 * per_sample, threads),
    )
