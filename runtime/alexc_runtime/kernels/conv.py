"""conv: 2-D convolution as shifted GEMMs over one flat, padded copy of the input; no im2col.

Every convolution is first made a stride-1 one: a stride (sh, sw) becomes space-to-depth, which
folds each sh x sw tile of the padded input into channels (c, a, b) and the kernel into
ceil(kh/sh) x ceil(kw/sw) taps over them, the missing taps zero (a dilated, strided kernel is
first spelled out densely). Then, for a block of samples, the input is copied once into ``xq``
(C, T): per channel, the samples one after another, each row of W values followed by a gap of
zeros, each sample of H rows followed by gap rows. The gaps are the padding, shared between
neighbours: a gap of max(left, right) columns serves as one row's right padding and the next
row's left padding (likewise for rows between samples). Output position q of the block is then
(sample, row, column) = (q // (Hq*Wq), q // Wq % Hq, q % Wq), and the input it sees through
kernel tap (i, j) is simply ``xq[:, q + i*dh*Wq + j*dw]``. So

    out[:, q] = sum over taps (i, j) of  W[:, :, i, j] @ xq[:, q + i*dh*Wq + j*dw]

is kh*kw GEMMs over shifted views of the same buffer, accumulated by BLAS in place (beta = 1:
``alexc_runtime.blas.gemm``). Positions in the gaps compute values nobody reads; they cost
Hq*Wq/(oh*ow) (about 1.16 for AlexNet's layers) in FLOPs, against the kh*kw-fold copy
traffic of im2col. Backward is the same sums turned around: dW for tap (i, j) is dy times the
shifted view (K = positions, the long side), and dx accumulates W^T dy into the shifted views
of a zeroed ``dxq`` (dy is zero at the gap positions, so they add nothing). Where a tap's
channels make a narrow GEMM side, backward folds taps into the rows of one operand first
(``_fold``: a kw-fold copy per kernel row, or a full im2col for conv1's 3x3 taps over 48
channels).

The batch is processed in blocks of samples so the buffers stay near ``BLOCK_BUDGET`` bytes. The
block size depends only on the shapes, never on the thread count, and taps are accumulated in a
fixed order, so results do not depend on the pool either. ``saved`` is ``(x, w)``: references
to the forward inputs, not copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from alexc_runtime.blas import gemm
from alexc_runtime.geometry import window_out
from alexc_runtime.kernels.base import KernelContext, Space, shard

# Bytes of the flat input or output per block of samples (tuning knobs). Forward GEMMs accumulate
# into the output block once per tap, so it should stay in cache; backward's weight-gradient
# GEMMs reduce over the block's positions, which favours long blocks.
BLOCK_BUDGET = 4 << 20
BACKWARD_BLOCK_BUDGET = 16 << 20


@dataclass(frozen=True)
class _Geometry:
    """The original convolution and the stride-1 one computed in its place."""

    n: int
    c: int
    h: int
    w: int
    filters: int
    groups: int
    kh: int  # the kernel as given (dilated extent (kh-1)*dh+1 when strided: spelled out)
    kw: int
    dh: int
    dw: int
    sh: int
    sw: int
    pad: tuple[int, int, int, int]  # top, left, bottom, right
    oh: int
    ow: int
    # The stride-1 problem: channels (c, a, b), data rows/cols, its own padding, its taps.
    ci: int
    hi: int
    wi: int
    top: int
    left: int
    khi: int
    kwi: int
    dhi: int
    dwi: int
    hq: int  # rows per sample in the flat layout (data plus gap)
    wq: int  # values per row in the flat layout (data plus gap)

    @property
    def strided(self) -> bool:
        return self.sh > 1 or self.sw > 1

    @property
    def pitch(self) -> int:
        """Flat positions per sample."""
        return self.hq * self.wq

    def out_len(self, nb: int) -> int:
        """Output positions computed for a block: up to the last valid row of its last sample."""
        return (nb - 1) * self.pitch + self.oh * self.wq

    def flat_len(self, nb: int) -> int:
        """Length of ``xq``: every tap of every computed position stays inside."""
        reach = (self.khi - 1) * self.dhi * self.wq + (self.kwi - 1) * self.dwi
        return max(nb * self.pitch, self.out_len(nb) + reach)


def _geometry(x_shape: tuple, w_shape: tuple, attrs: Mapping) -> _Geometry:
    n, c, h, width = x_shape
    groups = attrs["groups"]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    top, left, bottom, right = attrs["pad"]
    dh, dw = attrs["dilation"]
    filters = w_shape[0]
    if tuple(w_shape) != (filters, c // groups, kh, kw) or c % groups or filters % groups:
        raise ValueError(
            f"conv weight {tuple(w_shape)} does not fit input {tuple(x_shape)} with "
            f"groups={groups}, kernel={(kh, kw)}"
        )
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # dilated extent
    try:
        oh = window_out(h, kh, sh, top, bottom, dh)
        ow = window_out(width, kw, sw, left, right, dw)
    except ValueError:
        raise ValueError(f"conv output is empty for input {x_shape} and attrs {attrs}") from None
    if sh == 1 and sw == 1:
        ci, hi, wi, khi, kwi, dhi, dwi = c, h, width, kh, kw, dh, dw
        t, l, b, r = top, left, bottom, right
    else:
        # Space-to-depth of the padded input; the dense dilated kernel in ceil(ekh/sh) taps.
        khi, kwi = -(-ekh // sh), -(-ekw // sw)
        hi, wi = oh - 1 + khi, ow - 1 + kwi
        ci, dhi, dwi = c * sh * sw, 1, 1
        t = l = b = r = 0
    hq = max(hi + max(t, b), oh)
    wq = max(wi + max(l, r), ow)
    return _Geometry(
        n, c, h, width, filters, groups, kh, kw, dh, dw, sh, sw, (top, left, bottom, right),
        oh, ow, ci, hi, wi, t, l, khi, kwi, dhi, dwi, hq, wq,
    )  # fmt: skip


def _block_samples(n: int, bytes_per_sample: int, budget: int) -> int:
    """Samples per block: as many as fit in ``budget`` bytes, at least one."""
    return max(1, min(n, budget // bytes_per_sample))


def _block(
    g: _Geometry, itemsize: int, backward: bool = False, copies: int = 1, samples: int | None = None
) -> int:
    """Samples per GEMM block: ``samples`` when given (a knob: ``ctx.conv_block_samples``),
    else as many as the byte budget holds."""
    if samples is not None:
        return max(1, min(g.n, samples))
    budget = BACKWARD_BLOCK_BUDGET if backward else BLOCK_BUDGET
    return _block_samples(g.n, max(g.ci * copies, g.filters) * g.pitch * itemsize, budget)


def workspace_bytes(x_shape: tuple, w_shape: tuple, attrs: Mapping, itemsize: int) -> tuple:
    """(forward, backward) scratch bytes of one call, as the kernels below allocate them."""
    g = _geometry(x_shape, w_shape, attrs)
    taps = g.khi * g.kwi * g.filters * (g.ci // g.groups) * itemsize
    # Strided: the padded tiles of a block, and the dense kernel the taps are cut from.
    tiles = g.c * g.hi * g.sh * g.wi * g.sw * itemsize if g.strided else 0
    dense = g.filters * (g.c // g.groups) * g.khi * g.sh * g.kwi * g.sw * itemsize
    strided = dense if g.strided else 0  # the dense kernel exists only when strided

    nb = _block(g, itemsize)
    flat, out = g.ci * g.flat_len(nb) * itemsize, g.filters * g.out_len(nb) * itemsize
    forward = flat + out + taps + strided + nb * tiles
    fold = _fold(g)
    outer, inner = _fold_offsets(g, fold)
    nb = _block(g, itemsize, backward=True, copies=len(inner))
    flat, out = g.ci * g.flat_len(nb) * itemsize, g.filters * g.out_len(nb) * itemsize
    folded = 0 if fold == "none" else g.ci * len(inner) * (g.out_len(nb) + outer[-1]) * itemsize
    # xq, dxq, dyq, both folded copies, the taps twice (gathered and folded) and their
    # gradients; strided: the tiles of a block in pack and unpack.
    backward = 2 * flat + out + 2 * folded + 3 * taps + strided + 2 * nb * tiles
    return forward, backward


def _copy(src: np.ndarray, space: Space) -> np.ndarray:
    """A contiguous copy of ``src`` carved from ``space``."""
    dst = space.empty(src.shape, src.dtype)
    np.copyto(dst, src)
    return dst


def _tap_weights(g: _Geometry, w: np.ndarray, space: Space) -> np.ndarray:
    """(khi, kwi, F, C_i/groups) contiguous: one (F, C_i/groups) matrix per tap."""
    if not g.strided:
        return _copy(w.transpose(2, 3, 0, 1), space)
    f, cg = w.shape[:2]
    dense = space.empty((f, cg, g.khi * g.sh, g.kwi * g.sw), w.dtype)
    dense.fill(0)
    dense[:, :, : (g.kh - 1) * g.dh + 1 : g.dh, : (g.kw - 1) * g.dw + 1 : g.dw] = w
    dense6 = dense.reshape(f, cg, g.khi, g.sh, g.kwi, g.sw)
    # Channel order (c, a, b) matches the space-to-depth of the input.
    taps = dense6.transpose(2, 4, 0, 1, 3, 5)
    return _copy(taps, space).reshape(g.khi, g.kwi, f, cg * g.sh * g.sw)


def _weight_grad(g: _Geometry, dtaps: np.ndarray, w_shape: tuple) -> np.ndarray:
    """The inverse of ``_tap_weights`` for gradients: taps outside the kernel are dropped."""
    if not g.strided:
        return np.ascontiguousarray(dtaps.transpose(2, 3, 0, 1))
    f, cg = w_shape[:2]
    dense6 = dtaps.reshape(g.khi, g.kwi, f, cg, g.sh, g.sw).transpose(2, 3, 0, 4, 1, 5)
    dense = dense6.reshape(f, cg, g.khi * g.sh, g.kwi * g.sw)
    return np.ascontiguousarray(
        dense[:, :, : (g.kh - 1) * g.dh + 1 : g.dh, : (g.kw - 1) * g.dw + 1 : g.dw]
    )


def _flat4(g: _Geometry, buf: np.ndarray, nb: int) -> np.ndarray:
    """The first nb*Hq*Wq positions of a (rows, length) buffer as (rows, nb, Hq, Wq)."""
    return buf[:, : nb * g.pitch].reshape(buf.shape[0], nb, g.hq, g.wq)


def _positions(g: _Geometry, buf: np.ndarray, nb: int) -> np.ndarray:
    """The valid output positions of a (F, length) buffer as a (F, nb, oh, ow) view."""
    item = buf.itemsize
    strides = (buf.strides[0], g.pitch * item, g.wq * item, item)
    return as_strided(buf, (buf.shape[0], nb, g.oh, g.ow), strides, writeable=buf.flags.writeable)


def _tiles(g: _Geometry, nb: int, ctx: KernelContext, dtype) -> np.ndarray | None:
    """Room for a block's padded, tiled samples (strided convolutions only), flat."""
    if not g.strided:
        return None
    return ctx.scratch.empty(nb * g.c * g.hi * g.sh * g.wi * g.sw, dtype)


