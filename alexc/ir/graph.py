"""Building a Graph (topological order, shape and parameter inference) and verifying one.

`build_graph` is the one way to make a Graph; `verify` re-derives everything a Graph claims and
runs after parsing and after every pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..errors import CheckpointError, GraphError, is_number
from ..ops import MAX_ELEMENTS, RULES, ShapeError, normalise_attrs
from .core import INIT_KINDS, LABELS, LOSS, Graph, Input, Node, Op, Param, Shape

# Parameters a node gets when its graph file says nothing: PyTorch's default initialisation.
DEFAULT_INIT = {"weight": {"fan_in_uniform": 1.0}, "bias": {"fan_in_uniform": 1.0}}


def _topological(nodes: Sequence[Node], input_names: set[str], err) -> list[Node]:
    """Order nodes so every input is defined first; name the cycle or dangling input if not."""
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i not in by_name and i not in input_names:
                known = ", ".join(sorted(input_names | set(by_name)))
                raise err(f"input '{i}' is not defined (defined names: {known})", n.name)
    order, state = [], {}  # state: 1 visiting, 2 done
    for root in nodes:
        if state.get(root.name) == 2:
            continue
        # Depth-first with an explicit stack: a long chain listed backwards must not hit
        # Python's recursion limit. `path` names the nodes on the stack, in order.
        state[root.name] = 1
        path, stack = [root.name], [(root, iter(root.inputs))]
        while stack:
            n, pending = stack[-1]
            i = next((i for i in pending if i in by_name and state.get(i) != 2), None)
            if i is None:
                stack.pop()
                path.pop()
                state[n.name] = 2
                order.append(n)
            elif state.get(i) == 1:
                cycle = path[path.index(i) :] + [i]
                raise err(f"cycle: {' -> '.join(cycle)}; a node may only read earlier values", i)
            else:
                state[i] = 1
                path.append(i)
                stack.append((by_name[i], iter(by_name[i].inputs)))
    return order


def init_spec_problem(suffix: str, spec) -> str | None:
    """What is wrong with an init spec like {normal: 0.01}, or None if nothing is."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        return f"init of '{suffix}' must be one of {{kind: value}}: {INIT_KINDS}, not {spec!r}"
    ((kind, value),) = spec.items()
    if kind not in INIT_KINDS:
        return f"unknown init kind '{kind}' (known: {', '.join(INIT_KINDS)})"
    if not is_number(value):
        return f"init '{kind}' of '{suffix}' needs a number, got {value!r}"
    return None


def default_init_problem(suffix: str, spec) -> str | None:
    """What is wrong with one entry of a graph's default `init:`, or None."""
    if suffix not in DEFAULT_INIT:
        return f"init names '{suffix}'; the kinds of parameter are {', '.join(DEFAULT_INIT)}"
    return init_spec_problem(suffix, spec)


def _check_init(node: Node, suffixes, err):
    for suffix, spec in node.init.items():
        if suffix not in suffixes:
            raise err(
                f"init names '{suffix}', but this node's parameters are: "
                f"{', '.join(suffixes) or 'none'}",
                node.name,
            )
        problem = init_spec_problem(suffix, spec)
        if problem:
            raise err(problem, node.name)


