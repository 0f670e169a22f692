"""NumPy kernels: every op's forward and hand-derived backward, keyed by op name.

Calling convention (see ``Kernel``): ``forward(ctx, attrs, *inputs) -> (y, saved)`` and
``backward(ctx, attrs, dy, saved) -> grads``, one grad per forward input in order (None for
non-differentiable inputs). ``saved`` holds only what backward needs.

Aliasing: results may share memory with arguments. flatten returns a view, dropout at inference
and adaptive_avgpool at the identity size return x itself, their backwards (and flatten's) return
dy or a view of it, and add's backward returns dy for both operands. ``saved`` may reference
forward inputs (conv and linear keep x and w, LRN keeps x), which must stay unchanged until
backward runs. Callers must not write into a kernel's result unless they know it is fresh.
"""

from __future__ import annotations

from alexc_runtime.kernels import conv, elementwise, linear, lrn, pool, shape, softmax
from alexc_runtime.kernels.base import Kernel, KernelContext

KERNELS: dict[str, Kernel] = {
    "conv": Kernel(conv.conv_forward, conv.conv_backward),
    "relu": Kernel(elementwise.relu_forward, elementwise.relu_backward),
    "lrn": Kernel(lrn.lrn_forward, lrn.lrn_backward),
    "maxpool": Kernel(pool.maxpool_forward, pool.maxpool_backward),
    "avgpool": Kernel(pool.avgpool_forward, pool.avgpool_backward),
    "adaptive_avgpool": Kernel(pool.adaptive_avgpool_forward, pool.adaptive_avgpool_backward),
    "flatten": Kernel(shape.flatten_forward, shape.flatten_backward),
    "dropout": Kernel(elementwise.dropout_forward, elementwise.dropout_backward),
    "linear": Kernel(linear.linear_forward, linear.linear_backward),
    "softmax": Kernel(softmax.softmax_forward, softmax.softmax_backward),
    "log_softmax": Kernel(softmax.log_softmax_forward, softmax.log_softmax_backward),
    "concat": Kernel(shape.concat_forward, shape.concat_backward),
    "add": Kernel(elementwise.add_forward, elementwise.add_backward),
    "softmax_cross_entropy": Kernel(
        softmax.softmax_cross_entropy_forward, softmax.softmax_cross_entropy_backward
    ),
}

__all__ = ["KERNELS", "Kernel", "KernelContext"]
