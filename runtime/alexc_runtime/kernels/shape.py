"""flatten and concat: ops that only move data, forward and backward."""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import numpy as np

from alexc_runtime.kernels.base import KernelContext


def flatten_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Keep the batch and the dims before ``axis``, merge the rest: (N, *x.shape[1:axis], rest).

    axis=1 is ONNX's Flatten; unlike ONNX, a larger axis never merges the batch. A view when x
    is contiguous. saved = (x.shape,).
    """
    axis = attrs["axis"]
    return x.reshape(*x.shape[:axis], prod(x.shape[axis:])), (x.shape,)


def flatten_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = dy reshaped back to the input's shape."""
    (x_shape,) = saved
    return (dy.reshape(x_shape),)


def concat_forward(ctx: KernelContext, attrs: Mapping, *xs: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Join inputs along ``axis``. saved = (sizes,), each input's extent along the axis."""
    axis = attrs["axis"] % xs[0].ndim
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.concatenate(xs, axis=axis, out=ctx.output(shape, np.result_type(*xs)))
    return y, (tuple(x.shape[axis] for x in xs),)


def concat_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, ...]:
    """Split dy back into the inputs' extents; each piece copied out contiguous for the next
    kernel."""
    (sizes,) = saved
    cuts = np.cumsum(sizes)[:-1]
    pieces = np.split(dy, cuts, axis=attrs["axis"])
    return tuple(_copy(p, ctx.output(p.shape, p.dtype, index)) for index, p in enumerate(pieces))


def _copy(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    np.copyto(dst, src)
    return dst
