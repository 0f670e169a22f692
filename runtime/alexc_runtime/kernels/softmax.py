"""softmax and the fused softmax + cross-entropy loss, forward and backward."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alexc_runtime.kernels.base import KernelContext


def _softmax(x: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """exp(x - max) / sum: the shift keeps exp from overflowing."""
    y = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_forward(ctx: KernelContext, attrs: Mapping, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Softmax along ``axis``. saved = (y,), the output itself."""
    y = _softmax(x, attrs.get("axis", 1), ctx.output(x.shape, x.dtype))
    return y, (y,)


def softmax_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = y * (dy - sum(dy * y)) along the axis."""
    (y,) = saved
    axis = attrs.get("axis", 1)
    dx = np.multiply(dy, y, out=ctx.output(dy.shape, dy.dtype))
    dx = np.subtract(dy, dx.sum(axis=axis, keepdims=True), out=dx)
    dx *= y
    return (dx,)


def log_softmax_forward(
    ctx: KernelContext, attrs: Mapping, x: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """x - max - log(sum(exp(x - max))) along ``axis``. saved = (y,), the output itself."""
    axis = attrs.get("axis", 1)
    y = np.subtract(x, x.max(axis=axis, keepdims=True), out=ctx.output(x.shape, x.dtype))
    y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
    return y, (y,)


def log_softmax_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray]:
    """dx = dy - softmax(x) * sum(dy) along the axis, with softmax(x) = exp(y)."""
    (y,) = saved
    dx = np.exp(y, out=ctx.output(dy.shape, dy.dtype))
    dx *= dy.sum(axis=attrs.get("axis", 1), keepdims=True)
    np.subtract(dy, dx, out=dx)
    return (dx,)


def softmax_cross_entropy_forward(
    ctx: KernelContext, attrs: Mapping, logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, tuple]:
    """Mean cross-entropy of softmax(logits) against label-smoothed one-hot targets.

    Targets are (1 - ls) * onehot + ls / K. Returns a 0-d array of the logits' dtype.
    saved = (p, labels): the softmax probabilities (N, K) and a reference to the labels.
    """
    n, k = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    smoothing = float(attrs["label_smoothing"])
    # Stable log-softmax: log p = (x - max) - log(sum(exp(x - max))).
    log_p = np.subtract(logits, logits.max(axis=1, keepdims=True))
    p = np.exp(log_p, out=ctx.keep.empty(log_p.shape, log_p.dtype))
    total = p.sum(axis=1, keepdims=True)
    p /= total
    log_p -= np.log(total)
    per_sample = log_p[np.arange(n), labels] * (1.0 - smoothing)
    if smoothing:
        per_sample += log_p.sum(axis=1) * (smoothing / k)
    loss = np.asarray(-per_sample.mean(), dtype=logits.dtype)
    return loss, (p, labels)


def softmax_cross_entropy_backward(
    ctx: KernelContext, attrs: Mapping, dy: np.ndarray, saved: tuple
) -> tuple[np.ndarray, None]:
    """dlogits = dy * (p - targets) / N; labels get no gradient."""
    p, labels = saved
    n, k = p.shape
    smoothing = float(attrs["label_smoothing"])
    dlogits = np.subtract(p, smoothing / k, out=ctx.output(p.shape, p.dtype))
    dlogits[np.arange(n), labels] -= 1.0 - smoothing
    dlogits *= float(dy) / n
    return dlogits, None
