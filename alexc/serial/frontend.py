"""The YAML frontend: a graph file -> a verified Graph. The only module that reads YAML.

A graph file:

    name: tiny
    input: {name: image, shape: [1, 28, 28]}
    init: {weight: {normal: 0.01}, bias: {constant: 0}}     # optional default for every node
    nodes:
      - {name: conv1, op: conv, filters: 8, kernel: 3, pad: 1, init: {bias: {constant: 1}}}
      - {name: relu1, op: relu}                             # reads the previous node
      - {name: fc, op: linear, units: 10, inputs: [relu1]}  # or names its inputs
    outputs: [fc]                                           # optional: default the last node
    train: {...}                                            # optional recipe: training/recipe.py
    data: {...}                                             # optional preprocessing: data/
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import GraphError, SectionError
from ..ir import Graph, Input, Node, Op
from ..ir.graph import build_graph, default_init_problem

TOP_KEYS = ("name", "input", "init", "nodes", "outputs", "classes", "train", "data")
NODE_KEYS = ("name", "op", "inputs", "init")
_LINE = "__line__"
_KEY_LINES = "__key_lines__"
_MARKS = (_LINE, _KEY_LINES)


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping and of each of its keys, so errors can point at the
    node or the key."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        mapping[_LINE] = node.start_mark.line + 1
        mapping[_KEY_LINES] = {
            self.construct_object(k): k.start_mark.line + 1
            for k, _ in node.value
            if isinstance(k, yaml.ScalarNode)
        }
        return mapping


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _MARKS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def load_graph(path: str | Path) -> Graph:
    """Read, build and verify a graph file; errors name the file, line and node."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GraphError("no such graph file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraphError(f"cannot read the graph file ({e})", file=str(path)) from None
    return parse_graph(text, source=str(path))


def parse_graph(text: str, source: str = "<string>") -> Graph:
    """Parse graph-file text (see the module docstring) into a verified Graph."""

    def err(what, line=None, node=None):
        return GraphError(what, file=source, line=line, node=node)

    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise err(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise err("nested too deeply to be a graph file") from None
    if doc is None:
        raise err("the graph file is empty; it needs at least 'input' and 'nodes'")
    if not isinstance(doc, dict):
        raise err(
            f"the top level must be a mapping with 'input' and 'nodes', not a {type(doc).__name__}"
        )
    unknown = sorted(str(k) for k in doc if k not in TOP_KEYS and k not in _MARKS)
    if unknown:
        raise err(f"unknown top-level key '{unknown[0]}' (known: {', '.join(TOP_KEYS)})")

    inp = doc.get("input")
    if not isinstance(inp, dict) or "shape" not in inp:
        raise err("'input' must be a mapping like {name: image, shape: [3, 227, 227]}")
    shape = inp["shape"]
    if not isinstance(shape, list) or not shape:
        raise err(
            "input shape must be a list like [3, 227, 227] (channels, height, width)", inp[_LINE]
        )
    inputs = [Input(str(inp.get("name", "input")), tuple(shape))]

    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise err("'nodes' must be a non-empty list of nodes like {name: conv1, op: conv, ...}")

    nodes, lines = [], {}
    previous = inputs[0].name
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise err(
                f"node #{i + 1} must be a mapping like {{name: conv1, op: conv}}, got {raw!r}"
            )
        line = raw[_LINE]
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise err(f"node #{i + 1} needs a 'name'", line)
        op_name = raw.get("op")
        try:
            op = Op(op_name)
        except ValueError:
            known = ", ".join(o.value for o in Op)
            raise err(f"unknown op '{op_name}' (known ops: {known})", line, name) from None
        node_inputs = raw.get("inputs", [previous])
        if isinstance(node_inputs, str):
            node_inputs = [node_inputs]
        if not isinstance(node_inputs, list) or not all(isinstance(x, str) for x in node_inputs):
            raise err("'inputs' must be a list of names", line, name)
        init = _strip(raw.get("init", {}))
        if not isinstance(init, dict):
            raise err("'init' must map parameters to specs, like {bias: {constant: 1}}", line, name)
        attrs = {k: _strip(v) for k, v in raw.items() if k not in NODE_KEYS and k not in _MARKS}
        nodes.append(Node(op, name, tuple(node_inputs), attrs, init))
        if name in lines:
            raise err(f"duplicate name '{name}': every node needs its own name", line, name)
        lines[name] = line
        previous = name

    top_line = doc[_KEY_LINES].get
    outputs = doc.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)
    ):
        raise err("'outputs' must be a list of node names", top_line("outputs"))
    default_init = doc.get("init") or {}
    if not isinstance(default_init, dict):
        raise err(
            "'init' must map parameter kinds to specs, like {weight: {normal: 0.01}, "
            f"bias: {{constant: 0}}}}, not {default_init!r}",
            top_line("init"),
        )
    for suffix, spec in default_init.items():
        if suffix in _MARKS:
            continue
        problem = default_init_problem(suffix, _strip(spec))
        if problem:
            raise err(problem, default_init[_KEY_LINES].get(suffix))
    classes = doc.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise err("'classes' must be a list of class names", top_line("classes"))
    sections = {}
    for key in ("train", "data"):
        section = doc.get(key) or {}
        if not isinstance(section, dict):
            raise err(f"'{key}' must be a mapping, not {section!r}", top_line(key))
        sections[key] = section
    graph = build_graph(
        str(doc.get("name", Path(source).stem)),
        inputs,
        nodes,
        outputs,
        train=_strip(sections["train"]),
        data=_strip(sections["data"]),
        classes=classes,
        source=source,
        lines=lines,
        default_init=_strip(default_init),
    )
    _check_sections(graph, sections, err)
    return graph


def _check_sections(graph: Graph, raw: dict, err) -> None:
    """Check the `train:` and `data:` sections now, as training would, and locate any error
    at the line of the key it names."""
    from ..data import Augment
    from ..training.recipe import Recipe

    shape = graph.input.shape
    try:
        Recipe.from_section(graph.train)
        if len(shape) == 3 and shape[0] in (1, 3):  # what alexc's data pipeline feeds
            Augment.from_config(graph.data, shape)
    except SectionError as e:
        section = raw[e.section]
        line = section[_KEY_LINES].get(e.key, section[_LINE]) if section else None
        raise err(str(e), line) from None
