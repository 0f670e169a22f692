"""conv: 2-D convolution as im2col + one GEMM per group; backward via col2im.

Columns are laid out (K, positions) with K = (C/groups)*kh*kw ordered (channel, ky, kx), which
matches the weight layout (F, C/groups, kh, kw) reshaped to (F, K), and positions ordered
(sample, oy, ox). The batch is processed in blocks of samples so the column buffer stays under
``COLS_BUDGET`` bytes while each GEMM still spans thousands of positions. The block size depends
only on the shapes, never on the thread count, so results do not depend on the pool either.

Wide rows (horizontal stride 1): each output row gets the full padded input width Wp of
columns instead of ow, so that for one kernel offset the columns of a sample are one strided
view whose rows are contiguous runs of Wp (of oh*Wp when the vertical stride is 1 too), rather
than ow-element snippets. im2col and col2im become a few long copies instead of many short
ones; the GEMM computes (Wp - ow) extra columns per row, which the scatter drops (forward) or
which are zero (backward: their output gradient is set to zero, so they add nothing to dx or
dw). The padded input gets extra rows so the last run stays inside the buffer.

``saved`` is ``(x, w)``: references to the forward inputs, not copies. Backward rebuilds the
columns from ``x`` (cheaper in memory than keeping them: K*positions is ~kh*kw/stride^2 times x).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

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
    cw: int  # columns per output row: the padded width Wp (wide rows) or ow
    hb: int  # rows of the padded input buffer (wide rows add some below)

    @property
    def wide(self) -> bool:
        return self.sw == 1

    @property
    def wp(self) -> int:
        return self.w + self.left + self.right

    @property
    def positions(self) -> int:
        """Columns per sample."""
        return self.oh * self.cw

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
    wp, hp = width + left + right, h + top + bottom
    cw = wp if sw == 1 else ow
    # The last run of the last kernel offset ends (kw-1)*dw elements past row (oh-1)*sh+(kh-1)*dh.
    hb = max(hp, (oh - 1) * sh + (kh - 1) * dh + 1 + -(-(kw - 1) * dw // wp)) if sw == 1 else hp
    block = _block_samples(n, c * kh * kw * oh * cw * x.dtype.itemsize)
    return _Geometry(
        n, c, h, width, filters, groups, kh, kw, sh, sw, dh, dw, top, left, bottom, right, oh, ow,
        block, cw, hb,
    )  # fmt: skip


def _wide_view(g: _Geometry, buf: np.ndarray, i: int | None = None, j: int | None = None):
    """The columns of ``buf`` (nb, C, hb, Wp) as a strided view: (C, kh, kw, nb, oh, Wp), or
    (C, nb, oh, Wp) for one kernel offset (i, j). Rows of the view are contiguous runs."""
    item = buf.itemsize
    plane = g.hb * g.wp * item
    sample = g.c * plane
    flat = buf.reshape(-1)
    if i is None:
        shape = (g.c, g.kh, g.kw, buf.shape[0], g.oh, g.wp)
        strides = (plane, g.dh * g.wp * item, g.dw * item, sample, g.sh * g.wp * item, item)
        return as_strided(flat, shape, strides, writeable=False)
    start = flat[i * g.dh * g.wp + j * g.dw :]
    shape = (g.c, buf.shape[0], g.oh, g.wp)
    return as_strided(start, shape, (plane, sample, g.sh * g.wp * item, item))


def _im2col(g: _Geometry, x: np.ndarray, cols6: np.ndarray, b0: int, s: int, e: int) -> None:
    """Fill ``cols6[..., s:e, :, :]`` (C, kh, kw, nb, oh, cw) from samples ``x[b0+s : b0+e]``."""
    xb = x[b0 + s : b0 + e]
    if g.wide:
        xb = padded_block(xb, g.top, g.left, g.hb, g.wp, 0)
        np.copyto(cols6[:, :, :, s:e], _wide_view(g, xb))
        return
    if g.padded:
        xb = padded_block(xb, g.top, g.left, g.h + g.top + g.bottom, g.wp, 0)
    xt = xb.transpose(1, 0, 2, 3)  # (C, nb, Hp, Wp), matching the column order
    for i in range(g.kh):
        rows = window_slice(i * g.dh, g.sh, g.oh)
        for j in range(g.kw):
            np.copyto(cols6[:, i, j, s:e], xt[:, :, rows, window_slice(j * g.dw, g.sw, g.ow)])


def _col2im(g: _Geometry, dcols6: np.ndarray, dx: np.ndarray, b0: int, s: int, e: int) -> None:
    """Accumulate column gradients ``dcols6[..., s:e, :, :]`` into ``dx[b0+s : b0+e]``."""
    if g.wide:
        dxb = np.zeros((e - s, g.c, g.hb, g.wp), dtype=dx.dtype)
        for i in range(g.kh):
            for j in range(g.kw):
                target = _wide_view(g, dxb, i, j)
                np.add(target, dcols6[:, i, j, s:e], out=target)
        dx[b0 + s : b0 + e] = dxb[:, :, g.top : g.top + g.h, g.left : g.left + g.w]
        return
    if g.padded:
        dxb = np.zeros((e - s, g.c, g.h + g.top + g.bottom, g.wp), dtype=dx.dtype)
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
    positions = g.positions
    y = np.empty((g.n, g.filters, g.oh, g.ow), dtype=x.dtype)
    w_groups = w.reshape(g.groups, g.filters // g.groups, -1)
    cols_buf = np.empty(g.cols_rows * g.block * positions, dtype=x.dtype)
    prod_buf = np.empty(g.filters * g.block * positions, dtype=x.dtype)
    bias = None if b is None else b.reshape(-1, 1, 1)

    for b0 in range(0, g.n, g.block):
        nb = min(g.block, g.n - b0)
        cols = cols_buf[: g.cols_rows * nb * positions].reshape(g.groups, -1, nb * positions)
        cols6 = cols.reshape(g.c, g.kh, g.kw, nb, g.oh, g.cw)
        shard(ctx, lambda s, e, b0=b0, cols6=cols6: _im2col(g, x, cols6, b0, s, e), nb)

        prod = prod_buf[: g.filters * nb * positions].reshape(g.groups, -1, nb * positions)
        np.matmul(w_groups, cols, out=prod)
        prod4 = prod.reshape(g.filters, nb, g.oh, g.cw)

        def scatter(s: int, e: int, b0: int = b0, prod4: np.ndarray = prod4) -> None:
            # (F, nb, oh, ow) -> NCHW, adding the bias in the same pass (wide rows: cropped).
            src = prod4[:, s:e, :, : g.ow].transpose(1, 0, 2, 3)
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
    positions = g.positions
    fg = g.filters // g.groups
    w_groups_t = w.reshape(g.groups, fg, -1).transpose(0, 2, 1)
    needs_dx = ctx.needs is None or ctx.needs[0]  # not for the image itself (the first layer)
    dx = np.empty(x.shape, dtype=x.dtype) if needs_dx else None
    dw = np.zeros((g.groups, fg, w_groups_t.shape[1]), dtype=x.dtype)
    dw_block = np.empty_like(dw)
    cols_buf = np.empty(g.cols_rows * g.block * positions, dtype=x.dtype)
    dyt_buf = np.empty(g.filters * g.block * positions, dtype=x.dtype)

    for b0 in range(0, g.n, g.block):
        nb = min(g.block, g.n - b0)
        cols = cols_buf[: g.cols_rows * nb * positions].reshape(g.groups, -1, nb * positions)
        cols6 = cols.reshape(g.c, g.kh, g.kw, nb, g.oh, g.cw)
        dyt = dyt_buf[: g.filters * nb * positions].reshape(g.groups, fg, nb * positions)
        dyt4 = dyt.reshape(g.filters, nb, g.oh, g.cw)

        def gather(s: int, e: int, b0: int = b0, cols6=cols6, dyt4=dyt4) -> None:
            _im2col(g, x, cols6, b0, s, e)
            np.copyto(dyt4[:, s:e, :, : g.ow], dy[b0 + s : b0 + e].transpose(1, 0, 2, 3))
            # Wide rows: the extra columns are not outputs; a zero gradient keeps them inert.
            dyt4[:, s:e, :, g.ow :] = 0

        shard(ctx, gather, nb)
        np.matmul(dyt, cols.transpose(0, 2, 1), out=dw_block)
        dw += dw_block
        if dx is not None:
            # The columns are no longer needed: their buffer receives the column gradients.
            np.matmul(w_groups_t, dyt, out=cols)
            shard(ctx, lambda s, e, b0=b0, cols6=cols6: _col2im(g, cols6, dx, b0, s, e), nb)

    dw = dw.reshape(w.shape)
    if not attrs["bias"]:
        return dx, dw
    return dx, dw, dy.sum(axis=(0, 2, 3))
