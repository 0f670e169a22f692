"""flatten and concat: ops that only move data, forward and backward."""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import numpy as np

from alexc_runtime.kernels.base import KernelContext


def flatten_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Reshape to 2-D (prod(shape[:axis]), rest), as ONNX Flatten; a view when x is contiguous.

    saved = (x.shape,).
    """
    axis = attrs["axis"] % (x.ndim + 1) if x.ndim else 0
    return x.reshape(prod(x.shape[:axis]), prod(x.shape[axis:])), (x.shape,)


def flatten_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = dy reshaped back to the input's shape."""
    (x_shape,) = saved
    return (dy.reshape(x_shape),)


def concat_forward(ctx: KernelContext, attrs: Mapping, *xs: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Join inputs along ``axis``. saved = (sizes,), each input's extent along the axis."""
    axis = attrs["axis"]
    y = np.concatenate(xs, axis=axis)
    axis %= y.ndim
    return y, (tuple(x.shape[axis] for x in xs),)


def concat_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, ...]:
    """Split dy back into the inputs' extents; each piece made contiguous for the next kernel."""
    (sizes,) = saved
    cuts = np.cumsum(sizes)[:-1]
    return tuple(np.ascontiguousarray(p) for p in np.split(dy, cuts, axis=attrs["axis"]))
