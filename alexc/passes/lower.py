"""Lowering: a Graph to a runtime Plan, with autodiff and liveness-based memory planning.

Passes, in order: (inference) strip a declared loss node and dropout; (training) append the
loss (or rename the declared one); lower to forward steps; autodiff appends backward steps from
the per-op backward rules; liveness says after which step each activation and gradient is
dropped (the executor drops it there) and plans arena offsets (which the executor does not use
yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from alexc_runtime.kernels import conv as conv_kernel
from alexc_runtime.plan import Plan, Slot, Step

from ..errors import GraphError
from ..ir import LABELS, LOSS, Graph, Node, Op
from ..ir.graph import rebuild
from ..ops import RULES

ALIGN = 64


def grad_name(value: str) -> str:
    return f"grad:{value}"


def _elements(shape) -> int:
    return math.prod(shape)


def _none(attrs, ins, out, itemsize) -> int:
    return 0


@dataclass(frozen=True)
class Memory:
    """What a kernel holds beyond its output, matching the runtime kernels (sizes in bytes as a
    function of (input shapes, output shape, itemsize), batch included):
    `inputs`/`output`: forward values its backward reads (kept alive by reference);
    `saved`: new arrays kept from forward to backward (masks, argmax indices);
    `workspace` and `backward_workspace`: scratch while the forward or backward step runs.
    Each function takes (attrs, input shapes, output shape, itemsize)."""

    inputs: tuple[int, ...] = ()
    output: bool = False
    saved: Callable = _none
    workspace: Callable = _none
    backward_workspace: Callable = _none
    grad_only: bool = False  # `saved` is built only when a backward follows (ctx.grad)


def _conv_workspace(a, ins, out, b, backward=False):
    # The kernel's own account of its scratch (flat input and output blocks, tap weights).
    return conv_kernel.workspace_bytes(ins[0], ins[1], a, b)[backward]


def _conv_backward_workspace(a, ins, out, b):
    return _conv_workspace(a, ins, out, b, backward=True)


MEMORY: dict[Op, Memory] = {
    Op.CONV: Memory(
        inputs=(0, 1), workspace=_conv_workspace, backward_workspace=_conv_backward_workspace
    ),
    Op.RELU: Memory(saved=lambda a, ins, out, b: _elements(out), grad_only=True),  # a bool mask
    Op.LRN: Memory(
        inputs=(0,), saved=lambda a, ins, out, b: 2 * _elements(out) * b, grad_only=True
    ),  # s and s^-beta
    Op.MAXPOOL: Memory(
        saved=lambda a, ins, out, b: _elements(out), grad_only=True
    ),  # uint8 argmax in the window
    Op.AVGPOOL: Memory(),
    Op.ADAPTIVE_AVGPOOL: Memory(),
    Op.FLATTEN: Memory(),
    Op.DROPOUT: Memory(saved=lambda a, ins, out, b: _elements(out), grad_only=True),  # a bool mask
    Op.LINEAR: Memory(inputs=(0, 1), workspace=lambda a, ins, out, b: _elements(out) * b),  # y.T
    Op.SOFTMAX_CROSS_ENTROPY: Memory(saved=lambda a, ins, out, b: _elements(ins[0]) * b),
    Op.SOFTMAX: Memory(output=True),
    Op.LOG_SOFTMAX: Memory(output=True),
    Op.CONCAT: Memory(),
    Op.ADD: Memory(),
}


def strip_dropout(graph: Graph) -> Graph:
    """Inference pass: dropout is the identity, so its readers read its input instead."""
    alias = {}
    nodes = []
    for n in graph.nodes:
        inputs = tuple(alias.get(i, i) for i in n.inputs)
        if n.op is Op.DROPOUT:
            alias[n.name] = inputs[0]
        else:
            nodes.append(replace(n, inputs=inputs))
    if not alias:
        return graph
    return rebuild(graph, nodes=nodes, outputs=[alias.get(o, o) for o in graph.outputs])


def declared_loss(graph: Graph) -> Node | None:
    """The graph's own loss node (a graph file may end in one), or None."""
    return next((n for n in graph.nodes if RULES[n.op].loss), None)


def strip_loss(graph: Graph) -> Graph:
    """The graph without its declared loss node; an output that named the loss names the
    logits it reads."""
    loss = declared_loss(graph)
    if loss is None:
        return graph
    return rebuild(
        graph,
        nodes=[n for n in graph.nodes if n is not loss],
        outputs=[loss.inputs[0] if o == loss.name else o for o in graph.outputs],
    )


def logits_of(graph: Graph) -> str:
    """The value the loss reads: the declared loss node's input, else the first output, or the
    input of a (log-)softmax output (imported classifiers often end in one; cross-entropy
    wants the logits before it)."""
    loss = declared_loss(graph)
    if loss is not None:
        return loss.inputs[0]
    out = graph.outputs[0]
    node = next((n for n in graph.nodes if n.name == out), None)
    if node is not None and node.op in (Op.SOFTMAX, Op.LOG_SOFTMAX) and node.attrs["axis"] == 1:
        return node.inputs[0]
    return out


