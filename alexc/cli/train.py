"""`alexc train`: SGD on real images, in one process or as MPI ranks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import AlexcError
from .app import GraphPath, Threads, app, console


@app.command()
def train(
    graph: GraphPath,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="fashion-mnist, a folder of IDX files, or an image folder "
            "(root/<class>/<image>, or root/train and root/val)",
        ),
    ] = "fashion-mnist",
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="override train.epochs")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", min=1, help="override train.batch_size")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="override train.lr")] = None,
    threads: Threads = 2,
    seed: Annotated[
        int, typer.Option("--seed", help="seed of weights, data order, augmentation, dropout")
    ] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = Path("runs/latest"),
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue from this checkpoint exactly")
    ] = None,
    init_weights: Annotated[
        Path | None,
        typer.Option("--init-weights", help="fine-tune from these weights (fresh optimizer)"),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every", min=1, help="also save RUN_DIR/last.safetensors every N steps"
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="data loading threads")] = 2,
    limit_batches: Annotated[
        int | None,
        typer.Option(
            "--limit-batches",
            min=1,
            help="stop each epoch, and its validation, after N batches (smoke tests)",
        ),
    ] = None,
    ranks: Annotated[
        int | None,
        typer.Option(
            "--ranks",
            min=1,
            help="train as N processes on this machine, through MPI (--threads is per rank)",
        ),
    ] = None,
):
    """Train a graph with SGD on real images (default: Fashion-MNIST)."""
    from ..serial.frontend import load_graph
    from ..training.distributed import process_ranks
    from ..training.loop import train as run

    if ranks is not None and ranks > 1:
        _launch_ranks(ranks)
    if resume is not None and init_weights is not None:
        raise AlexcError("give --resume (continue a run) or --init-weights (fine-tune), not both")
    try:
        result = run(
            load_graph(graph),
            data=data,
            out=out,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            threads=threads,
            seed=seed,
            resume=resume,
            init_weights=init_weights,
            checkpoint_every=checkpoint_every,
            workers=workers,
            limit_batches=limit_batches,
            console=console,
        )
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if result.get("val_top1") is not None and process_ranks().lead:
        console.print(
            f"done in {result['seconds']:.0f} s: val top-1 {result['val_top1']:.4f}, "
            f"top-5 {result['val_top5']:.4f}; weights in {out}/last.safetensors and "
            f"{out}/best.safetensors, metrics in {out}/metrics.jsonl",
            highlight=False,
        )


def _launch_ranks(count: int) -> None:
    """Re-run this command line as `count` MPI ranks (unless an MPI launcher started us)."""
    from ..training.distributed import launch, launched_size

    if launched_size() > 1:
        if launched_size() != count:
            raise AlexcError(f"--ranks {count} under an MPI launch of {launched_size()} ranks")
        return
    argv, kept = sys.argv[1:], []
    while argv:
        arg = argv.pop(0)
        if arg == "--ranks":
            argv.pop(0)
        elif not arg.startswith("--ranks="):
            kept.append(arg)
    raise SystemExit(launch(count, kept))
