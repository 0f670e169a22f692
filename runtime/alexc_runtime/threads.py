"""The shard pool: runs batch-sharded, non-BLAS kernel work on a fixed number of threads.

BLAS parallelises the GEMMs by itself; this pool parallelises the rest (packing conv inputs,
pooling, LRN, elementwise work) by splitting the batch into contiguous chunks. NumPy releases
the GIL in its ufunc loops and copies, so plain threads give real parallelism here.

Invariants the kernels rely on:
- the split of ``range(n)`` depends only on ``n`` and ``threads`` (deterministic);
- every chunk's work touches only its own samples, so results never depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``min(parts, n)`` contiguous, near-equal ``(start, stop)`` chunks."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class ShardPool:
    """Runs batch-sharded, non-BLAS work on ``threads`` threads.

    The calling thread runs the first chunk itself, so the pool owns ``threads - 1`` workers.
    ``map_range`` is not re-entrant: ``fn`` must not call back into the same pool.
    """

    def __init__(self, threads: int):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._executor = (
            ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="alexc-shard")
            if threads > 1
            else None
        )

    def map_range(self, fn: Callable[[int, int], object], n: int) -> None:
        """Call ``fn(start, stop)`` on contiguous chunks of ``range(n)`` in parallel.

        Returns when every chunk is done. With one thread (or ``n < 2``) runs ``fn(0, n)``
        inline. The first exception raised by any chunk propagates, after all chunks finished.
        """
        if self._executor is None or n < 2:
            fn(0, n)
            return
        first, *rest = split_range(n, self.threads)
        futures = [self._executor.submit(fn, start, stop) for start, stop in rest]
        try:
            fn(*first)
        finally:
            # Never return (or raise) while a worker still writes into the caller's buffers.
            wait(futures)
        for future in futures:
            future.result()

    def close(self) -> None:
        """Stop the worker threads; the pool must not be used afterwards."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