def build_graph(
    name: str,
    inputs: Sequence[Input],
    nodes: Sequence[Node],
    outputs: Sequence[str] | None = None,
    *,
    train: Mapping | None = None,
    data: Mapping | None = None,
    classes: Sequence[str] | None = None,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
    default_init: Mapping | None = None,
) -> Graph:
    """Normalise attributes, order, infer shapes, parameters and FLOPs, and verify.

    Node attrs may be raw (as written in a graph file); errors raise GraphError naming the node.
    """
    lines = dict(lines or {})

    def err(what, node=None):
        return GraphError(what, file=source, line=lines.get(node), node=node)

    input_names = {i.name for i in inputs}
    if not inputs:
        raise err("the graph has no input")
    for i in inputs:
        if not i.shape or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in i.shape
        ):
            raise err(f"input '{i.name}' needs a shape of positive integers, got {list(i.shape)}")
        if math.prod(i.shape) > MAX_ELEMENTS:
            raise err(f"input '{i.name}' shape {list(i.shape)} is absurdly large")
        if i.name in (LABELS, LOSS):
            raise err(f"input name '{i.name}' is reserved for training; rename the input")
    seen = set(input_names)
    for n in nodes:
        if n.name in seen:
            raise err(f"duplicate name '{n.name}': every node needs its own name", n.name)
        # Training appends its loss node `loss`, fed the class indices `labels`; a declared
        # loss node may be called `loss` (training takes it over under that name).
        if n.name == LABELS or (n.name == LOSS and not RULES[n.op].loss):
            raise err(
                f"node name '{n.name}' is reserved for the training loss and its labels; "
                "rename the node",
                n.name,
            )
        seen.add(n.name)

    for suffix, spec in (default_init or {}).items():
        problem = default_init_problem(suffix, spec)
        if problem:
            raise err(problem)
    default_init = {**DEFAULT_INIT, **(default_init or {})}
    shapes: dict[str, Shape] = {i.name: tuple(i.shape) for i in inputs}
    flops: dict[str, int] = {}
    params: list[Param] = []
    built: list[Node] = []
    for n in _topological(nodes, input_names, err):
        rule = RULES[n.op]
        lo, hi = rule.arity
        if not lo <= len(n.inputs) <= (hi or len(n.inputs)):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise err(f"{n.op.value} takes {want} input(s), got {len(n.inputs)}", n.name)
        in_shapes = [shapes[i] for i in n.inputs]
        try:
            attrs = normalise_attrs(n.op, n.attrs)
            out = rule.shape(attrs, in_shapes)
            param_shapes = rule.params(attrs, in_shapes)
        except ShapeError as e:
            shown = ", ".join(f"{i} {list(s)}" for i, s in zip(n.inputs, in_shapes, strict=True))
            raise err(f"{e} (input: {shown})", n.name) from None
        if any(d < 1 for d in out):
            raise err(f"output shape {list(out)} has a non-positive size", n.name)
        if math.prod(out) > MAX_ELEMENTS:
            raise err(f"output shape {list(out)} is absurdly large", n.name)
        _check_init(n, list(param_shapes), err)
        init = {s: n.init.get(s, default_init[s]) for s in param_shapes}
        for suffix, (shape, fan_in) in param_shapes.items():
            if math.prod(shape) > MAX_ELEMENTS:
                raise err(f"parameter {suffix} of shape {list(shape)} is absurdly large", n.name)
            params.append(Param(f"{n.name}.{suffix}", shape, init[suffix], fan_in))
        shapes[n.name] = out
        flops[n.name] = rule.flops(attrs, in_shapes, out)
        # The resolved init goes into the node, so a rebuilt graph draws the same parameters.
        built.append(replace(n, attrs=attrs, init=init))

    losses = [n for n in built if RULES[n.op].loss]
    if len(losses) > 1:
        raise err(f"a second loss node (the first is '{losses[0].name}'): keep one", losses[1].name)
    for n in built:
        read = [i for i in n.inputs if losses and i == losses[0].name]
        if read:
            raise err(f"reads the loss '{read[0]}': a loss node ends the graph", n.name)
    if outputs is None:
        # A final loss node is what training minimises, not what inference returns: the
        # graph's output is then the logits the loss reads.
        last = built[-1] if built else None
        outputs = [] if last is None else [last.inputs[0] if last in losses else last.name]
    for o in outputs:
        if o not in shapes:
            raise err(f"output '{o}' is not a node of the graph")
    graph = Graph(
        name=name,
        inputs=tuple(inputs),
        nodes=tuple(built),
        outputs=tuple(outputs),
        params=tuple(params),
        shapes=shapes,
        flops=flops,
        train=train or {},
        data=data or {},
        classes=tuple(classes) if classes else None,
        source=source,
        lines=lines,
    )
    verify(graph)
    return graph


