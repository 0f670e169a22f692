"""Evaluation: top-1, top-5 and loss of a predictor over a loader (10-crop and confusion
counts included), summed over MPI ranks."""

from __future__ import annotations

import numpy as np

from ..errors import AlexcError
from .distributed import Single


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def evaluate(
    predictor,
    loader,
    crops: int = 1,
    limit_batches: int | None = None,
    ranks: Single | None = None,
    confusion: bool = False,
    classes: int | None = None,
) -> dict:
    """Top-1, top-5 and mean loss of a predictor (either executor's `.predict(x)`) over every
    batch of `loader` (under MPI: of every rank's share of them, the counts summed); with
    `confusion`, also the counts of (true class, top-1 class) pairs as a nested list under
    "confusion" (rows: true class). Under MPI pass `classes`, the class count: the counts are
    summed over ranks, so a rank that sees no image must still know their size.

    With `crops` > 1 the loader yields that many crops per image, in consecutive rows, and
    the prediction is the mean of their softmax (the paper's 10-crop evaluation)."""
    ranks = ranks or Single()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    counts = np.zeros((classes, classes), np.int64) if confusion and classes else None
    for i, (x, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        logp = log_softmax(predictor.predict(x))
        if crops > 1:
            logp = np.log(np.exp(logp).reshape(len(y), crops, -1).mean(axis=1))
        logits = logp
        loss_sum += float(-logp[np.arange(len(y)), y].sum())
        correct1 += topk_correct(logits, y, 1)
        correct5 += topk_correct(logits, y, 5)
        n += len(y)
        if confusion:
            if counts is None:
                counts = np.zeros((logits.shape[1], logits.shape[1]), np.int64)
            # The same call as topk_correct's, so ties break alike and the trace is top-1.
            np.add.at(counts, (y, np.argpartition(-logits, 0, axis=1)[:, 0]), 1)
    correct1, correct5, loss_sum, n = ranks.sum([correct1, correct5, loss_sum, n])
    n = int(n)
    if confusion and counts is not None:
        counts = ranks.sum(counts.ravel()).reshape(counts.shape).astype(np.int64)
    if n == 0:
        raise AlexcError("the validation set is empty")
    result = {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "images": n}
    if confusion:
        result["confusion"] = counts.tolist()
    return result
