"""`alexc summary`, `alexc plot` and `alexc filters`: a network and a run, as tables and
pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import GraphPath, app, console, weights_graph, wrote


@app.command()
def summary(
    graph: GraphPath,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="batch size for shapes")
    ] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object instead of a table")
    ] = False,
    diagram: Annotated[
        Path | None,
        typer.Option("--diagram", help="also draw the network as boxes and arrows (.svg or .png)"),
    ] = None,
):
    """Shapes, parameters, FLOPs and activation memory of every node."""
    from ..serial.frontend import load_graph
    from ..viz.summary import render, summarize

    g = load_graph(graph)
    if diagram is not None:
        from ..viz.diagram import draw_diagram

        wrote(draw_diagram(g, diagram), as_json)
    result = summarize(g, batch_size)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result, console)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by alexc train")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help=".png or .svg to write (default RUN_DIR/curves.png)"),
    ] = None,
):
    """Draw the loss, accuracy and learning-rate curves of a run."""
    from ..viz.plot import plot_run

    console.print(f"wrote {plot_run(run_dir, out)}", highlight=False)


@app.command()
def filters(
    graph: GraphPath,
    weights: Annotated[
        Path | None, typer.Option("--weights", "-w", help="checkpoint or weights (.safetensors)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help=".png or .svg to write")] = Path(
        "filters.png"
    ),
):
    """Draw the first conv layer's filters as a grid, one block per tower."""
    from ..viz.plot import picture_format, plot_filters

    picture_format(out)
    g, params = weights_graph(graph, weights)
    console.print(f"wrote {plot_filters(g, params, out)}", highlight=False)
