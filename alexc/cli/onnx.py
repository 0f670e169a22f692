"""`alexc export`, `alexc check` and `alexc import`: ONNX out, the cross-check in
onnxruntime, and ONNX in."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import AlexcError
from .app import GraphPath, app, console


class LrnForm(str, Enum):
    node = "node"
    decomposed = "decomposed"


def _graph_and_params(graph_path: Path, weights: Path | None, seed: int | None):
    """(graph, params, where the params came from). A checkpoint trained on other classes
    resizes the graph's last layer and names its classes (training.checkpoint.load_for_graph)."""
    from ..serial.frontend import load_graph
    from ..training.checkpoint import load_for_graph

    graph = load_graph(graph_path)
    if weights is None:
        seed = 0 if seed is None else seed
        return graph, graph.init_params(seed), f"seed {seed}"
    graph, params = load_for_graph(weights, graph)
    return graph, params, str(weights)


WeightsPath = Annotated[
    Path | None,
    typer.Option(
        "--weights", "-w", help="checkpoint or weights (.safetensors); default: fresh init"
    ),
]
Seed = Annotated[int | None, typer.Option("--seed", help="seed of fresh parameters [0]")]
Opset = Annotated[int, typer.Option("--opset", help="ONNX opset, 17..21")]
Lrn = Annotated[
    LrnForm,
    typer.Option("--lrn", help="one LRN node, or LRN spelt out in elementary ops (faster)"),
]


@app.command()
def export(
    graph: GraphPath,
    out: Annotated[Path, typer.Option("--onnx", "-o", help="the ONNX file to write")],
    weights: WeightsPath = None,
    seed: Seed = None,
    opset: Opset = 17,
    lrn: Lrn = LrnForm.node,
):
    """Export a graph and its weights as an ONNX inference model."""
    from ..serial.onnx_export import export_onnx

    if weights is not None and seed is not None:
        raise AlexcError("give --weights or --seed, not both")
    g, params, source = _graph_and_params(graph, weights, seed)
    export_onnx(g, params, out, opset=opset, lrn=lrn.value)
    size = out.stat().st_size
    console.print(
        f"wrote {out} ({size / 2**20:.1f} MiB): graph '{g.name}', opset {opset}, "
        f"{g.num_params:,} parameters from {source}, LRN as {lrn.value}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("check")
def check_cmd(
    graph: GraphPath,
    weights: WeightsPath = None,
    batch_size: Annotated[
        list[int] | None,
        typer.Option("--batch-size", "-b", min=1, help="batch size to compare (repeatable) [1, 5]"),
    ] = None,
    threads: Annotated[
        int, typer.Option("--threads", "-t", min=1, help="threads for both executors")
    ] = 2,
    seed: Annotated[
        int | None, typer.Option("--seed", help="seed of the inputs and fresh parameters [0]")
    ] = None,
    lrn: Lrn = LrnForm.node,
    opset: Opset = 17,
    rtol: Annotated[
        float, typer.Option("--rtol", min=0.0, help="tolerance on max|ort - numpy| / max|numpy|")
    ] = 1e-5,
    onnx_file: Annotated[
        Path | None,
        typer.Option("--onnx", help="run this ONNX file in onnxruntime (default: export afresh)"),
    ] = None,
):
    """Compare the NumPy executor with onnxruntime on alexc's own export; fail above tolerance."""
    from ..check import check

    g, params, source = _graph_and_params(graph, weights, seed)
    rows = check(
        g,
        params,
        batch_size or (1, 5),
        threads,
        seed or 0,
        lrn.value,
        opset=opset,
        rtol=rtol,
        model=onnx_file,
    )
    table = Table(title=f"{g.name}: onnxruntime vs NumPy executor (parameters from {source})")
    for column in ("batch", "output", "shape", "max abs error", "max rel error", "result"):
        table.add_column(column, justify="left" if column in ("output", "shape") else "right")
    for r in rows:
        verdict = "[green]ok[/green]" if r.ok else f"[red]above {r.rtol:g}[/red]"
        shape = "x".join(map(str, r.shape))
        table.add_row(
            str(r.batch_size), r.output, shape, f"{r.max_abs:.3g}", f"{r.max_rel:.3g}", verdict
        )
    console.print(table)
    failed = [r for r in rows if not r.ok]
    if failed:
        worst = max(failed, key=lambda r: r.max_rel)
        raise AlexcError(
            f"{len(failed)} of {len(rows)} comparisons exceed rtol {rtol:g} (worst: output "
            f"'{worst.output}' at batch {worst.batch_size}, relative error {worst.max_rel:.3g})"
        )


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


@app.command("import")
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
    from ..serial.graph_yaml import write_graph
    from ..serial.onnx_import import import_onnx
    from ..training.checkpoint import save_checkpoint

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
