"""The `alexc` command line. Every user-fixable error is one line on stderr and exit code 1."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from .errors import AlexcError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="alexc: compile convolutional networks declared in YAML to a NumPy trainer and to ONNX.",
)
console = Console()


@app.callback()
def _root():
    """alexc: compile convolutional networks declared in YAML to a NumPy trainer and to ONNX."""


GraphArg = typer.Argument(..., help="graph file (YAML), e.g. graphs/alexnet.yaml")


def _wrote(path: Path, as_json: bool) -> None:
    """Say where a picture went: on stderr when stdout carries JSON."""
    print(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)


@app.command()
def summary(
    graph: Path = GraphArg,
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="batch size for shapes"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    diagram: Path = typer.Option(
        None, "--diagram", help="also draw the network as boxes and arrows (.svg or .png)"
    ),
):
    """Shapes, parameters, FLOPs and activation memory of every node."""
    from .frontend import load_graph
    from .summary import render, summarize

    g = load_graph(graph)
    if diagram is not None:
        from .diagram import draw_diagram

        _wrote(draw_diagram(g, diagram), as_json)
    result = summarize(g, batch_size)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result, console)


ThreadsOpt = typer.Option(2, "--threads", "-t", min=1, help="threads for BLAS and the kernels")


@app.command()
def train(
    graph: Path = GraphArg,
    data: str = typer.Option(
        "fashion-mnist",
        "--data",
        "-d",
        help="fashion-mnist, a folder of IDX files, or an image folder "
        "(root/<class>/<image>, or root/train and root/val)",
    ),
    epochs: int = typer.Option(None, "--epochs", min=1, help="override train.epochs"),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="override train.batch_size"
    ),
    lr: float = typer.Option(None, "--lr", min=0.0, help="override train.lr"),
    threads: int = ThreadsOpt,
    seed: int = typer.Option(
        0, "--seed", help="seed of weights, data order, augmentation, dropout"
    ),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="run directory"),
    resume: Path = typer.Option(None, "--resume", help="continue from this checkpoint exactly"),
    init_weights: Path = typer.Option(
        None, "--init-weights", help="fine-tune from these weights (fresh optimizer)"
    ),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", min=1, help="also save RUN_DIR/last.safetensors every N steps"
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="data loading threads"),
    limit_batches: int = typer.Option(
        None,
        "--limit-batches",
        min=1,
        help="stop each epoch, and its validation, after N batches (smoke tests)",
    ),
    ranks: int = typer.Option(
        None,
        "--ranks",
        min=1,
        help="train as N processes on this machine, through MPI (--threads is per rank)",
    ),
):
    """Train a graph with SGD on real images (default: Fashion-MNIST)."""
    from .distributed import process_ranks
    from .frontend import load_graph
    from .train import train as run

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
    from .distributed import launch, launched_size

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


class ExecutorChoice(str, Enum):
    numpy = "numpy"
    onnxruntime = "onnxruntime"


def _predictor(graph, params, executor: ExecutorChoice, threads: int, batch_size: int):
    """Either executor behind the common inference interface, `.predict(x)`. onnxruntime runs
    a fresh export with LRN spelt out in elementary ops, the form it runs fastest."""
    if executor is ExecutorChoice.onnxruntime:
        from alexc_runtime.ort import OrtPredictor

        from .serial.onnx_export import export_onnx

        model = export_onnx(graph, params, lrn="decomposed").SerializeToString()
        return OrtPredictor(model, threads)
    from .compile import compile

    return compile(graph, batch_size, threads=threads).predictor(params)


def _onnx_predictor(onnx_file: Path, graph, threads: int):
    """An ONNX file in onnxruntime, checked to take the graph's input; and its class names
    (from the file's metadata, else the graph's, else None) and number of classes."""
    from .check import load_onnx

    predictor = load_onnx(onnx_file, threads)
    session = predictor.session
    takes = session.get_inputs()[0].shape[1:]
    if list(takes) != list(graph.input.shape):
        raise AlexcError(
            f"{onnx_file} takes input {takes} per image but {graph.source} takes "
            f"{list(graph.input.shape)}: give the graph file it was exported from"
        )
    classes = session.get_modelmeta().custom_metadata_map.get("classes")
    classes = json.loads(classes) if classes else graph.classes
    num_classes = session.get_outputs()[0].shape[-1]
    return predictor, classes, num_classes if isinstance(num_classes, int) else None


def _model(graph_path: Path, weights, onnx_file, executor, threads: int, batch_size: int):
    """(graph, predictor, class names or None, number of classes, what runs) for eval and
    infer: a checkpoint in either executor, or an ONNX file in onnxruntime."""
    if (weights is None) == (onnx_file is None):
        raise AlexcError("give --weights CKPT or --onnx FILE (one of the two)")
    if onnx_file is not None:
        from .frontend import load_graph

        if executor is ExecutorChoice.numpy:
            raise AlexcError("--onnx runs the file in onnxruntime: leave out --executor numpy")
        g = load_graph(graph_path)
        predictor, classes, num_classes = _onnx_predictor(onnx_file, g, threads)
        return g, predictor, classes, num_classes, str(onnx_file)
    executor = executor or ExecutorChoice.numpy
    g, params = _weights_graph(graph_path, weights)
    predictor = _predictor(g, params, executor, threads, batch_size)
    return g, predictor, g.classes, g.shapes[g.outputs[0]][0], str(weights)


def _weights_graph(graph_path: Path, weights: Path):
    """The graph (sized to the checkpoint's classes) and its checked parameters."""
    from .checkpoint import load_for_graph
    from .frontend import load_graph

    return load_for_graph(weights, load_graph(graph_path))


WeightsOpt = typer.Option(
    None, "--weights", "-w", help="checkpoint or weights (.safetensors), or give --onnx"
)
OnnxOpt = typer.Option(
    None, "--onnx", help="an ONNX file (from alexc export) to run in onnxruntime instead"
)
ExecutorOpt = typer.Option(
    None,
    "--executor",
    "-e",
    help="what runs --weights: numpy (default), or onnxruntime on a fresh export, LRN decomposed",
)


@app.command("eval")
def evaluate(
    graph: Path = GraphArg,
    weights: Path = WeightsOpt,
    onnx_file: Path = OnnxOpt,
    data: str = typer.Option("fashion-mnist", "--data", "-d", help="as for alexc train"),
    split: str = typer.Option("test", "--split", help="val or test"),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1),
    threads: int = ThreadsOpt,
    ten_crop: bool = typer.Option(
        False, "--ten-crop", help="average 10 crops (corners, centre, and their mirrors) per image"
    ),
    executor: ExecutorChoice = ExecutorOpt,
    as_json: bool = typer.Option(
        False, "--json", help="print {top1, top5, loss, images, classes, confusion}"
    ),
    confusion: Path = typer.Option(
        None, "--confusion", help="draw the confusion matrix to this .png or .svg"
    ),
):
    """Top-1 and top-5 accuracy of trained weights (or an exported ONNX file) on a data set."""
    from dataclasses import replace

    from .data import Augment, Loader, open_source
    from .distributed import process_ranks
    from .memory import check_fits, input_bytes, plan_peak
    from .train import evaluate as run_eval

    if split not in ("val", "test"):
        raise AlexcError(f"--split must be val or test, not {split!r}")
    if confusion is not None:
        from .plot import picture_format

        picture_format(confusion)
    g, predictor, _, num_classes, model = _model(
        graph, weights, onnx_file, executor, threads, batch_size
    )
    source = open_source(data, split=split, channels=g.input.shape[0])
    if num_classes is not None and len(source.classes) != num_classes:
        raise AlexcError(
            f"{data} has {len(source.classes)} classes but {model} predicts {num_classes}"
        )
    augment = Augment.from_config(g.data, g.input.shape)
    if ten_crop:
        augment = replace(augment, ten_crop=True)
    crops = augment.crops_per_image(train=False)
    check_fits(
        lambda b: plan_peak(g, b * crops, training=False) + 6 * input_bytes(g, b * crops),
        batch_size,
        f"alexc eval {g.name}",
    )  # 6: the loader's prefetched batches and those its 2 workers build
    ranks = process_ranks()
    loader = Loader(source, augment, batch_size=batch_size, train=False, seed=0, part=ranks.part)
    with loader:
        result = run_eval(predictor, loader, crops=crops, ranks=ranks, confusion=True)
    result["executor"] = predictor.name
    result["classes"] = list(source.classes)
    if not ranks.lead:
        return
    if confusion is not None:
        from .plot import plot_confusion

        title = f"{g.name} on {Path(data).name} ({split}), {Path(model).name}"
        path = plot_confusion(np.array(result["confusion"]), source.classes, confusion, title)
        _wrote(path, as_json)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(
            f"{g.name} on {data} ({split}, {result['images']} images"
            f"{', 10 crops' if augment.ten_crop else ''}): top-1 {result['top1']:.4f}, "
            f"top-5 {result['top5']:.4f}, loss {result['loss']:.4f}",
            highlight=False,
        )


