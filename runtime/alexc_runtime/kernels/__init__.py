"""NumPy kernels: every op's forward, hand-derived backward and memory facts, keyed by op name.

Calling convention (see ``Kernel``): ``forward(ctx, attrs, *inputs) -> (y, saved)`` and
``backward(ctx, attrs, dy, saved) -> grads``, one grad per forward input in order (None for
non-differentiable inputs). ``saved`` holds only what backward needs. Kernels write their
results into the views ``ctx.output`` hands them (the executor's arena) and carve scratch and
saved arrays from ``ctx.scratch``, ``ctx.temp`` and ``ctx.keep``; ``Kernel.memory`` says how
much of each they need, which the compiler plans.

Aliasing: results may share memory with arguments. flatten returns a view, dropout at inference
and adaptive_avgpool at the identity size return x itself, their backwards (and flatten's) return
dy or a view of it, and add's backward returns dy for both operands. ``saved`` may reference
forward inputs (conv and linear keep x and w, LRN keeps x) or the output (relu, softmax,
log_softmax), which must stay unchanged until backward runs. Callers must not write into a
kernel's result unless they know it is fresh. relu and dropout are elementwise: their output
view may be their input (and dx may be dy), which the plan uses to run them in place.
"""

from __future__ import annotations

from math import prod

from alexc_runtime.kernels import conv, elementwise, linear, lrn, pool, shape, softmax
from alexc_runtime.kernels.base import (
    NO_MEMORY,
    Kernel,
    KernelContext,
    Memory,
    Space,
    no_bytes,
    no_workspace,
)


def _out_elements(attrs, ins, out, itemsize) -> int:
    return prod(out)  # one byte each: a bool mask, a uint8 argmax


def _conv_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    return conv.workspace_bytes(ins[0], ins[1], attrs, itemsize)


def _linear_workspace(attrs, ins, out, itemsize, threads) -> tuple[int, int]:
    return (prod(out) * itemsize if out[0] > 1 else 0), 0  # y.T for a batch


def _memory(
    inputs=(), output=False, saved=no_bytes, grad_only=False, workspace=no_workspace, **flags
) -> Memory:
    return Memory(
        inputs,
        output,
        saved,
        grad_only,
        workspace,
        flags.get("view", False),
        flags.get("in_place", False),
    )


KERNELS: dict[str, Kernel] = {
    "conv": Kernel(
        conv.conv_forward, conv.conv_backward, _memory(inputs=(0, 1), workspace=_conv_workspace)
    ),
    "relu": Kernel(
        elementwise.relu_forward,
        elementwise.relu_backward,
        # backward reads the output itself: y > 0 where x > 0
        _memory(output=True, workspace=elementwise.relu_workspace, in_place=True),
    ),
    "lrn": Kernel(
        lrn.lrn_forward,
        lrn.lrn_backward,
        _memory(  # keeps x, and saves s and s^-beta
            inputs=(0,),
            saved=lambda a, i, o, b: 2 * prod(o) * b,
            grad_only=True,
            workspace=lrn.lrn_workspace,
        ),
    ),
    "maxpool": Kernel(
        pool.maxpool_forward,
        pool.maxpool_backward,
        # the argmax in the window, one byte each
        _memory(saved=_out_elements, grad_only=True, workspace=pool.maxpool_workspace),
    ),
    "avgpool": Kernel(
        pool.avgpool_forward, pool.avgpool_backward, _memory(workspace=pool.avgpool_workspace)
    ),
    "adaptive_avgpool": Kernel(
        pool.adaptive_avgpool_forward,
        pool.adaptive_avgpool_backward,
        _memory(workspace=pool.adaptive_avgpool_workspace),
    ),
    "flatten": Kernel(shape.flatten_forward, shape.flatten_backward, _memory(view=True)),
    "dropout": Kernel(
        elementwise.dropout_forward,
        elementwise.dropout_backward,
        _memory(saved=_out_elements, grad_only=True, in_place=True),  # the bool mask
    ),
    "linear": Kernel(
        linear.linear_forward,
        linear.linear_backward,
        _memory(inputs=(0, 1), workspace=_linear_workspace),
    ),
    "softmax": Kernel(softmax.softmax_forward, softmax.softmax_backward, _memory(output=True)),
    "log_softmax": Kernel(
        softmax.log_softmax_forward, softmax.log_softmax_backward, _memory(output=True)
    ),
    "concat": Kernel(shape.concat_forward, shape.concat_backward, NO_MEMORY),
    "add": Kernel(elementwise.add_forward, elementwise.add_backward, NO_MEMORY),
    "softmax_cross_entropy": Kernel(
        softmax.softmax_cross_entropy_forward,
        softmax.softmax_cross_entropy_backward,
        # the probabilities, computed with the loss even when no backward follows
        _memory(saved=lambda a, ins, o, b: prod(ins[0]) * b),
    ),
}

__all__ = ["KERNELS", "Kernel", "KernelContext", "Memory", "Space"]
