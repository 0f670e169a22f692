"""PyTorch as a peer: a Graph lowered to torch.nn.functional calls, for `alexc bench`.

PyTorch is never a dependency: this module imports it only when called, and `available()` says
whether it can. The lowering is one rule per op, the `torch` column of the op's registry entry
(alexc.ops; collected here as `RULES`); each rule gets a `_Call` (the node, the torch modules,
the parameters) and the node's input tensors, and returns the node's output tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import AlexcError
from ..ir import Graph, Node, Op
from ..ops import REGISTRY
from ..passes.lower import declared_loss, logits_of


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


# Each op's lowering lives in its registry entry (alexc.ops, column `torch`): `rule(call, xs)`.
RULES: dict[Op, Callable] = {op: entry.torch for op, entry in REGISTRY.items()}


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
