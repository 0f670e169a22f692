"""Writing a Graph as a graph file: the inverse of the YAML frontend (`alexc.serial.frontend`).

`parse_graph(graph_to_yaml(g))` rebuilds the same graph: the same nodes, attributes, inputs,
outputs, parameter initialisation, classes and recipe sections. The text reads like the
hand-written files in graphs/: one flow mapping per node, attributes at their defaults left out,
`inputs:` only where a node does not read the previous one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..errors import GraphError
from ..files import write_atomic
from ..ir import Graph, Node
from ..ir.graph import DEFAULT_INIT
from ..ops import RULES


def _plain(value):
    """Frozen mappings and tuples as dicts and lists, which yaml.safe_dump writes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _compact(value):
    """The shortest spelling the attribute kinds normalise back: (3, 3) -> 3,
    (1, 2, 1, 2) -> [1, 2] (pads), (p, p, p, p) -> p."""
    if isinstance(value, tuple) and len(value) == 4 and value[:2] == value[2:]:
        value = value[:2]
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return _plain(value)


def _flow(value) -> str:
    return yaml.safe_dump(
        value, default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True
    ).strip()


def _attrs(node: Node) -> dict:
    """The node's attributes, leaving out those equal to their defaults."""
    out = {}
    for name, spec in RULES[node.op].attrs.items():
        value = node.attrs[name]
        if spec.default is not None and spec.kind(spec.default, name) == value:
            continue
        out[name] = _compact(value)
    return out


def _default_init(graph: Graph) -> dict:
    """The most common init per parameter kind: written once at the top, not per node."""
    chosen = {}
    for suffix, fallback in DEFAULT_INIT.items():
        specs = Counter(
            _flow(_plain(n.init[suffix])) for n in graph.nodes if suffix in n.init
        ).most_common()
        chosen[suffix] = yaml.safe_load(specs[0][0]) if specs else _plain(fallback)
    return chosen


def graph_to_yaml(graph: Graph, comment: str | None = None) -> str:
    """Graph-file text for `graph`; `parse_graph` reads it back to the same graph."""
    if len(graph.inputs) != 1:
        raise GraphError(
            f"has {len(graph.inputs)} inputs; a graph file declares exactly one",
            file=graph.source,
        )
    if not graph.nodes:
        raise GraphError("has no nodes; a graph file needs at least one", file=graph.source)
    lines = [f"# {line}".rstrip() for line in (comment or "").splitlines()]
    lines.append(yaml.safe_dump({"name": graph.name}, allow_unicode=True).strip())
    (inp,) = graph.inputs
    lines.append("input: " + _flow({"name": inp.name, "shape": list(inp.shape)}))
    init = _default_init(graph)
    if init != _plain(DEFAULT_INIT):
        lines.append("init: " + _flow(init))
    lines.append("nodes:")
    previous = inp.name
    for n in graph.nodes:
        entry = {"name": n.name, "op": n.op.value}
        if list(n.inputs) != [previous]:
            entry["inputs"] = list(n.inputs)
        entry.update(_attrs(n))
        own = {s: _plain(spec) for s, spec in n.init.items() if _plain(spec) != init[s]}
        if own:
            entry["init"] = own
        lines.append("  - " + _flow(entry))
        previous = n.name
    if graph.outputs and list(graph.outputs) != [previous]:
        lines.append("outputs: " + _flow(list(graph.outputs)))
    if graph.classes:
        lines.append("classes: " + _flow(list(graph.classes)))
    for key in ("train", "data"):
        section = _plain(getattr(graph, key))
        if section:
            lines.append(
                yaml.safe_dump(
                    {key: section}, sort_keys=False, default_flow_style=None, allow_unicode=True
                ).rstrip()
            )
    return "\n".join(lines) + "\n"


def write_graph(graph: Graph, path: str | Path, comment: str | None = None) -> None:
    """Write `graph` as a graph file, atomically (temp file + rename)."""
    write_atomic(path, graph_to_yaml(graph, comment).encode(), "graph file")
