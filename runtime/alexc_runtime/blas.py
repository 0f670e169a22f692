"""GEMM straight into the BLAS that NumPy links, for the two things ``np.matmul`` cannot do.

1. Accumulate: ``c += a @ b`` (BLAS beta = 1) with no temporary and no extra pass over ``c``.
2. Strided operands: any 2-D view whose rows or columns are contiguous is passed as it stands
   (its row stride becomes BLAS's leading dimension), so the shifted, overlapping views that
   convolution reads from one padded buffer cost no copy.

NumPy's wheels bundle OpenBLAS (``scipy_openblas``, 64-bit integers); threadpoolctl tells where
it is loaded. The binding checks itself against ``np.matmul`` once when loaded; if no known
symbol is found, or the check fails, ``gemm`` falls back to ``np.matmul`` (plus an add when
accumulating), which is correct but slower. ctypes releases the GIL during the call, and BLAS
runs with the threads threadpoolctl allows, as for ``np.matmul``.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from threadpoolctl import ThreadpoolController

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

# (symbol prefix, symbol suffix, integer type): numpy's own scipy-openblas builds, then plain
# OpenBLAS or any CBLAS with 32-bit integers.
_SYMBOLS = (
    ("scipy_cblas_", "64_", ctypes.c_int64),
    ("cblas_", "64_", ctypes.c_int64),
    ("scipy_cblas_", "", ctypes.c_int32),
    ("cblas_", "", ctypes.c_int32),
)


@functools.cache
def _routines() -> dict | None:
    """{dtype: ctypes function} for float32 and float64, or None when unavailable."""
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        try:
            dll = ctypes.CDLL(lib.filepath)
        except OSError:
            continue
        for prefix, suffix, integer in _SYMBOLS:
            try:
                fns = {
                    np.dtype(np.float32): getattr(dll, f"{prefix}sgemm{suffix}"),
                    np.dtype(np.float64): getattr(dll, f"{prefix}dgemm{suffix}"),
                }
            except AttributeError:
                continue
            for dtype, fn in fns.items():
                real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
                fn.argtypes += [integer] * 3 + [real, ctypes.c_void_p, integer]
                fn.argtypes += [ctypes.c_void_p, integer, real, ctypes.c_void_p, integer]
            if _self_check(fns):
                return fns
    return None


def _self_check(fns: dict) -> bool:
    """The binding gives np.matmul's answer on transposed, strided and accumulated operands."""
    rng = np.random.default_rng(0)
    for dtype, fn in fns.items():
        a = rng.standard_normal((6, 5)).astype(dtype)
        b = rng.standard_normal((9, 11)).astype(dtype)[2:8, 1:10]  # rows are strided
        c = rng.standard_normal((5, 12)).astype(dtype)
        out = c[:, 2:11]  # a strided view, accumulated into
        want = out + a.T @ b
        if not _call(fn, a.T, b, out, 1.0) or not np.allclose(out, want, rtol=1e-5, atol=1e-5):
            return False
    return True


def _layout(m: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) for a row-major BLAS operand, or None if unusable."""
    item = m.itemsize
    rows, cols = m.shape
    s0, s1 = m.strides
    if s1 == item or cols == 1:
        ld = s0 // item if rows > 1 else cols
        if s0 % item == 0 and ld >= max(1, cols):
            return _NO_TRANS, ld
    if s0 == item or rows == 1:
        ld = s1 // item if cols > 1 else rows
        if s1 % item == 0 and ld >= max(1, rows):
            return _TRANS, ld
    return None


def _call(fn, a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float) -> bool:
    """c = a @ b + beta * c through ``fn``; False (nothing done) if an operand is unusable."""
    la, lb, lc = _layout(a), _layout(b), _layout(c)
    if la is None or lb is None or lc is None or lc[0] != _NO_TRANS:
        return False
    if not c.flags.writeable:
        return False
    m, k = a.shape
    n = b.shape[1]
    fn(
        _ROW_MAJOR, la[0], lb[0], m, n, k, 1.0,
        a.ctypes.data, la[1], b.ctypes.data, lb[1], beta, c.ctypes.data, lc[1],
    )  # fmt: skip
    return True


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> np.ndarray:
    """``out = a @ b`` or, with ``accumulate``, ``out += a @ b``, for 2-D float32/float64 arrays.

    ``out`` must not overlap ``a`` or ``b``. Returns ``out``.
    """
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        raise ValueError("gemm takes 2-D arrays")
    m, k = a.shape
    if b.shape[0] != k or out.shape != (m, b.shape[1]):
        raise ValueError(f"gemm shapes do not fit: {a.shape} @ {b.shape} -> {out.shape}")
    if not (a.dtype == b.dtype == out.dtype):
        raise TypeError(f"gemm dtypes differ: {a.dtype}, {b.dtype}, {out.dtype}")
    if out.size == 0:
        return out
    if k == 0:
        if not accumulate:
            out.fill(0)
        return out
    fns = _routines()
    fn = None if fns is None else fns.get(out.dtype)
    if fn is not None and _call(fn, a, b, out, 1.0 if accumulate else 0.0):
        return out
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
    return out


def available() -> bool:
    """Whether ``gemm`` calls BLAS directly (else it falls back to ``np.matmul``)."""
    return _routines() is not None
