"""Window and channel arithmetic that the kernels, the compiler's shape rules and the ONNX
export and import all need, written once: window output sizes, adaptive-pool bins and the
LRN alpha conventions. Pure integer and float arithmetic; nothing here imports alexc.
"""

from __future__ import annotations

LRN_CONVENTIONS = ("paper", "onnx")


def window_out(
    size: int,
    kernel: int,
    stride: int,
    pad_lo: int,
    pad_hi: int,
    dilation: int = 1,
    ceil_mode: bool = False,
    drop_last_in_pad: bool = True,
) -> int:
    """Outputs of a window sweep along one axis (the PyTorch/ONNX rule, floor or ceil).

    In ceil mode a last window that would start in the end padding is dropped, as PyTorch and
    ONNX from opset 22 do; `drop_last_in_pad=False` gives the opset 17..21 rule, which keeps it.
    Raises ValueError when the dilated window is larger than the padded input."""
    span = dilation * (kernel - 1) + 1
    padded = size + pad_lo + pad_hi
    if span > padded:
        raise ValueError(f"window {kernel} (span {span}) is larger than its padded input {padded}")
    if not ceil_mode:
        return (padded - span) // stride + 1
    out = -(-(padded - span) // stride) + 1
    if drop_last_in_pad and (out - 1) * stride >= size + pad_lo:
        out -= 1
    return out


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """Bin i covers [floor(i*size/out), ceil((i+1)*size/out)) (PyTorch's rule); uneven bins
    may overlap."""
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]


def lrn_coefficient(alpha: float, size: int, convention: str) -> float:
    """The factor `a` of the window sum of squares in k + a * sum x^2: the paper's alpha is
    `a` itself, ONNX's (also Caffe's and PyTorch's) alpha is `a * size`."""
    if convention == "paper":
        return float(alpha)
    if convention == "onnx":
        return float(alpha) / size
    raise ValueError(f"unknown LRN convention {convention!r}; expected 'paper' or 'onnx'")


def lrn_onnx_alpha(alpha: float, size: int, convention: str) -> float:
    """The alpha ONNX's LRN (and torch's local_response_norm) takes for the same operator."""
    if convention == "onnx":
        return float(alpha)
    return lrn_coefficient(alpha, size, convention) * size
