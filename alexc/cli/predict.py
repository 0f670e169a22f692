"""`alexc eval` and `alexc infer`: trained weights (in either executor) or an exported ONNX
file, on a data set or on image files."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..errors import AlexcError
from .app import GraphPath, Threads, app, console, weights_graph, wrote


class ExecutorChoice(str, Enum):
    numpy = "numpy"
    onnxruntime = "onnxruntime"


def _predictor(graph, params, executor: ExecutorChoice, threads: int, batch_size: int):
    """Either executor behind the common inference interface, `.predict(x)`. onnxruntime runs
    a fresh export with LRN spelt out in elementary ops, the form it runs fastest."""
    if executor is ExecutorChoice.onnxruntime:
        from alexc_runtime.ort import OrtPredictor

        from ..serial.onnx_export import export_onnx

        model = export_onnx(graph, params, lrn="decomposed").SerializeToString()
        return OrtPredictor(model, threads)
    from ..passes.compile import compile

    return compile(graph, batch_size, threads=threads).predictor(params)


def _onnx_predictor(onnx_file: Path, graph, threads: int):
    """An ONNX file in onnxruntime, checked to take the graph's input; and its class names
    (from the file's metadata, else the graph's, else None) and number of classes."""
    from ..check import load_onnx

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
        from ..serial.frontend import load_graph

        if executor is ExecutorChoice.numpy:
            raise AlexcError("--onnx runs the file in onnxruntime: leave out --executor numpy")
        g = load_graph(graph_path)
        predictor, classes, num_classes = _onnx_predictor(onnx_file, g, threads)
        return g, predictor, classes, num_classes, str(onnx_file)
    executor = executor or ExecutorChoice.numpy
    g, params = weights_graph(graph_path, weights)
    predictor = _predictor(g, params, executor, threads, batch_size)
    return g, predictor, g.classes, g.shapes[g.outputs[0]][0], str(weights)


WeightsPath = Annotated[
    Path | None,
    typer.Option("--weights", "-w", help="checkpoint or weights (.safetensors), or give --onnx"),
]
OnnxPath = Annotated[
    Path | None,
    typer.Option("--onnx", help="an ONNX file (from alexc export) to run in onnxruntime instead"),
]
Executor = Annotated[
    ExecutorChoice | None,
    typer.Option(
        "--executor",
        "-e",
        help="what runs --weights: numpy (default), or onnxruntime on a fresh export, LRN "
        "decomposed",
    ),
]


@app.command("eval")
def evaluate(
    graph: GraphPath,
    weights: WeightsPath = None,
    onnx_file: OnnxPath = None,
    data: Annotated[str, typer.Option("--data", "-d", help="as for alexc train")] = "fashion-mnist",
    split: Annotated[str, typer.Option("--split", help="val or test")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 256,
    threads: Threads = 2,
    ten_crop: Annotated[
        bool,
        typer.Option(
            "--ten-crop", help="average 10 crops (corners, centre, and their mirrors) per image"
        ),
    ] = False,
    executor: Executor = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print {top1, top5, loss, images, classes, confusion}")
    ] = False,
    confusion: Annotated[
        Path | None,
        typer.Option("--confusion", help="draw the confusion matrix to this .png or .svg"),
    ] = None,
):
    """Top-1 and top-5 accuracy of trained weights (or an exported ONNX file) on a data set."""
    from dataclasses import replace

    from ..data import Augment, Loader, open_source
    from ..training.distributed import process_ranks
    from ..training.evaluate import evaluate as run_eval
    from ..training.memory import check_fits, input_bytes, plan_peak

    if split not in ("val", "test"):
        raise AlexcError(f"--split must be val or test, not {split!r}")
    if confusion is not None:
        from ..viz.plot import picture_format

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
        result = run_eval(
            predictor, loader, crops=crops, ranks=ranks, confusion=True, classes=len(source.classes)
        )
    result["executor"] = predictor.name
    result["classes"] = list(source.classes)
    if not ranks.lead:
        return
    if confusion is not None:
        from ..viz.plot import plot_confusion

        title = f"{g.name} on {Path(data).name} ({split}), {Path(model).name}"
        path = plot_confusion(np.array(result["confusion"]), source.classes, confusion, title)
        wrote(path, as_json)
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
    graph: GraphPath,
    images: Annotated[list[Path], typer.Argument(help="image files")],
    weights: WeightsPath = None,
    onnx_file: OnnxPath = None,
    executor: Executor = None,
    top: Annotated[
        int, typer.Option("--top", min=1, help="how many classes to show per image")
    ] = 5,
    threads: Threads = 2,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON list, one entry per image")
    ] = False,
    explain: Annotated[
        Path | None,
        typer.Option(
            "--explain",
            help="draw the image's activations through the conv layers to this .png or .svg "
            "(one image; NumPy executor)",
        ),
    ] = None,
):
    """Classify images: class names and probabilities."""
    from ..data import Augment, FolderSource, Loader
    from ..training.evaluate import log_softmax

    g, predictor, classes, _, _ = _model(graph, weights, onnx_file, executor, threads, len(images))
    for path in images:
        if not path.is_file():
            raise AlexcError(f"{path}: no such image file")
    if explain is not None:
        from ..viz.plot import picture_format

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
        from ..viz.plot import plot_activations

        best = results[0]["top"][0]
        title = f"{readable[0].name}: {best['class']} ({best['probability']:.3f})"
        path = plot_activations(*weights_graph(graph, weights), x, explain, title)
        wrote(path, as_json)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        console.print(f"{r['image']}: {best}", highlight=False, soft_wrap=True)
    for path, reason in source.skipped:
        console.print(f"skipped {path}: {reason}", highlight=False, soft_wrap=True)
