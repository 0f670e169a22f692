"""The direct BLAS binding against np.matmul, on the operand layouts conv hands it."""

from __future__ import annotations

import numpy as np
import pytest
from alexc_runtime import blas


def operands(dtype, rng):
    """(a, b, c) views: a transposed, b a shifted window of a wider buffer, c strided rows."""
    a = rng.standard_normal((9, 6)).astype(dtype).T  # (6, 9), column-major
    wide = rng.standard_normal((9, 40)).astype(dtype)
    b = wide[:, 3:17]  # (9, 14), row stride 40
    c = rng.standard_normal((6, 20)).astype(dtype)[:, 2:16]  # (6, 14), row stride 20
    return a, b, c


@pytest.mark.parametrize("direct", [True, False], ids=["blas", "fallback"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_matches_matmul(direct, dtype, accumulate, monkeypatch):
    if not direct:
        monkeypatch.setattr(blas, "_routines", lambda: None)
    a, b, c = operands(dtype, np.random.default_rng(0))
    before = c.copy()
    blas.gemm(a, b, c, accumulate)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 @ b64 + (before if accumulate else 0)
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_the_direct_path_is_taken_here():
    """numpy's wheels bundle OpenBLAS; if this fails, conv silently runs the slow fallback."""
    assert blas.available()


def test_gemm_leaves_what_is_beside_a_strided_target_alone():
    rng = np.random.default_rng(1)
    buf = rng.standard_normal((4, 12)).astype(np.float32)
    keep = buf.copy()
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 5))
    blas.gemm(a, b.astype(np.float32), buf[:, 4:9], accumulate=True)
    np.testing.assert_array_equal(buf[:, :4], keep[:, :4])
    np.testing.assert_array_equal(buf[:, 9:], keep[:, 9:])


def test_gemm_refuses_mismatched_shapes_and_dtypes():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        blas.gemm(a, np.ones((4, 2), np.float32), np.empty((2, 2), np.float32))
    with pytest.raises(TypeError, match="dtypes differ"):
        blas.gemm(a, np.ones((3, 2)), np.empty((2, 2), np.float32))
