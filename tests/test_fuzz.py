"""The fuzz tier: every reader of untrusted files, fed mutated inputs by Hypothesis.

The property is the same for every reader: it accepts the input and the result verifies, or it
raises alexc's own error type with one line naming the file. Never another exception, a hang,
or memory far beyond the file's size.

The default tier runs a fixed number of examples per reader from a fixed seed (well under a
minute in all). A long run explores new seeds with more examples:

    ALEXC_FUZZ_EXAMPLES=20000 python -m pytest -m fuzz tests/test_fuzz.py

Every failure a run finds becomes an explicit `@example` (or a test of its own) below.
"""

from __future__ import annotations

import math
import os

import pytest
import yaml
from conftest import GRAPHS
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from alexc.errors import AlexcError, GraphError
from alexc.frontend import parse_graph
from alexc.graph import verify

pytestmark = pytest.mark.fuzz

LONG_RUN = os.environ.get("ALEXC_FUZZ_EXAMPLES")


def fuzz(examples: int):
    """Hypothesis settings: `examples` from a fixed seed, or the long run's count, seeds new."""
    return settings(
        max_examples=int(LONG_RUN) if LONG_RUN else examples,
        derandomize=not LONG_RUN,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def assert_one_line(error: AlexcError, name: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert name in message, f"the error does not name {name}: {message}"


# --- graph files ------------------------------------------------------------------------------

GRAPH_DOCS = {p.name: yaml.safe_load(p.read_text()) for p in sorted(GRAPHS.glob("*.yaml"))}
SOURCE = "fuzzed.yaml"

# Values of every kind a hand-edited file might hold in any place.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["abc", "", "conv", "1e-3", "-", "[1, 2]"]),
    st.lists(st.integers(-2, 40), max_size=5),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 3), max_size=2),
)


def _places(doc, path=()):
    """Every (container, key) of a parsed YAML document, containers included."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield doc, key
            yield from _places(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield doc, i
            yield from _places(value, (*path, i))


@st.composite
def mutated_graph_text(draw):
    """A real graph file after 1-4 structured mutations (or its text cut short)."""
    doc = yaml.safe_load(yaml.safe_dump(GRAPH_DOCS[draw(st.sampled_from(sorted(GRAPH_DOCS)))]))
    for _ in range(draw(st.integers(1, 4))):
        places = list(_places(doc))
        container, key = draw(st.sampled_from(places))
        kind = draw(
            st.sampled_from(["replace", "delete", "add", "duplicate", "swap", "rewire", "top"])
        )
        if kind == "replace":
            container[key] = draw(ODD_VALUES)
        elif kind == "delete":
            del container[key]
        elif kind == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(["inputs", "init", "units", "zz", "shape", 1]))] = draw(
                ODD_VALUES
            )
        elif kind in ("duplicate", "swap", "rewire") and isinstance(doc.get("nodes"), list):
            nodes = doc["nodes"]
            if not nodes:
                continue
            i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
            if kind == "duplicate":
                nodes.insert(j, nodes[i])
            elif kind == "swap":
                nodes[i], nodes[j] = nodes[j], nodes[i]
            elif isinstance(nodes[i], dict) and isinstance(nodes[j], dict):
                nodes[i]["inputs"] = [nodes[j].get("name", "x")]  # may close a cycle
        elif kind == "top":
            doc[
                draw(
                    st.sampled_from(
                        ["input", "init", "nodes", "outputs", "classes", "train", "data"]
                    )
                )
            ] = draw(ODD_VALUES)
        if not isinstance(doc, dict):
            break
    text = yaml.safe_dump(doc, sort_keys=False)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def check_graph_text(text: str) -> None:
    try:
        graph = parse_graph(text, source=SOURCE)
    except GraphError as e:
        assert_one_line(e, SOURCE)
        event(f"refused: {e.what.split(' ')[0]}")
        return
    event("accepted")
    verify(graph)
    # What the frontend accepts, training and preprocessing accept too.
    from alexc.data import Augment
    from alexc.train import Recipe

    Recipe.from_graph(graph)
    Augment.from_config(graph.data, graph.input.shape)
    assert all(math.prod(s) >= 1 for s in graph.shapes.values())


TINY = "input: {name: image, shape: [1, 8, 8]}\nnodes:\n  - {name: fc, op: linear, units: 3}\n"


# What the fuzzer found, each once a Python traceback instead of one line.
@fuzz(400)
@given(mutated_graph_text())
@example(TINY + "init: true\n")  # TypeError: 'bool' object is not a mapping
@example(TINY + "init: abc\n")  # the report: 'str' object is not a mapping
@example(TINY + "init: {weight: 3}\n")
@example(TINY + "data: {flip: null}\n")  # accepted, then refused by training
@example(TINY + "data: {mean: [null]}\n")
@example(TINY + "data: {mean: []}\n")
@example(TINY + "data: {mean: abc}\n")  # ValueError in onnx_export
@example(TINY + "train: {label_smoothing: abc}\n")  # ValueError in lowering
@example(TINY + "train: {schedule: {step: {milestones: abc}}}\n")
def test_fuzz_graph_files(text):
    check_graph_text(text)
