"""The train / eval / infer / plot / export / check commands end to end, their bad input and
usage errors, on small generated image folders."""

import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from PIL import Image

import alexc
from alexc.training.checkpoint import load_for_graph, save_checkpoint
from tests.helpers import TINY_TRAINABLE as TINY
from tests.helpers import color_folder


def test_train_eval_infer_plot_commands(tiny, folder, tmp_path, run_cli):
    _, graph_path = tiny
    run = tmp_path / "run"
    code, out, err = run_cli(
        "train", graph_path, "--data", folder, "--out", run, "--epochs", "2", "--threads", "1"
    )
    assert code == 0, err
    ckpt = run / "best.safetensors"
    code, out, err = run_cli("eval", graph_path, "--weights", ckpt, "--data", folder)
    assert code == 1 and "no test split" in err and "--split val" in err  # a flat folder
    code, out, err = run_cli(
        "eval", graph_path, "--weights", ckpt, "--data", folder, "--split", "val", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["images"] > 0
    best = max(
        json.loads(line)["val_top1"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"epoch"' in line and "val_top1" in line
    )
    assert result["top1"] == pytest.approx(best)
    colours = ("red", "green", "blue")
    images = [sorted((folder / colour).iterdir())[0] for colour in colours]
    code, out, err = run_cli(
        "infer", graph_path, "--weights", ckpt, *images, "--top", "2", "--json"
    )
    assert code == 0, err
    predictions = json.loads(out)
    assert [p["top"][0]["class"] for p in predictions] == list(colours)  # learnt: see above
    for p in predictions:
        assert len(p["top"]) == 2 and p["top"][0]["probability"] > p["top"][1]["probability"]
    code, out, err = run_cli("plot", run)
    assert code == 0, err
    png = Image.open(run / "curves.png")
    assert png.size[0] > 500 and len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 4


def _ten_crops(image: np.ndarray, crop: int) -> np.ndarray:
    """The paper's ten crops of an HWC image, as CHW rows: four corners, the centre, mirrored."""
    h, w, _ = image.shape
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)]
    crops = [image[y : y + crop, x : x + crop] for y, x in corners]
    crops.append(image[(h - crop) // 2 :][:crop, (w - crop) // 2 :][:, :crop])
    crops += [c[:, ::-1] for c in crops]
    return np.stack(crops).transpose(0, 3, 1, 2)


def test_ten_crop_trains_and_evaluates_the_mean_softmax_of_ten_crops(tmp_path, run_cli):
    """`data: {ten_crop: true}` validates each epoch on ten crops per image, and `alexc eval`
    scores the mean softmax over the crops: both equal that score recomputed here image by
    image from the files (10x10 images, 8x8 crops)."""
    data = tmp_path / "data"
    color_folder(data / "train", size=10)
    color_folder(data / "val", per_class=6, seed=1, size=10)
    graph_path = tmp_path / "ten.yaml"
    graph_path.write_text(TINY.replace("data: {flip: true,", "data: {resize: 10, ten_crop: true,"))
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", graph_path, "--data", data, "--out", run, "--epochs", "1", "--threads", "1"
    )
    assert code == 0, err
    (epoch,) = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"event": "epoch"' in line
    ]
    ckpt = run / "last.safetensors"
    code, out, err = run_cli(
        "eval", graph_path, "--weights", ckpt, "--data", data, "--split", "val", "--json"
    )
    assert code == 0, err
    result = json.loads(out)

    graph, params = load_for_graph(ckpt, alexc.load_graph(graph_path))
    exe = alexc.compile(graph, 10, threads=1)
    losses, hits, probabilities = [], [], {}
    for label, name in enumerate(graph.classes):
        for path in sorted((data / "val" / name).iterdir()):
            crops = _ten_crops(np.asarray(Image.open(path)), 8)
            x = ((crops / 255.0 - 0.5) / 0.25).astype(np.float32)
            logits = exe.forward(params, x).astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
            losses.append(-np.log(p[label]))
            hits.append(np.argmax(p) == label)
            probabilities[path] = p
    assert result["images"] == len(hits) == 18
    assert result["top1"] == epoch["val_top1"] == pytest.approx(np.mean(hits))
    assert result["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert epoch["val_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    # `alexc infer` gives each image the same mean over its ten crops.
    images = list(probabilities)[::5]
    code, out, err = run_cli(
        "infer", graph_path, "--weights", ckpt, *images, "--top", "3", "--json"
    )
    assert code == 0, err
    for path, prediction in zip(images, json.loads(out), strict=True):
        got = {t["index"]: t["probability"] for t in prediction["top"]}
        np.testing.assert_allclose([got[k] for k in range(3)], probabilities[path], rtol=1e-4)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--weights", "missing.safetensors"], "no such weights file"),
        (["--weights", "w.safetensors", "--data", "/nonexistent/folder"], "nonexistent"),
        ([], "give --weights CKPT or --onnx FILE"),
        (["--weights", "w.safetensors", "--onnx", "w.onnx"], "give --weights CKPT or --onnx"),
        (["--onnx", "missing.onnx"], "missing.onnx: cannot read the ONNX file"),
        (["--onnx", "w.safetensors"], "w.safetensors: onnxruntime cannot load it"),
        (["--onnx", "w.onnx", "-e", "numpy"], "leave out --executor numpy"),
        (["--onnx", "other.onnx"], "other.onnx takes input [1, 8, 8] per image but"),
    ],
)
def test_eval_bad_input(tiny, folder, run_cli, args, message, tmp_path, monkeypatch):
    graph, graph_path = tiny
    monkeypatch.chdir(tmp_path)
    save_checkpoint("w.safetensors", graph.init_params(0))
    alexc.export_onnx(graph, graph.init_params(0), "w.onnx")
    other = alexc.parse_graph(
        TINY.replace("shape: [3, 8, 8]", "shape: [1, 8, 8]").replace(
            "mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]", "mean: [0.5], std: [0.25]"
        )
    )
    alexc.export_onnx(other, other.init_params(0), "other.onnx")
    code, _, err = run_cli("eval", graph_path, "--data", folder, *args)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "g.yaml", "--epochs", "0"], "Invalid value for '--epochs'"),
        (["train"], "Missing argument 'graph'"),
        (["train", "g.yaml", "--nope"], "No such option: --nope"),
        (["eval", "g.yaml", "-e", "tensorflow"], "'tensorflow' is not one of"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_1(run_cli, args, message):
    code, out, err = run_cli(*args)
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and message in line and "--help" in line


def test_eval_with_onnxruntime_and_check_of_an_exported_file(tiny, folder, tmp_path, run_cli):
    """The exported ONNX file gives alexc's accuracy and outputs: the train -> export -> ORT
    path of the main job."""
    _, graph_path = tiny
    run = tmp_path / "run"
    assert (
        run_cli(
            "train", graph_path, "--data", folder, "--out", run, "--epochs", "1", "--threads", "1"
        )[0]
        == 0
    )
    ckpt = run / "last.safetensors"
    onnx_path = tmp_path / "tiny.onnx"
    code, _, err = run_cli("export", graph_path, "--weights", ckpt, "--onnx", onnx_path)
    assert code == 0, err
    code, out, err = run_cli("check", graph_path, "--weights", ckpt, "--onnx", onnx_path)
    assert code == 0, err
    results = {}
    for executor in ("numpy", "onnxruntime"):
        code, out, err = run_cli(
            "eval",
            graph_path,
            "--weights",
            ckpt,
            "--data",
            folder,
            "--executor",
            executor,
            "--split",
            "val",
            "--json",
        )
        assert code == 0, err
        results[executor] = json.loads(out)
    assert results["numpy"]["top1"] == results["onnxruntime"]["top1"]
    assert results["numpy"]["loss"] == pytest.approx(results["onnxruntime"]["loss"], rel=1e-4)
    # eval and infer --onnx run that very file in onnxruntime: alexc's numbers, and a file
    # whose fc8 bias favours class 0 by far scores exactly that class's share of the images.
    code, out, err = run_cli(
        "eval", graph_path, "--onnx", onnx_path, "--data", folder, "--split", "val", "--json"
    )
    assert code == 0, err
    from_file = json.loads(out)
    assert from_file["executor"] == "onnxruntime" and from_file["images"] == 6
    assert from_file["top1"] == results["numpy"]["top1"]
    assert from_file["loss"] == pytest.approx(results["numpy"]["loss"], rel=1e-4)
    model = onnx.load(onnx_path)
    (bias,) = [t for t in model.graph.initializer if t.name == "fc8.bias"]
    bias.CopyFrom(onnx.numpy_helper.from_array(np.array([100, 0, 0], np.float32), "fc8.bias"))
    onnx.save(model, tmp_path / "biased.onnx")
    code, out, err = run_cli(
        "eval",
        graph_path,
        "--onnx",
        tmp_path / "biased.onnx",
        "--data",
        folder,
        "--split",
        "val",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(1 / 3)  # 2 of the 6 are class 0
    image = next((folder / "red").iterdir())
    predictions = []
    for model_args in (["--weights", ckpt], ["--onnx", onnx_path]):
        code, out, err = run_cli("infer", graph_path, image, *model_args, "--json")
        assert code == 0, err
        predictions.append(json.loads(out)[0]["top"])
    assert [t["class"] for t in predictions[0]] == [t["class"] for t in predictions[1]]
    np.testing.assert_allclose(
        [t["probability"] for t in predictions[0]],
        [t["probability"] for t in predictions[1]],
        rtol=1e-4,
    )
    # A file of another graph is refused with one line.
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("units: 16", "units: 12"))
    code, _, err = run_cli("check", other, "--weights", ckpt, "--onnx", onnx_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_onnxruntime_executor_runs_the_decomposed_lrn_form(tiny):
    from alexc.cli.predict import ExecutorChoice, _predictor

    graph, _ = tiny
    predictor = _predictor(graph, graph.init_params(0), ExecutorChoice.onnxruntime, 1, 2)
    assert predictor.session.get_modelmeta().custom_metadata_map["lrn"] == "decomposed"