def add_loss(graph: Graph, label_smoothing: float = 0.0) -> Graph:
    """Training pass: mean softmax cross-entropy of the logits against `labels`, as the node
    `loss`. A loss node the graph declares is that node, renamed (its label_smoothing wins over
    the argument, which may only repeat it or be 0)."""
    declared = declared_loss(graph)
    if declared is not None:
        own = declared.attrs["label_smoothing"]
        if label_smoothing not in (0.0, own):
            raise GraphError(
                f"label_smoothing is {own} here but {label_smoothing} in train:; set it once",
                file=graph.source,
                line=graph.lines.get(declared.name),
                node=declared.name,
            )
        label_smoothing = own
    logits = logits_of(graph)
    loss = Node(
        Op.SOFTMAX_CROSS_ENTROPY, LOSS, (logits,), {"label_smoothing": float(label_smoothing)}
    )
    return rebuild(graph, nodes=[*strip_loss(graph).nodes, loss], outputs=[LOSS])


FUSES_RELU = ("conv", "linear")  # kernels that apply max(y, 0) in their last pass on attr relu


def fuse_relu(steps: list[Step], keep: set[str]) -> list[Step]:
    """Inference pass on steps: a relu whose input is a conv or linear output read by nothing
    else (and not a graph output) is folded into that step, which then writes the relu's
    output. Saves a pass over the activation and its buffer; training keeps the relu (its
    backward needs the mask)."""
    readers: dict[str, int] = {}
    for step in steps:
        for i in step.inputs:
            readers[i] = readers.get(i, 0) + 1
    producer = {step.outputs[0]: k for k, step in enumerate(steps)}
    fused = list(steps)
    for k, step in enumerate(steps):
        if step.op != "relu":
            continue
        src = step.inputs[0]
        j = producer.get(src)
        if j is None or steps[j].op not in FUSES_RELU or readers[src] != 1 or src in keep:
            continue
        fused[j] = replace(steps[j], attrs={**steps[j].attrs, "relu": True}, outputs=step.outputs)
        fused[k] = None
    return [s for s in fused if s is not None]


def _param_names(graph: Graph, node: Node) -> list[str]:
    prefix = node.name + "."
    return [p.name for p in graph.params if p.name.startswith(prefix)]


def lower(
    graph: Graph, batch_size: int, *, training: bool, dtype=np.float32, label_smoothing: float = 0.0
) -> Plan:
    """A Plan for `batch_size` samples: inference (dropout stripped) or a training step."""
    logits = logits_of(graph)
    if training:
        graph = add_loss(graph, label_smoothing)
    else:
        graph = strip_dropout(strip_loss(graph))
    outputs = [*graph.outputs, logits] if training else list(graph.outputs)
    itemsize = np.dtype(dtype).itemsize
    batch_shape = {k: (batch_size, *s) for k, s in graph.shapes.items()}
    loss_node = next((n for n in graph.nodes if RULES[n.op].loss), None)
    if loss_node is not None:
        batch_shape[loss_node.name] = ()  # the mean over the batch: one number

    steps: list[Step] = []
    for n in graph.nodes:
        inputs = [*n.inputs, *_param_names(graph, n)]
        if RULES[n.op].loss:
            inputs.insert(1, LABELS)
        steps.append(Step(n.op.value, n.name, n.attrs, tuple(inputs), (n.name,)))
    if not training:
        steps = fuse_relu(steps, keep=set(outputs))
    feeds = [i.name for i in graph.inputs] + ([LABELS] if training else [])
    param_names = [p.name for p in graph.params]

    grads: dict[str, str] = {}
    if training:
        steps += _autodiff(graph, loss_node, steps, grads)
    slots, arena, live_peak = _plan_memory(
        graph, steps, feeds, param_names, outputs, batch_shape, itemsize
    )
    steps = _with_frees(steps, slots, keep=set(outputs) | set(grads.values()))
    param_bytes = sum(_elements(p.shape) for p in graph.params) * itemsize * (2 if training else 1)
    return Plan(
        batch_size=batch_size,
        inputs=tuple(feeds + ([grad_name(LOSS)] if training else [])),
        params=tuple(param_names),
        outputs=tuple(outputs),
        steps=tuple(steps),
        grads=grads,
        slots=slots,
        arena_bytes=arena,
        live_peak_bytes=live_peak,
        param_bytes=param_bytes,
    )