def verify(graph: Graph) -> None:
    """Re-derive every claim of a Graph: single assignment, no dangling names or cycles
    (topological order), known ops with normalised attributes, shapes and parameters."""

    def fail(what, node=None):
        raise GraphError(f"verifier: {what}", file=graph.source, node=node)

    defined = {i.name: tuple(i.shape) for i in graph.inputs}
    if len(defined) != len(graph.inputs):
        fail("two graph inputs share a name")
    params = []
    for n in graph.nodes:
        if not isinstance(n.op, Op):
            fail(f"op {n.op!r} is not an Op", n.name)
        if n.name in defined:
            fail("assigned twice", n.name)
        for i in n.inputs:
            if i not in defined:
                fail(f"reads '{i}' before it is defined", n.name)
        rule = RULES[n.op]
        try:
            if dict(n.attrs) != normalise_attrs(n.op, n.attrs):
                fail("attributes are not normalised", n.name)
            in_shapes = [defined[i] for i in n.inputs]
            out = rule.shape(n.attrs, in_shapes)
            param_shapes = rule.params(n.attrs, in_shapes)
        except ShapeError as e:
            fail(str(e), n.name)
        if graph.shapes.get(n.name) != out:
            fail(f"recorded shape {graph.shapes.get(n.name)} but infers {out}", n.name)
        params += [(f"{n.name}.{s}", shape) for s, (shape, _) in param_shapes.items()]
        defined[n.name] = out
    if [(p.name, p.shape) for p in graph.params] != params:
        fail("parameter declarations do not match the nodes")
    for o in graph.outputs:
        if o not in defined:
            fail(f"output '{o}' is not defined")


def rebuild(graph: Graph, *, inputs=None, nodes=None, outputs=None, classes=None) -> Graph:
    """The same graph with some parts replaced, built and verified again (what passes use)."""
    return build_graph(
        graph.name,
        graph.inputs if inputs is None else inputs,
        graph.nodes if nodes is None else nodes,
        graph.outputs if outputs is None else outputs,
        train=graph.train,
        data=graph.data,
        classes=graph.classes if classes is None else classes,
        source=graph.source,
        lines=graph.lines,
    )


def with_classes(graph: Graph, num_classes: int, classes: Sequence[str] | None = None) -> Graph:
    """The same graph whose last linear layer has `num_classes` units (for another data set)."""
    last = [n for n in graph.nodes if n.op is Op.LINEAR]
    if not last:
        raise GraphError("has no linear layer to size to the data's classes", file=graph.source)
    target = last[-1]
    nodes = [
        replace(n, attrs={**n.attrs, "units": num_classes}) if n is target else n
        for n in graph.nodes
    ]
    return rebuild(graph, nodes=nodes, classes=classes)


def with_input_shape(graph: Graph, shape: Shape) -> Graph:
    """The same graph for another input shape (e.g. channels of a data set)."""
    (first, *rest) = graph.inputs
    return rebuild(graph, inputs=[Input(first.name, tuple(shape)), *rest])


def check_params(
    params: Mapping[str, np.ndarray], graph: Graph, source: str = "weights"
) -> dict[str, np.ndarray]:
    """The graph's parameters from `params`, as float32; names what is missing or mis-shaped."""
    missing = [p.name for p in graph.params if p.name not in params]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{source}: no tensor '{missing[0]}'{more} for graph '{graph.name}' "
            "(were these weights trained for another graph?)"
        )
    out = {}
    for p in graph.params:
        value = params[p.name]
        if tuple(value.shape) != p.shape:
            raise CheckpointError(
                f"{source}: tensor '{p.name}' has shape {list(value.shape)}, graph "
                f"'{graph.name}' needs {list(p.shape)}"
            )
        out[p.name] = np.ascontiguousarray(value, dtype=np.float32)
    return out
