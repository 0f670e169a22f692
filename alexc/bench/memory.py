"""Peak-memory probes: tracemalloc for NumPy, the resident set (VmRSS, VmHWM) for the rest."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import tracemalloc
from collections.abc import Callable

PEAK_METHODS = {
    "tracemalloc": "parameters (+ momentum when training) + the plan's arena + tracemalloc peak "
    "of one call",
    "rss": "VmHWM of one call after warm-up (reset just before it, after free heap pages were "
    "handed back) - VmRSS before building the executor; one-time library set-up excluded by an "
    "earlier batch-1 call",
}


def proc_status() -> dict[str, int]:
    """The Vm* lines of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_hwm() -> bool:
    """Reset VmHWM to the current resident size (Linux: clear_refs 5); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS, so VmRSS is a fair baseline."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def traced_peak(call: Callable[[], object]) -> int:
    """Peak bytes NumPy and Python allocated during one call (beyond what existed before)."""
    gc.collect()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
