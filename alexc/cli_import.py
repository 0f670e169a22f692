"""The `alexc import` command (registered on the app in alexc/cli.py as "import").

Errors are raised as AlexcError; the CLI's main() prints them as one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import AlexcError


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise AlexcError(f"--input-shape must be positive sizes like 3,224,224; got {text!r}")
    return shape


def import_cmd(
    model: Annotated[Path, typer.Argument(help="the ONNX model to import")],
    graph_out: Annotated[
        Path, typer.Option("--graph", "-g", help="the graph file (YAML) to write")
    ],
    weights_out: Annotated[
        Path | None,
        typer.Option("--weights", "-w", help="the weights file (.safetensors) to write"),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="per-sample input shape C,H,W, for a model whose input sizes are symbolic",
        ),
    ] = None,
    random_weights: Annotated[
        bool,
        typer.Option(
            "--random-weights",
            help="ignore the model's weights (or their absence) and draw fresh ones from --seed",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of --random-weights")] = 0,
):
    """Import an ONNX model (e.g. a torchvision export, the ONNX zoo's bvlc_alexnet) as a graph
    file and a weights file, to inspect, fine-tune and run with alexc."""
    from .checkpoint import save_checkpoint
    from .graph_yaml import write_graph
    from .serial.onnx_import import import_onnx

    graph, params = import_onnx(
        model,
        input_shape=_shape(input_shape),
        weights="random" if random_weights else "model",
        seed=seed,
    )
    origin = f"fresh weights, seed {seed}" if random_weights else "the model's weights"
    write_graph(graph, graph_out, comment=f"Imported by alexc from {model}.")
    if weights_out is not None:
        meta = {"graph": graph.fingerprint(), "source": str(model)}
        if graph.classes:
            meta["classes"] = list(graph.classes)
        save_checkpoint(weights_out, params, meta=meta)
    print(
        f"imported {model}: {len(graph.nodes)} nodes, {graph.num_params:,} parameters, "
        f"input {graph.input.name} {list(graph.input.shape)}, outputs {', '.join(graph.outputs)}"
    )
    print(f"wrote {graph_out}")
    if weights_out is not None:
        print(f"wrote {weights_out} ({origin})")
    else:
        print("no --weights given: the weights were not written")