@app.command()
def infer(
    graph: Path = GraphArg,
    images: list[Path] = typer.Argument(..., help="image files"),
    weights: Path = WeightsOpt,
    onnx_file: Path = OnnxOpt,
    executor: ExecutorChoice = ExecutorOpt,
    top: int = typer.Option(5, "--top", min=1, help="how many classes to show per image"),
    threads: int = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list, one entry per image"),
    explain: Path = typer.Option(
        None,
        "--explain",
        help="draw the image's activations through the conv layers to this .png or .svg "
        "(one image; NumPy executor)",
    ),
):
    """Classify images: class names and probabilities."""
    from .data import Augment, FolderSource, Loader
    from .train import log_softmax

    g, predictor, classes, _, _ = _model(graph, weights, onnx_file, executor, threads, len(images))
    for path in images:
        if not path.is_file():
            raise AlexcError(f"{path}: no such image file")
    if explain is not None:
        from .plot import picture_format

        picture_format(explain)
        if len(images) != 1:
            raise AlexcError(f"--explain draws one image's activations; {len(images)} were given")
        if weights is None:
            raise AlexcError("--explain runs the NumPy executor: give --weights CKPT, not --onnx")
    source = FolderSource(images, np.zeros(len(images), np.int64), [], channels=g.input.shape[0])
    augment = Augment.from_config(g.data, g.input.shape)
    with Loader(source, augment, batch_size=len(images), train=False, seed=0) as loader:
        batches = list(loader)
    if not batches:
        raise AlexcError(
            f"no readable image among {len(images)}: {source.skipped[0][0]}: {source.skipped[0][1]}"
        )
    x = np.concatenate([b[0] for b in batches])
    crops = augment.crops_per_image(train=False)  # data: {ten_crop: true} averages ten
    probs = np.exp(log_softmax(predictor.predict(x)))
    probs = probs.reshape(len(probs) // crops, crops, -1).mean(axis=1)
    classes = list(classes or [str(i) for i in range(probs.shape[1])])
    skipped = {path for path, _ in source.skipped}
    readable = [p for p in images if str(p) not in skipped]
    results = []
    for path, p in zip(readable, probs, strict=True):
        order = np.argsort(-p, kind="stable")[: min(top, len(classes))]
        results.append(
            {
                "image": str(path),
                "top": [
                    {"class": classes[i], "index": int(i), "probability": float(p[i])}
                    for i in order
                ],
            }
        )
    if explain is not None:
        from .plot import plot_activations

        best = results[0]["top"][0]
        title = f"{readable[0].name}: {best['class']} ({best['probability']:.3f})"
        path = plot_activations(*_weights_graph(graph, weights), x, explain, title)
        _wrote(path, as_json)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        console.print(f"{r['image']}: {best}", highlight=False, soft_wrap=True)
    for path, reason in source.skipped:
        console.print(f"skipped {path}: {reason}", highlight=False, soft_wrap=True)


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="a run directory written by alexc train"),
    out: Path = typer.Option(
        None, "--out", "-o", help=".png or .svg to write (default RUN_DIR/curves.png)"
    ),
):
    """Draw the loss, accuracy and learning-rate curves of a run."""
    from .plot import plot_run

    console.print(f"wrote {plot_run(run_dir, out)}", highlight=False)


