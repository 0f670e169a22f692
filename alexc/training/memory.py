"""Runs that cannot fit are refused before they start: the memory plan's peak against the
memory this process can still take.

The Plan knows its peak (`Plan.planned_peak_bytes`: parameters, their gradients when training,
and the arena and kernel state at the busiest step); callers add what lives beside it (momentum
buffers, prefetched batches). The onnxruntime and PyTorch executors have no plan of ours: the
NumPy executor's plan for the same batch stands in for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import AlexcError
from ..ir import Graph

CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """The cgroup's memory limit less what it uses (cgroup v2, then v1), if it has a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = (CGROUP / limit_file).read_text().strip()
            usage = int((CGROUP / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 spells "no limit" as a huge number
            return max(int(limit) - usage, 0)
    return None


def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, or the room left in the
    cgroup's limit where that is less; None where neither is known."""
    known = [b for b in (_meminfo_available(), _cgroup_room()) if b is not None]
    return min(known) if known else None


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def check_fits(need: Callable[[int], int], batch_size: int, what: str) -> None:
    """Refuse `batch_size` if `need(batch)`, the planned peak in bytes, exceeds the memory
    available: one AlexcError with both sizes and the largest batch size that fits.

    `need` must grow with the batch size (plans do)."""
    available = available_bytes()
    if available is None or need(batch_size) <= available:
        return
    lo, hi = 0, batch_size  # need(lo) fits (or lo is 0), need(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= available else (lo, mid)
    advice = (
        f"the largest batch size that fits is {lo}"
        if lo
        else "not even batch size 1 fits; use a smaller graph or free memory"
    )
    raise AlexcError(
        f"{what}: batch size {batch_size} plans a peak of {_size(need(batch_size))}, but "
        f"{_size(available)} is available; {advice}"
    )


def plan_peak(graph: Graph, batch_size: int, *, training: bool) -> int:
    """The planned peak of one call of the NumPy executor, in bytes."""
    from ..passes.lower import lower

    return lower(graph, batch_size, training=training).planned_peak_bytes


def input_bytes(graph: Graph, batch_size: int) -> int:
    """A float32 batch of the graph's input."""
    size = 4 * batch_size
    for d in graph.input.shape:
        size *= d
    return size
