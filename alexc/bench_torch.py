"""PyTorch as a peer: a Graph lowered to torch.nn.functional calls, for `alexc bench`.

PyTorch is never a dependency: this module imports it only when called, and `available()` says
whether it can. The lowering is one rule per op (`RULES`, keyed like `alexc.ops.RULES`); each rule
gets the node, its input tensors and the parameters, and returns the node's output tensor.

Where torch's functional ops cannot express an attribute directly (asymmetric padding, padding
wider than half the window), the rule pads explicitly with `F.pad` and crops the result to the
shape alexc's shape inference gives, so both agree on which windows exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import AlexcError
from .ir import Graph, Node, Op
from .passes.lower import declared_loss, logits_of


def available() -> str | None:
    """None when PyTorch can be imported, else a one-line reason why not."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "torch":
            return "PyTorch is not installed (it is optional: pip install torch)"
        return f"PyTorch does not import: {e}"
    except Exception as e:  # a broken install: say so, never fail the bench
        return f"PyTorch does not import: {type(e).__name__}: {e}"
    return None


def set_threads(threads: int) -> None:
    """One thread setting for torch, as for the other executors: intra-op `threads`, inter-op 1."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # allowed only once per process, before any inter-op work
        pass


@dataclass(frozen=True)
class _Call:
    """What a rule sees: the node, the torch modules, the parameters, the mode and labels."""

    node: Node
    torch: object
    F: object
    params: Mapping[str, object]
    train: bool
    labels: object
    shape: tuple[int, ...]  # the node's output shape per sample, from alexc's shape inference

    @property
    def attrs(self) -> Mapping:
        return self.node.attrs

    def param(self, suffix: str):
        return self.params.get(f"{self.node.name}.{suffix}")


def _crop(c: _Call, y):
    """Keep the windows alexc keeps (explicit padding can add a trailing ceil_mode window)."""
    _, oh, ow = c.shape
    return y[:, :, :oh, :ow]


def _symmetric(pad, kernel) -> tuple[int, int] | None:
    """(ph, pw) when torch's own padding argument can express `pad`, else None."""
    top, left, bottom, right = pad
    kh, kw = kernel
    if top == bottom and left == right and 2 * top <= kh and 2 * left <= kw:
        return top, left
    return None


def _conv(c: _Call, x):
    a = c.attrs
    top, left, bottom, right = a["pad"]
    if top == bottom and left == right:
        padding = (top, left)
    else:
        x = c.F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return c.F.conv2d(
        x,
        c.param("weight"),
        c.param("bias"),
        stride=a["stride"],
        padding=padding,
        dilation=a["dilation"],
        groups=a["groups"],
    )


def _lrn(c: _Call, x):
    a = c.attrs
    # torch divides alpha by size (the ONNX/Caffe convention); the paper's alpha does not.
    alpha = a["alpha"] * a["size"] if a["convention"] == "paper" else a["alpha"]
    return c.F.local_response_norm(x, a["size"], alpha=alpha, beta=a["beta"], k=a["bias"])


def _maxpool(c: _Call, x):
    a = c.attrs
    padding = _symmetric(a["pad"], a["kernel"])
    if padding is not None:
        return c.F.max_pool2d(
            x, a["kernel"], a["stride"], padding=padding, ceil_mode=a["ceil_mode"]
        )
    top, left, bottom, right = a["pad"]
    x = c.F.pad(x, (left, right, top, bottom), value=-float("inf"))
    return _crop(c, c.F.max_pool2d(x, a["kernel"], a["stride"], ceil_mode=a["ceil_mode"]))


def _avgpool(c: _Call, x):
    a = c.attrs
    padding = _symmetric(a["pad"], a["kernel"])
    if padding is not None:
        return c.F.avg_pool2d(
            x,
            a["kernel"],
            a["stride"],
            padding=padding,
            ceil_mode=a["ceil_mode"],
            count_include_pad=a["count_include_pad"],
        )
    # Window sums over the explicitly padded input, divided by how many counted positions each
    # window covers (real ones only, or real and padding): alexc's divisor, ceil_mode included.
    top, left, bottom, right = a["pad"]
    sides = (left, right, top, bottom)
    ones = c.torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    counted = c.F.pad(ones, sides, value=1.0 if a["count_include_pad"] else 0.0)

    def window_sums(t):
        return c.F.avg_pool2d(
            t, a["kernel"], a["stride"], ceil_mode=a["ceil_mode"], divisor_override=1
        )

    return _crop(c, window_sums(c.F.pad(x, sides)) / window_sums(counted))