def _pack(g: _Geometry, x: np.ndarray, xq: np.ndarray, b0: int, s: int, e: int, tiles=None) -> None:
    """Write samples ``x[b0+s : b0+e]`` into their part of the flat layout ``xq`` (C_i, T);
    ``tiles``: the block's room from ``_tiles``."""
    part = _flat4(g, xq, e)[:, s:e]  # (C_i, e-s, Hq, Wq)
    xb = x[b0 + s : b0 + e]
    if not g.strided:
        part[:, :, : g.top] = 0
        part[:, :, g.top + g.hi :] = 0
        rows = part[:, :, g.top : g.top + g.hi]
        rows[..., : g.left] = 0
        rows[..., g.left + g.wi :] = 0
        np.copyto(rows[..., g.left : g.left + g.wi], xb.transpose(1, 0, 2, 3))
        return
    # Zero-pad into the tiled extent, then fold each sh x sw tile into channels (c, a, b).
    top, left = g.pad[0], g.pad[1]
    ph, pw = g.hi * g.sh, g.wi * g.sw
    per = g.c * ph * pw
    padded = tiles[s * per : e * per].reshape(e - s, g.c, ph, pw)
    padded.fill(0)
    rows, cols = max(0, min(g.h, ph - top)), max(0, min(g.w, pw - left))
    padded[:, :, top : top + rows, left : left + cols] = xb[:, :, :rows, :cols]
    tiles = padded.reshape(e - s, g.c, g.hi, g.sh, g.wi, g.sw).transpose(1, 3, 5, 0, 2, 4)
    part6 = part.reshape(g.c, g.sh, g.sw, e - s, g.hq, g.wq)
    np.copyto(part6[..., : g.hi, : g.wi], tiles)
    part6[..., g.hi :, :] = 0
    part6[..., : g.hi, g.wi :] = 0