def _autodiff(graph: Graph, loss_node: Node, forward: list[Step], grads: dict) -> list[Step]:
    """Backward steps from the per-op backward rules, in reverse topological order.

    A value gets a gradient when it depends on a parameter and the loss depends on it; a
    value read by several nodes has its gradient contributions summed."""
    params = {p.name for p in graph.params}
    depends_on_param = set(params)
    for step in forward:
        if any(i in depends_on_param for i in step.inputs):
            depends_on_param.add(step.node)
    feeds_loss = {loss_node.name}
    for step in reversed(forward):
        if step.node in feeds_loss:
            feeds_loss.update(step.inputs)
    needs_grad = depends_on_param & feeds_loss

    written: set[str] = set()
    backward = []
    for step in reversed(forward):
        if step.node not in needs_grad:
            continue
        outs, adds = [], []
        for i in step.inputs:
            if i in needs_grad:
                g = grad_name(i)
                outs.append(g)
                adds.append(g in written)
                written.add(g)
                if i in params:
                    grads[i] = g
            else:
                outs.append(None)
                adds.append(False)
        backward.append(
            Step(
                step.op,
                step.node,
                step.attrs,
                (grad_name(step.node),),
                tuple(outs),
                backward=True,
                accumulate=tuple(adds),
            )
        )
    return backward


def _plan_memory(graph, steps, feeds, params, outputs, batch_shape, itemsize):
    """Liveness over the step list, then first-fit arena offsets for activations and gradients.

    A buffer lives from the step that writes it to the last step that reads it; a forward value
    that a backward rule reads (MEMORY) lives until that backward step. Parameter gradients are
    results, counted with the parameters rather than in the arena."""
    ops = {n.name: n.op for n in graph.nodes}
    value_shape = {**batch_shape, **{p.name: p.shape for p in graph.params}}
    param_grads = {grad_name(p) for p in params}
    start: dict[str, int] = {f: -1 for f in feeds}
    end: dict[str, int] = {}
    held: list[tuple[int, int, int]] = []  # (first step, last step, bytes) of kernel state
    backward_at = {s.node: i for i, s in enumerate(steps) if s.backward}
    forward_at = {s.node: i for i, s in enumerate(steps) if not s.backward}
    last = len(steps) - 1

    def read(name, at):
        end[name] = max(end.get(name, at), at)

    for i, s in enumerate(steps):
        memory = MEMORY[ops[s.node]]
        fwd = steps[forward_at[s.node]]
        in_shapes = [value_shape.get(n, ()) for n in fwd.inputs]
        if s.backward:
            read(s.inputs[0], i)
            for o in s.outputs:
                if o is not None and o not in param_grads:
                    start.setdefault(o, i)
            held.append(
                (i, i, memory.backward_workspace(s.attrs, in_shapes, batch_shape[s.node], itemsize))
            )
            continue
        for name in s.inputs:
            read(name, i)
        start[s.outputs[0]] = i  # the node's own name, or a relu's fused into it
        saved = memory.saved(s.attrs, in_shapes, batch_shape[s.node], itemsize)
        held.append((i, i, memory.workspace(s.attrs, in_shapes, batch_shape[s.node], itemsize)))
        if s.node in backward_at:
            held.append((i, backward_at[s.node], saved))
        elif not memory.grad_only:  # computed anyway, dropped after the step
            held.append((i, i, saved))
        if s.node in backward_at:
            for k in memory.inputs:
                read(s.inputs[k], backward_at[s.node])
            if memory.output:
                read(s.node, backward_at[s.node])
    for o in outputs:
        end[o] = last

    def nbytes(name):
        if name == LABELS:
            return batch_shape[graph.inputs[0].name][0] * 8  # int64 class indices
        if name == grad_name(LOSS):
            return itemsize
        value = name[len("grad:") :] if name.startswith("grad:") else name
        return _elements(batch_shape[value]) * itemsize

    slots: dict[str, Slot] = {}
    for name in sorted(start, key=lambda n: (start[n], n)):
        size = nbytes(name)
        lo = start[name]
        hi = max(end.get(name, lo), lo)
        offset = 0
        # First fit: the lowest offset clear of every placed buffer whose lifetime overlaps.
        for other in sorted(slots.values(), key=lambda s: s.offset):
            if other.end < lo or other.start > hi:
                continue
            if offset + size <= other.offset:
                break
            offset = max(offset, other.offset + -(-other.nbytes // ALIGN) * ALIGN)
        value = name[len("grad:") :] if name.startswith("grad:") else name
        slots[name] = Slot(offset, size, tuple(batch_shape.get(value, ())), lo, hi)
    arena = max((s.offset + s.nbytes for s in slots.values()), default=0)
    live_peak = max(
        sum(s.nbytes for s in slots.values() if s.start <= i <= s.end)
        + sum(b for s0, s1, b in held if s0 <= i <= s1)
        for i in range(-1, len(steps))
    )
    return slots, arena, live_peak


def _with_frees(steps: list[Step], slots: dict[str, Slot], keep: set[str]) -> list[Step]:
    frees: dict[int, list[str]] = {}
    for name, slot in slots.items():
        if name not in keep and slot.end >= 0:
            frees.setdefault(slot.end, []).append(name)
    return [replace(s, free_after=tuple(sorted(frees.get(i, ())))) for i, s in enumerate(steps)]
