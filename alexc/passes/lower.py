"""Lowering: a Graph to a runtime Plan, with autodiff and liveness-based memory planning.

Passes, in order: (inference) strip a declared loss node and dropout; (training) append the
loss (or rename the declared one); lower to forward steps; autodiff appends backward steps from
the per-op backward rules; liveness says after which step each activation and gradient is
dropped, and first-fit arena offsets for every activation, gradient, saved array and kernel
workspace (the runtime's kernels say what they save and the scratch they need: `Kernel.memory`),
which the executor runs in.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from alexc_runtime.kernels import KERNELS
from alexc_runtime.plan import Plan, Slot, Step

from ..errors import GraphError
from ..ir import LABELS, LOSS, Graph, Node, Op
from ..ir.graph import rebuild
from ..ops import RULES

ALIGN = 64
SLACK = 16 * ALIGN  # per saved or workspace slot: the arrays carved from it start on cache lines


def grad_name(value: str) -> str:
    return f"grad:{value}"


def _elements(shape) -> int:
    return math.prod(shape)


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
    graph: Graph,
    batch_size: int,
    *,
    training: bool,
    dtype=np.float32,
    label_smoothing: float = 0.0,
    threads: int = 1,
) -> Plan:
    """A Plan for `batch_size` samples: inference (dropout stripped) or a training step, its
    scratch sized for `threads` threads."""
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
    memory = _plan_memory(graph, steps, feeds, param_names, outputs, batch_shape, itemsize, threads)
    steps = _with_frees(steps, memory["slots"], keep=set(outputs) | set(grads.values()))
    param_bytes = sum(_elements(p.shape) for p in graph.params) * itemsize * (2 if training else 1)
    return Plan(
        batch_size=batch_size,
        inputs=tuple(feeds + ([grad_name(LOSS)] if training else [])),
        params=tuple(param_names),
        outputs=tuple(outputs),
        steps=tuple(steps),
        grads=grads,
        dtype=np.dtype(dtype).name,
        param_bytes=param_bytes,
        **memory,
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


def _plan_memory(graph, steps, feeds, params, outputs, batch_shape, itemsize, threads) -> dict:
    """Liveness over the step list, then first-fit arena offsets for every activation,
    gradient, saved array and workspace: the Plan's `slots`, `saved`, `workspace`, `aliases`,
    `arena_bytes` and `live_peak_bytes`.

    A buffer lives from the step that writes it to the last step that reads it; a forward value
    that a backward rule reads (`Kernel.memory`) lives until that backward step, and so does
    what forward saves. A view a kernel returns (flatten) is an alias: no bytes of its own, its
    source lives as long as it does; so is a result written in place over an input nobody reads
    afterwards (relu, dropout). Parameter gradients are results, counted with the parameters
    rather than in the arena."""
    value_shape = {**batch_shape, **{p.name: p.shape for p in graph.params}}
    param_grads = {grad_name(p) for p in params}
    start: dict[str, int] = {f: -1 for f in feeds}
    end: dict[str, int] = {}
    aliases: dict[str, str] = {}
    kept: dict[str, tuple[int, int, int]] = {}  # node -> (first step, last step, bytes)
    scratch: dict[int, int] = {}  # step index -> bytes
    backward_at = {s.node: i for i, s in enumerate(steps) if s.backward}
    forward_at = {s.node: i for i, s in enumerate(steps) if not s.backward}
    writes: dict[str, int] = {}
    for s in steps:
        for o in s.outputs if s.backward else ():
            if o is not None:
                writes[o] = writes.get(o, 0) + 1
    last = len(steps) - 1

    def root(name):
        while name in aliases:
            name = aliases[name]
        return name

    def read(name, at):
        end[name] = max(end.get(name, at), at)

    for i, s in enumerate(steps):
        memory = KERNELS[s.op].memory
        fwd = steps[forward_at[s.node]]
        in_shapes = [value_shape.get(n, ()) for n in fwd.inputs]
        out_shape = batch_shape[s.node]
        if s.backward:
            read(s.inputs[0], i)
            for o in s.outputs:
                if o is not None and o not in param_grads:
                    start.setdefault(o, i)
            if memory.view and s.outputs[0] is not None and writes[s.outputs[0]] == 1:
                aliases[s.outputs[0]] = root(s.inputs[0])
            scratch[i] = memory.workspace(s.attrs, in_shapes, out_shape, itemsize, threads)[1]
            continue
        for name in s.inputs:
            read(name, i)
        start[s.outputs[0]] = i  # the node's own name, or a relu's fused into it
        if memory.view:
            aliases[s.outputs[0]] = root(s.inputs[0])
        scratch[i] = memory.workspace(s.attrs, in_shapes, out_shape, itemsize, threads)[0]
        # Training plans build saved state for every step; inference only what is not grad-only.
        if backward_at or not memory.grad_only:
            saved = memory.saved(s.attrs, in_shapes, out_shape, itemsize)
            kept[s.node] = (i, backward_at.get(s.node, i), saved)
        if s.node in backward_at:
            for k in memory.inputs:
                read(s.inputs[k], backward_at[s.node])
            if memory.output:
                read(s.node, backward_at[s.node])
    for o in outputs:
        end[o] = last
    for alias in sorted(aliases, key=lambda n: -start[n]):  # a chain's last link first
        source = aliases[alias]
        end[source] = max(end.get(source, start[source]), end.get(alias, start[alias]))
    # In place (relu, dropout): a result takes its input's bytes when nothing reads the input
    # afterwards; the input's life then covers the result's.
    home: dict[str, str] = dict(aliases)

    def owner(name):
        while name in home:
            name = home[name]
        return name

    for i, s in enumerate(steps):
        out = s.outputs[0]
        if not KERNELS[s.op].memory.in_place or out is None or out in param_grads:
            continue
        source = owner(s.inputs[0])
        if start.get(source, -1) < 0 or end.get(source) != i or out in end and out in outputs:
            continue
        if s.backward and writes[out] != 1:
            continue
        home[out] = source
        end[source] = max(end[source], end.get(out, i))

    def nbytes(name):
        if name == LABELS:
            return batch_shape[graph.inputs[0].name][0] * 8  # int64 class indices
        if name == grad_name(LOSS):
            return itemsize
        return _elements(batch_shape[_value(name)]) * itemsize

    def shape(key, size):
        return tuple(batch_shape.get(_value(key[1]), ())) if key[0] == "value" else (size,)

    # (kind, key) -> (first step, last step, bytes)
    wanted = {("value", n): (lo, max(end.get(n, lo), lo), nbytes(n)) for n, lo in start.items()}
    wanted.update({("saved", n): (lo, hi, b + SLACK) for n, (lo, hi, b) in kept.items() if b})
    wanted.update({("workspace", i): (i, i, b + SLACK) for i, b in scratch.items() if b})
    # Each slot at the lowest offset clear of the placed slots whose lives overlap its own,
    # largest first or in order of first step, whichever arena is smaller (largest first leaves
    # fewer gaps in training plans); an alias or in-place result then takes its owner's offset.
    # Feeds are the caller's arrays: planned for liveness, not placed in the arena (offset -1).
    sharers = {k for k in wanted if k[0] == "value" and k[1] in home}
    feeds_ = {("value", f) for f in feeds}
    placeable = wanted.keys() - sharers - feeds_
    by_size = sorted(placeable, key=lambda k: (-wanted[k][2], wanted[k][0], str(k)))
    by_start = sorted(placeable, key=lambda k: (wanted[k][0], str(k)))
    owned = min(
        (_place(wanted, order, shape) for order in (by_size, by_start)),
        key=lambda slots: max((s.offset + s.nbytes for s in slots.values()), default=0),
    )
    placed = dict(owned)
    for key in feeds_:
        lo, hi, size = wanted[key]
        placed[key] = Slot(-1, size, shape(key, size), lo, hi)
    for key in sharers:
        lo, hi, size = wanted[key]
        placed[key] = Slot(placed[("value", owner(key[1]))].offset, size, shape(key, size), lo, hi)
    return {
        "slots": {k[1]: s for k, s in placed.items() if k[0] == "value"},
        "saved": {k[1]: s for k, s in placed.items() if k[0] == "saved"},
        "workspace": {k[1]: s for k, s in placed.items() if k[0] == "workspace"},
        "aliases": aliases,
        "in_place": {k: v for k, v in home.items() if k not in aliases},
        "arena_bytes": max((s.offset + s.nbytes for s in owned.values()), default=0),
        "live_peak_bytes": max(
            sum(s.nbytes for s in owned.values() if s.start <= i <= s.end)
            for i in range(-1, len(steps))
        ),
    }


def _value(name: str) -> str:
    """The activation a buffer name refers to (a gradient's value, or the name itself)."""
    return name[len("grad:") :] if name.startswith("grad:") else name


def _place(wanted: dict, order: list, shape) -> dict:
    """Slots for the keys of `wanted` ((first step, last step, bytes) each), placed in `order`."""
    placed: dict = {}
    for key in order:
        lo, hi, size = wanted[key]
        placed[key] = Slot(_first_fit(placed, lo, hi, size), size, shape(key, size), lo, hi)
    return placed


def _first_fit(placed: dict, lo: int, hi: int, size: int) -> int:
    """The lowest offset clear of every placed slot whose lifetime overlaps [lo, hi]."""
    offset = 0
    for other in sorted(placed.values(), key=lambda s: s.offset):
        if other.end < lo or other.start > hi:
            continue
        if offset + size <= other.offset:
            break
        offset = max(offset, other.offset + -(-other.nbytes // ALIGN) * ALIGN)
    return offset


def _with_frees(steps: list[Step], slots: dict[str, Slot], keep: set[str]) -> list[Step]:
    frees: dict[int, list[str]] = {}
    for name, slot in slots.items():
        if name not in keep and slot.end >= 0:
            frees.setdefault(slot.end, []).append(name)
    return [replace(s, free_after=tuple(sorted(frees.get(i, ())))) for i, s in enumerate(steps)]