def _unpack(
    g: _Geometry, dxq: np.ndarray, dx: np.ndarray, b0: int, s: int, e: int, tiles=None
) -> None:
    """The inverse of ``_pack`` for gradients: ``dx[b0+s : b0+e]`` from the flat layout."""
    part = _flat4(g, dxq, e)[:, s:e]
    target = dx[b0 + s : b0 + e].transpose(1, 0, 2, 3)
    if not g.strided:
        np.copyto(target, part[:, :, g.top : g.top + g.hi, g.left : g.left + g.wi])
        return
    top, left = g.pad[0], g.pad[1]
    part6 = part.reshape(g.c, g.sh, g.sw, e - s, g.hq, g.wq)[..., : g.hi, : g.wi]
    per = g.c * g.hi * g.sh * g.wi * g.sw
    padded = tiles[s * per : e * per].reshape(g.c, e - s, g.hi, g.sh, g.wi, g.sw)
    np.copyto(padded, part6.transpose(0, 3, 4, 1, 5, 2))
    padded4 = padded.reshape(g.c, e - s, g.hi * g.sh, g.wi * g.sw)
    rows = max(0, min(g.h, padded4.shape[2] - top))
    cols = max(0, min(g.w, padded4.shape[3] - left))
    # Input pixels no window reaches (past the last window) get a zero gradient.
    target[...] = 0
    target[:, :, :rows, :cols] = padded4[:, :, top : top + rows, left : left + cols]


