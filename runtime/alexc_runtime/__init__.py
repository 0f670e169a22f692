"""alexc's runtime: NumPy kernels with their backward passes, the shard pool and the executor.

Importing it changes nothing in the process: process-wide tuning is `configure`'s, opt-in.
This module imports neither NumPy nor anything that loads it, so `configure` can run first.
"""

from __future__ import annotations

import os
import sys

# After each GEMM, OpenBLAS's worker threads spin for 2**28 cycles (about 0.1 s) by default,
# holding a core while the shard pool runs the non-BLAS work between GEMMs (training steps ran
# 6-12% slower). 2**16 cycles (the value 16) keeps them warm between the tap GEMMs of one conv.
BLAS_THREAD_TIMEOUT = 16

_settings = {"keep_freed_memory": False, "blas_thread_timeout": False}


def configure(*, keep_freed_memory: bool = False, blas_thread_timeout: int | None = None) -> dict:
    """Process-wide tuning the runtime runs faster with; a library user opts in, the `alexc`
    command calls it for its own process. Returns what is in effect now.

    keep_freed_memory: have glibc keep freed memory mapped for reuse (`malloc.keep_freed_memory`:
    `mallopt`, for the whole process and irreversible). Nothing changes where the user tuned
    malloc (`MALLOC_*`, `GLIBC_TUNABLES`) or it is not glibc. The executor's arena already
    reuses its own memory; this helps what is still allocated per call (returned outputs,
    parameter gradients, the optimizer, the data pipeline, other libraries).

    blas_thread_timeout: OpenBLAS's spin time after a GEMM (`OPENBLAS_THREAD_TIMEOUT`, as a
    power of two of cycles; `BLAS_THREAD_TIMEOUT` is ours). OpenBLAS reads it once, when NumPy
    loads it, so it can only take effect if NumPy is not imported yet: call `configure` before
    `import numpy` (the `alexc` command does, in `alexc_launch`). The variable is set in
    `os.environ` either way, unless the user set one (theirs wins), so processes started
    afterwards (distributed ranks) inherit it; `blas_thread_timeout` in the result says whether
    it holds in this process.
    """
    if keep_freed_memory:
        from .malloc import keep_freed_memory as keep

        _settings["keep_freed_memory"] = keep()
    if blas_thread_timeout is not None:
        loaded = "numpy" in sys.modules
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(blas_thread_timeout))
        _settings["blas_thread_timeout"] = not loaded
    return dict(_settings)


def settings() -> dict:
    """What `configure` has put in effect in this process (False: nothing)."""
    return dict(_settings)
