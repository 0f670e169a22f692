"""Paired comparisons: the NumPy executor against each peer, round by round."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median


def compare(results: Sequence[dict]) -> list[dict]:
    """The NumPy executor against every other row of the same mode and batch size.

    speed: NumPy's images/s over the peer's, round by round (the peer's latency over NumPy's in
    the same round), as median, min and max over the rounds; memory: NumPy's peak over the
    peer's (None when either is unknown)."""
    found = []
    for ours in (r for r in results if r["executor"] == "numpy"):
        same = (ours["mode"], ours["batch_size"])
        for peer in results:
            if peer["executor"] == "numpy" or (peer["mode"], peer["batch_size"]) != same:
                continue
            ratios = [
                p / n for p, n in zip(peer["latencies_ms"], ours["latencies_ms"], strict=True)
            ]
            memory = None
            if ours["peak_mb"] is not None and peer["peak_mb"]:
                memory = ours["peak_mb"] / peer["peak_mb"]
            found.append(
                {
                    "mode": ours["mode"],
                    "batch_size": ours["batch_size"],
                    "peer": peer["executor"],
                    "speed": median(ratios),
                    "speed_min": min(ratios),
                    "speed_max": max(ratios),
                    "rounds": len(ratios),
                    "memory": memory,
                }
            )
    return found