@app.command()
def filters(
    graph: Path = GraphArg,
    weights: Path = WeightsOpt,
    out: Path = typer.Option(Path("filters.png"), "--out", "-o", help=".png or .svg to write"),
):
    """Draw the first conv layer's filters as a grid, one block per tower."""
    from .plot import picture_format, plot_filters

    picture_format(out)
    g, params = _weights_graph(graph, weights)
    console.print(f"wrote {plot_filters(g, params, out)}", highlight=False)


def _register_commands():
    from .cli_bench import bench
    from .cli_import import import_cmd
    from .cli_onnx import check_cmd, export

    app.command("export")(export)
    app.command("check")(check_cmd)
    app.command("import")(import_cmd)
    app.command("bench")(bench)


_register_commands()


def main() -> None:
    """Entry point: run the app, turning AlexcError into one line and exit code 1 (under MPI,
    naming the rank and ending the other ranks too)."""
    from .distributed import fail

    try:
        app(standalone_mode=False)
    except AlexcError as e:
        fail(e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # typer's (or, in older typer, click's) exceptions, recognised by shape: their classes
        # moved between versions. `alexc` alone prints the help (exit code 2, as click does).
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
            sys.exit(e.exit_code)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            print(f"error: {e.format_message()}{hint}", file=sys.stderr)
            sys.exit(1)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
