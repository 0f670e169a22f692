"""Dropout masks keyed by sample, so any split of a batch draws the same masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SampleRng:
    """Stands in for a numpy Generator in `KernelContext.rng`: `random(shape, dtype)` gives
    uniforms in [0, 1) whose row i is the SplitMix64 stream keyed by (key, call,
    first_sample + i).

    `call` counts this object's draws (the n-th dropout layer of the forward pass), so two
    layers of one shape get different masks. A process that holds rows 64..127 of a batch
    (`first_sample=64`) draws exactly the rows a process holding the whole batch draws there.
    Vectorised: a few array passes per draw, no Generator per row.
    """

    def __init__(self, key: Sequence[int], first_sample: int = 0):
        state = np.zeros(1, np.uint64)
        for k in key:
            state = _mix(state ^ (np.array([k], np.uint64) + _GOLDEN))
        self.state = state
        self.first_sample = first_sample
        self.calls = 0

    def random(self, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        self.calls += 1
        call = _mix(self.state ^ (np.array([self.calls], np.uint64) + _GOLDEN))
        rows = np.arange(self.first_sample, self.first_sample + shape[0], dtype=np.uint64)
        row_state = _mix(call ^ (rows + _GOLDEN))
        steps = np.arange(1, math.prod(shape[1:]) + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(row_state[:, None] + steps)
        if np.dtype(dtype) == np.float32:  # 24 random bits: every float32 in [0, 1) a step
            return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2**-24)).reshape(shape)
        return ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53).astype(dtype).reshape(shape)