def _group_slices(g: _Geometry, copies: int = 1) -> tuple[list[slice], list[slice]]:
    """Per group: its rows of the flat input (C_i, times ``copies`` when folded) and of the
    output (F)."""
    ci, f = g.ci // g.groups * copies, g.filters // g.groups
    return [slice(k * ci, (k + 1) * ci) for k in range(g.groups)], [
        slice(k * f, (k + 1) * f) for k in range(g.groups)
    ]


def conv_forward(
    ctx: KernelContext, attrs: Mapping, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> tuple[np.ndarray, tuple]:
    """y = conv(x, w) + b, then max(y, 0) when attrs has relu=True (inference plans fuse a
    following relu). saved = (x, w), references only.

    One GEMM per tap, never folded: measured, folding conv1's taps into one K=432 GEMM ran no
    faster than nine K=48 ones (M = filters limits both), and the copies cost extra."""
    if w.dtype != x.dtype:
        raise TypeError(f"conv weight dtype {w.dtype} differs from input dtype {x.dtype}")
    g = _geometry(x.shape, w.shape, attrs)
    nb_max = _block(g, x.itemsize, samples=ctx.conv_block_samples)
    y = ctx.output((g.n, g.filters, g.oh, g.ow), x.dtype)
    offsets, _ = _fold_offsets(g, "none")
    taps = _fold_taps(g, _tap_weights(g, w, ctx.scratch), "none", ctx.scratch)
    xq_buf = ctx.scratch.empty(g.ci * g.flat_len(nb_max), x.dtype)
    out_buf = ctx.scratch.empty(g.filters * g.out_len(nb_max), x.dtype)
    tiles = _tiles(g, nb_max, ctx, x.dtype)
    bias = None if b is None else b.reshape(-1, 1, 1)
    relu = attrs.get("relu", False)  # fused by the compiler into inference plans
    gi, gf = _group_slices(g)

    for b0 in range(0, g.n, nb_max):
        nb = min(nb_max, g.n - b0)
        length, out_len = g.flat_len(nb), g.out_len(nb)
        xq = xq_buf[: g.ci * length].reshape(g.ci, length)
        xq[:, nb * g.pitch :] = 0
        shard(ctx, lambda s, e, b0=b0, xq=xq: _pack(g, x, xq, b0, s, e, tiles), nb)
        out = out_buf[: g.filters * out_len].reshape(g.filters, out_len)
        for k in range(g.groups):
            for t, off in enumerate(offsets):
                gemm(taps[t, gf[k]], xq[gi[k], off : off + out_len], out[gf[k]], t > 0)
        valid = _positions(g, out, nb)

        def scatter(s: int, e: int, b0: int = b0, valid: np.ndarray = valid) -> None:
            # (F, nb, oh, ow) -> NCHW, adding the bias in the same pass; a fused relu follows
            # while the samples are still in cache.
            src, target = valid[:, s:e].transpose(1, 0, 2, 3), y[b0 + s : b0 + e]
            if bias is None:
                np.copyto(target, src)
            else:
                np.add(src, bias, out=target)
            if relu:
                np.maximum(target, 0, out=target)

        shard(ctx, scatter, nb)
    return y, (x, w)


def _fold(g: _Geometry) -> str:
    """How backward groups taps into GEMMs (unless ``ctx.conv_fold`` says): "none" (one per tap,
    K = channels), "row" (one per kernel row, over a kw-fold copy of the input) or "all" (one
    GEMM over a full im2col).
    Folding pays a copy to lift a narrow GEMM side (conv1 after space-to-depth: 48 channels;
    paper conv2: 48 per group) to where BLAS runs near its peak."""
    cg = g.ci // g.groups
    if cg * g.khi * g.kwi <= 512:
        return "all"
    return "row" if cg < 128 else "none"


def _folded_buffer(g: _Geometry, fold: str, nb: int, dtype, space) -> np.ndarray | None:
    """Room for the folded copies of a block's flat input (None when nothing is folded)."""
    if fold == "none":
        return None
    outer, inner = _fold_offsets(g, fold)
    return space.empty(g.ci * len(inner) * (g.out_len(nb) + outer[-1]), dtype)


def _fold_source(g: _Geometry, xq: np.ndarray, buf, inner: list[int], n_src: int) -> np.ndarray:
    """The GEMMs' input operand, (C_i * folded taps, n_src): xq itself, or copies of it shifted
    by the folded offsets, rows ordered (channel, tap)."""
    if buf is None:
        return xq
    src = buf[: g.ci * len(inner) * n_src].reshape(g.ci, len(inner), n_src)
    for f, off in enumerate(inner):
        np.copyto(src[:, f], xq[:, off : off + n_src])
    return src.reshape(-1, n_src)


def _fold_offsets(g: _Geometry, fold: str) -> tuple[list[int], list[int]]:
    """(offsets between GEMMs, offsets folded into the rows of one GEMM's operand)."""
    rows = [i * g.dhi * g.wq for i in range(g.khi)]
    cols = [j * g.dwi for j in range(g.kwi)]
    every = [r + c for r in rows for c in cols]
    return {"none": (every, [0]), "row": (rows, cols), "all": ([0], every)}[fold]


def _fold_taps(g: _Geometry, taps: np.ndarray, fold: str, space: Space) -> np.ndarray:
    """(khi, kwi, F, Cg) tap weights -> (GEMMs, F, Cg * folded taps), rows ordered (c, tap)."""
    f = g.filters
    if fold == "none":
        return taps.reshape(g.khi * g.kwi, f, -1)
    order = (0, 2, 3, 1) if fold == "row" else (2, 3, 0, 1)
    folded = _copy(taps.transpose(order), space)
    return folded.reshape(g.khi if fold == "row" else 1, f, -1)


def _unfold_taps(g: _Geometry, folded: np.ndarray, fold: str) -> np.ndarray:
    """The inverse of ``_fold_taps``: back to (khi, kwi, F, Cg)."""
    f, cg = g.filters, g.ci // g.groups
    if fold == "none":
        return folded.reshape(g.khi, g.kwi, f, cg)
    if fold == "row":
        return folded.reshape(g.khi, f, cg, g.kwi).transpose(0, 3, 1, 2)
    return folded.reshape(f, cg, g.khi, g.kwi).transpose(2, 3, 0, 1)


def conv_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, ...]:
    """Gradients (dx, dw) or (dx, dw, db), by the shifted GEMMs of the forward turned around."""
    x, w = saved
    g = _geometry(x.shape, w.shape, attrs)
    fold = ctx.conv_fold or _fold(g)
    outer, inner = _fold_offsets(g, fold)
    nb_max = _block(g, x.itemsize, True, len(inner), ctx.conv_block_samples)
    needs_dx = ctx.needs is None or ctx.needs[0]  # not for the image itself (the first layer)
    dx = ctx.output(x.shape, x.dtype) if needs_dx else None
    space = ctx.scratch
    taps = _fold_taps(g, _tap_weights(g, w, space), fold, space) if needs_dx else None
    dtaps = space.empty((len(outer), g.filters, g.ci // g.groups * len(inner)), x.dtype)
    xq_buf = space.empty(g.ci * g.flat_len(nb_max), x.dtype)
    dxq_buf = space.empty(xq_buf.shape, x.dtype) if needs_dx else None
    folded_buf = _folded_buffer(g, fold, nb_max, x.dtype, space)
    dfolded_buf = (
        None if folded_buf is None or not needs_dx else space.empty(folded_buf.shape, x.dtype)
    )
    dyq_buf = space.empty(g.filters * g.out_len(nb_max), x.dtype)
    tiles = _tiles(g, nb_max, ctx, x.dtype)
    dtiles = _tiles(g, nb_max, ctx, x.dtype) if needs_dx else None
    gi, gf = _group_slices(g, len(inner))

    for b0 in range(0, g.n, nb_max):
        nb = min(nb_max, g.n - b0)
        length, out_len = g.flat_len(nb), g.out_len(nb)
        xq = xq_buf[: g.ci * length].reshape(g.ci, length)
        dyq = dyq_buf[: g.filters * out_len].reshape(g.filters, out_len)
        xq[:, nb * g.pitch :] = 0

        def gather(s: int, e: int, b0: int = b0, xq=xq, dyq=dyq, nb=nb) -> None:
            _pack(g, x, xq, b0, s, e, tiles)
            # dy into the flat layout, zero at the gap positions so they add nothing.
            lo, hi = s * g.pitch, min(e * g.pitch, dyq.shape[1])
            dyq[:, lo:hi] = 0
            np.copyto(_positions(g, dyq, nb)[:, s:e], dy[b0 + s : b0 + e].transpose(1, 0, 2, 3))

        shard(ctx, gather, nb)
        n_src = out_len + outer[-1]
        src = _fold_source(g, xq, folded_buf, inner, n_src)
        for k in range(g.groups):
            for t, off in enumerate(outer):
                gemm(dyq[gf[k]], src[gi[k], off : off + out_len].T, dtaps[t, gf[k]], b0 > 0)
        if dx is None:
            continue
        dxq = dxq_buf[: g.ci * length].reshape(g.ci, length)
        dxq.fill(0)
        if fold == "none":
            dsrc = dxq
        else:
            dsrc = dfolded_buf[: g.ci * len(inner) * n_src].reshape(-1, n_src)
            dsrc.fill(0)
        for k in range(g.groups):
            for t, off in enumerate(outer):
                gemm(taps[t, gf[k]].T, dyq[gf[k]], dsrc[gi[k], off : off + out_len], True)
        if fold != "none":
            dsrc3 = dsrc.reshape(g.ci, len(inner), n_src)
            for f, off in enumerate(inner):
                target = dxq[:, off : off + n_src]
                np.add(target, dsrc3[:, f], out=target)
        shard(ctx, lambda s, e, b0=b0, dxq=dxq: _unpack(g, dxq, dx, b0, s, e, dtiles), nb)

    dw = _weight_grad(g, _unfold_taps(g, dtaps, fold), w.shape)
    if np.shares_memory(dw, dtaps):  # a result: never a view of the scratch
        dw = dw.copy()
    if not attrs["bias"]:
        return dx, dw
    return dx, dw, dy.sum(axis=(0, 2, 3))
