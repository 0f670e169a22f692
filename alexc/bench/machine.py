"""The machine a bench runs on: CPU, SIMD flags, library versions and the sgemm peak."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from statistics import median

import numpy as np
from alexc_runtime.executor import blas_threads

# (what it is, M, K, N) of C(M, N) = A(M, K) @ B(K, N): the GEMMs an AlexNet layer runs.
SGEMM_SHAPES = (
    ("conv1 (paper), 4 images", 96, 363, 4 * 55 * 55),
    ("conv2 (paper), one group, 8 images", 128, 1200, 8 * 27 * 27),
    ("conv3, 16 images", 384, 2304, 16 * 13 * 13),
    ("fc6, batch 64 (x @ W.T)", 64, 9216, 4096),
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> tuple[str, list[str]]:
    """(model name, the SIMD flags that matter for sgemm) from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            info = {}
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())  # the first CPU's lines
        name = info.get("model name") or name
        have = set(info.get("flags", "").split())
        flags = [f for f in ("avx2", "fma", "avx512f") if f in have]
    return name, flags


def sgemm_peak(threads: int, repeats: int = 5, seed: int = 0) -> dict:
    """NumPy float32 matmul GFLOP/s on AlexNet-shaped GEMMs with `threads` BLAS threads."""
    rng = np.random.default_rng(seed)
    shapes = []
    with blas_threads(threads):
        for what, m, k, n in SGEMM_SHAPES:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((n, k), dtype=np.float32).T  # a transposed view, no copy
            out = np.empty((m, n), dtype=np.float32)
            np.matmul(a, b, out=out)  # warm-up: first-touch pages, BLAS thread start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                np.matmul(a, b, out=out)
                times.append(time.perf_counter() - start)
            gflops = 2 * m * k * n / median(times) / 1e9
            shapes.append({"gemm": what, "m": m, "k": k, "n": n, "gflops": gflops})
    return {"sgemm_peak_gflops": max(s["gflops"] for s in shapes), "sgemm": shapes}


def machine_info(threads: int, sgemm_repeats: int = 5) -> dict:
    """The CPU, library versions, BLAS and the measured sgemm peak at `threads` threads."""
    from threadpoolctl import threadpool_info

    cpu, simd = _cpu()
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "architecture")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu": cpu,
        "simd": simd,
        "cores": len(affinity(0)) if affinity else os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        "blas": blas[0] if blas else None,
        **sgemm_peak(threads, sgemm_repeats),
    }
