"""Dropout masks keyed by sample, so any split of a batch draws the same masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SampleRng:
    """Stands in for a numpy Generator in `KernelContext.rng`: `random(shape, dtype)` draws
    row i of the batch from its own stream, keyed by (key, call, first_sample + i).

    `call` counts this object's draws (the n-th dropout layer of the forward pass), so two
    layers of one shape get different masks. A process that holds rows 64..127 of a batch
    (`first_sample=64`) draws exactly the rows a process holding the whole batch draws there.
    """

    def __init__(self, key: Sequence[int], first_sample: int = 0):
        self.key = tuple(int(k) for k in key)
        self.first_sample = first_sample
        self.calls = 0

    def random(self, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        call = self.calls
        self.calls += 1
        out = np.empty(shape, dtype)
        for i in range(shape[0]):
            stream = np.random.default_rng([*self.key, call, self.first_sample + i])
            out[i] = stream.random(shape[1:], dtype=dtype)
        return out
