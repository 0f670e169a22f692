"""conv: 2-D convolution as im2col + one GEMM per group; backward via col2im.

Columns are laid out (K, positions) with K = (C/groups)*kh*kw ordered (channel, ky, kx), which
matches the weight layout (F, C/groups, kh, kw) reshaped to (F, K), and positions ordered
(sample, oy, ox). The batch is processed in blocks of samples so the column buffer stays under
``COLS_BUDGET`` bytes while each GEMM still spans thousands of positions. The block size depends
only on the shapes, never on the thread count, so results do not depend on the pool either.

``saved`` is ``(x, w)``: references to the forward inputs, not copies. Backward rebuilds the
columns from ``x`` (cheaper in memory than keeping them: K*positions is ~kh*kw/stride^2 times x).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from alexc_runtime.kernels.base import KernelContext, padded_block, shard, window_slice

COLS_BUDGET = 16 << 20  # bytes of im2col columns per block of samples (a tuning knob)


@dataclass(frozen=True)
class _Geometry:
    n: int
    c: int
    h: int
    w: int
    filters: int
    groups: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    top: int
    left: int
    bottom: int
    right: int
    oh: int
    ow: int
    block: int  # samples per GEMM block

    @property
    def padded(self) -> bool:
        return self.top or self.left or self.bottom or self.right

    @property
    def cols_rows(self) -> int:
        """Rows of the column matrix over all groups: C*kh*kw."""
        return self.c * self.kh * self.kw


def _block_samples(n: int, cols_bytes_per_sample: int) -> int:
    """Samples per GEMM block: as many as fit in ``COLS_BUDGET``, at least one."""
    return max(1, min(n, COLS_BUDGET // cols_bytes_per_sample))


def _geometry(x: np.ndarray, w: np.ndarray, attrs: Mapping) -> _Geometry:
    n, c, h, width = x.shape
    groups = attrs["groups"]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    top, left, bottom, right = attrs["pad"]
    dh, dw = attrs["dilation"]
    filters = w.shape[0]
    if w.shape != (filters, c // groups, kh, kw) or c % groups or filters % groups:
        raise ValueError(
            f"conv weight {w.shape} does not fit input {x.shape} with groups={groups}, "
            f"kernel={(kh, kw)}"
        )
    if w.dtype != x.dtype:
        raise TypeError(f"conv weight dtype {w.dtype} differs from input dtype {x.dtype}")
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv output would be empty for input {x.shape} and attrs {attrs}")
    block = _block_samples(n, c * kh * kw * oh * ow * x.dtype.itemsize)
    return _Geometry(
        n, c, h, width, filters, groups, kh, kw, sh, sw, dh, dw, top, left, bottom, right, oh, ow,
        block,
    )  # fmt: skip


def _im2col(g: _Geometry, x: np.ndarray, cols6: np.ndarray, b0: int, s: int, e: int) -> None:
    """Fill ``cols6[..., s:e, :, :]`` (C, kh, kw, nb, oh, ow) from samples ``x[b0+s : b0+e]``.

    One strided view and one copy: a single NumPy call that runs without the GIL, where a loop
    over kernel offsets would make kh*kw small calls (121 for AlexNet's conv1).
    """
    xb = x[b0 + s : b0 + e]
    if g.padded:
        xb = padded_block(xb, g.top, g.left, g.h + g.top + g.bottom, g.w + g.left + g.right, 0)
    sn, sc, sy, sx = xb.strides
    windows = np.lib.stride_tricks.as_strided(
        xb,
        shape=(g.c, g.kh, g.kw, e - s, g.oh, g.ow),
        strides=(sc, g.dh * sy, g.dw * sx, sn, g.sh * sy, g.sw * sx),
        writeable=False,
    )
    np.copyto(cols6[:, :, :, s:e], windows)


def _col2im(g: _Geometry, dcols6: np.ndarray, dx: np.ndarray, b0: int, s: int, e: int) -> None:
    """Accumulate column gradients ``dcols6[..., s:e, :, :]`` into ``dx[b0+s : b0+e]``."""
    if g.padded:
        hp, wp = g.h + g.top + g.bottom, g.w + g.left + g.right
        dxb = np.zeros((e - s, g.c, hp, wp), dtype=dx.dtype)
    else:
        dxb = dx[b0 + s : b0 + e]
        dxb.fill(0)
    dxt = dxb.transpose(1, 0, 2, 3)
    # Overlapping windows sum; offsets are visited in a fixed order, so sums are reproducible.
    for i in range(g.kh):
        rows = window_slice(i * g.dh, g.sh, g.oh)
        for j in range(g.kw):
            target = dxt[:, :, rows, window_slice(j * g.dw, g.sw, g.ow)]
            np.add(target, dcols6[:, i, j, s:e], out=target)
    if g.padded:
        dx[b0 + s : b0 + e] = dxb[:, :, g.top : g.top + g.h, g.left : g.left + g.w]


def conv_forward(
    ctx: KernelContext, attrs: Mapping, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> tuple[np.ndarray, tuple]:
    """y = conv(x, w) + b. saved = (x, w), references only."""
    g = _geometry(x, w, attrs)
    positions = g.oh * g.ow
    y = np.empty((g.n, g.filters, g.oh, g.ow), dtype=x.dtype)
    w_groups = w.reshape(g.groups, g.filters // g.groups, -1)
    cols_buf = np.empty(g.cols_rows * g.block * positions, dtype=x.dtype)
    prod_buf = np.empty(g.filters * g.block * positions, dtype=x.dtype)
    bias = None if b is None else b.reshape(-1, 1, 1)

    for b0 in range(0, g.n, g.block):
        nb = min(g.block, g.n - b0)
        cols = cols_buf[: g.cols_rows * nb * positions].reshape(g.groups, -1, nb * positions)
        cols6 = cols.reshape(g.c, g.kh, g.kw, nb, g.oh, g.ow)
        shard(ctx, lambda s, e, b0=b0, cols6=cols6: _im2col(g, x, cols6, b0, s, e), nb)

        prod = prod_buf[: g.filters * nb * positions].reshape(g.groups, -1, nb * positions)
        np.matmul(w_groups, cols, out=prod)
        prod4 = prod.reshape(g.filters, nb, g.oh, g.ow)

        def scatter(s: int, e: int, b0: int = b0, prod4: np.ndarray = prod4) -> None:
            # (F, nb, oh, ow) -> NCHW, adding the bias in the same pass.
            src = prod4[:, s:e].transpose(1, 0, 2, 3)
            if bias is None:
                np.copyto(y[b0 + s : b0 + e], src)
            else:
                np.add(src, bias, out=y[b0 + s : b0 + e])

        shard(ctx, scatter, nb)
    return y, (x, w)


def conv_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, ...]:
    """Gradients (dx, dw) or (dx, dw, db): dw = dy . cols^T, dx = col2im(w^T . dy)."""
    x, w = saved
    g = _geometry(x, w, attrs)
    positions = g.oh * g.ow
    fg = g.filters // g.groups
    w_groups_t = w.reshape(g.groups, fg, -1).transpose(0, 2, 1)
    dx = np.empty(x.shape, dtype=x.dtype)
    dw = np.zeros((g.groups, fg, w_groups_t.shape[1]), dtype=x.dtype)
    dw_block = np.empty_like(dw)
    cols_buf = np.empty(g.cols_rows * g.block * positions, dtype=x.dtype)
    dyt_buf = np.empty(g.filters * g.block * positions, dtype=x.dtype)

    for b0 in range(0, g.n, g.block):
        nb = min(g.block, g.n - b0)
        cols = cols_buf[: g.cols_rows * nb * positions].reshape(g.groups, -1, nb * positions)
        cols6 = cols.reshape(g.c, g.kh, g.kw, nb, g.oh, g.ow)
        dyt = dyt_buf[: g.filters * nb * positions].reshape(g.groups, fg, nb * positions)
        dyt4 = dyt.reshape(g.filters, nb, g.oh, g.ow)

        def gather(s: int, e: int, b0: int = b0, cols6=cols6, dyt4=dyt4) -> None:
            _im2col(g, x, cols6, b0, s, e)
            np.copyto(dyt4[:, s:e], dy[b0 + s : b0 + e].transpose(1, 0, 2, 3))

        shard(ctx, gather, nb)
        np.matmul(dyt, cols.transpose(0, 2, 1), out=dw_block)
        dw += dw_block
        # The columns are no longer needed: their buffer receives the column gradients.
        np.matmul(w_groups_t, dyt, out=cols)
        shard(ctx, lambda s, e, b0=b0, cols6=cols6: _col2im(g, cols6, dx, b0, s, e), nb)

    dw = dw.reshape(w.shape)
    if not attrs["bias"]:
        return dx, dw
    return dx, dw, dy.sum(axis=(0, 2, 3))
