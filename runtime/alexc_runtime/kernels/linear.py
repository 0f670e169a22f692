"""linear: y = x @ w.T + b with the PyTorch weight layout (units, K), forward and backward."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alexc_runtime.kernels.base import KernelContext


def linear_forward(
    ctx: KernelContext, attrs: Mapping, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> tuple[np.ndarray, tuple]:
    """y = x @ w.T + b for x (N, K), w (units, K). saved = (x, w), references only."""
    if w.dtype != x.dtype:
        raise TypeError(f"linear weight dtype {w.dtype} differs from input dtype {x.dtype}")
    y = np.matmul(x, w.T)
    if b is not None:
        y += b
    return y, (x, w)


def linear_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, ...]:
    """(dx, dw) or (dx, dw, db): dx = dy @ w, dw = dy.T @ x, db = sum of dy over the batch."""
    x, w = saved
    dx = np.matmul(dy, w)
    dw = np.matmul(dy.T, x)
    if not attrs["bias"]:
        return dx, dw
    return dx, dw, dy.sum(axis=0)