def _flatten(c: _Call, x):
    # alexc's axis counts the batch, as torch's start_dim does.
    return c.torch.flatten(x, start_dim=c.attrs["axis"])


def _loss(c: _Call, x):
    return c.F.cross_entropy(x, c.labels, label_smoothing=c.attrs["label_smoothing"])


RULES: dict[Op, Callable] = {
    Op.CONV: lambda c, x: _conv(c, x[0]),
    Op.RELU: lambda c, x: c.F.relu(x[0]),
    Op.LRN: lambda c, x: _lrn(c, x[0]),
    Op.MAXPOOL: lambda c, x: _maxpool(c, x[0]),
    Op.AVGPOOL: lambda c, x: _avgpool(c, x[0]),
    Op.ADAPTIVE_AVGPOOL: lambda c, x: c.F.adaptive_avg_pool2d(x[0], c.attrs["output"]),
    Op.FLATTEN: lambda c, x: _flatten(c, x[0]),
    Op.DROPOUT: lambda c, x: c.F.dropout(x[0], c.attrs["rate"], training=c.train),
    Op.LINEAR: lambda c, x: c.F.linear(x[0], c.param("weight"), c.param("bias")),
    Op.SOFTMAX_CROSS_ENTROPY: lambda c, x: _loss(c, x[0]),
    Op.SOFTMAX: lambda c, x: c.F.softmax(x[0], dim=c.attrs["axis"]),
    Op.LOG_SOFTMAX: lambda c, x: c.F.log_softmax(x[0], dim=c.attrs["axis"]),
    Op.CONCAT: lambda c, x: c.torch.cat(x, dim=c.attrs["axis"]),
    Op.ADD: lambda c, x: x[0] + x[1],
}


class TorchProgram:
    """A Graph as a function of (params, x): `program(params, x, train=..., labels=...)`.

    Returns the graph's first output. `params` maps alexc's parameter names to torch tensors."""

    def __init__(self, graph: Graph):
        missing = sorted({n.op.value for n in graph.nodes if n.op not in RULES})
        if missing:
            raise AlexcError(f"the torch lowering has no rule for op(s) {', '.join(missing)}")
        import torch
        import torch.nn.functional as F

        self.graph, self.torch, self.F = graph, torch, F
        self.loss_node = declared_loss(graph)

    def values(self, params: Mapping[str, object], x, *, train: bool = False, labels=None):
        """Every node's tensor by name (a loss node's only when `labels` are given)."""
        values = {self.graph.input.name: x}
        for node in self.graph.nodes:
            if node is self.loss_node and labels is None:
                continue
            call = _Call(
                node, self.torch, self.F, params, train, labels, self.graph.shapes[node.name]
            )
            values[node.name] = RULES[node.op](call, [values[i] for i in node.inputs])
        return values

    def __call__(self, params: Mapping[str, object], x, *, train: bool = False, labels=None):
        return self.values(params, x, train=train, labels=labels)[self.graph.outputs[0]]

    def tensors(self, params: Mapping[str, np.ndarray]) -> dict[str, object]:
        """Copies of NumPy parameters as torch tensors (copies: training updates them)."""
        return {k: self.torch.tensor(np.asarray(v)) for k, v in params.items()}

    def loss(self, params, x, labels):
        """The graph's own loss node in training mode, else the mean cross-entropy of the
        logits the NumPy executor trains (alexc.passes.lower.logits_of)."""
        values = self.values(params, x, train=True, labels=labels)
        if self.loss_node is not None:
            return values[self.loss_node.name]
        return self.F.cross_entropy(values[logits_of(self.graph)], labels)


class TorchTrainer:
    """One SGD training step (forward, backward, update) with torch.optim.SGD.

    Trains its own copy of the NumPy parameters `params`."""

    def __init__(self, program: TorchProgram, params, *, lr, momentum, weight_decay):
        torch = program.torch
        self.program = program
        self.params = {k: t.requires_grad_(True) for k, t in program.tensors(params).items()}
        self.optimizer = torch.optim.SGD(
            list(self.params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay
        )

    def step(self, x, labels) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.program.loss(self.params, x, labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def forward_numpy(
    graph: Graph, params: Mapping[str, np.ndarray], x: np.ndarray, threads: int = 1
) -> np.ndarray:
    """The graph's first output for a NumPy batch through torch, in inference mode."""
    program = TorchProgram(graph)
    set_threads(threads)
    torch = program.torch
    with torch.inference_mode():
        return program(program.tensors(params), torch.from_numpy(np.ascontiguousarray(x))).numpy()
