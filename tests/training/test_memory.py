"""Runs that cannot fit in memory are refused before they start: train, eval and bench give one
line with the planned peak, the memory available and the largest batch size that fits."""

from __future__ import annotations

import re

import pytest

import alexc
from alexc.errors import AlexcError
from alexc.passes.lower import lower
from alexc.training import memory
from alexc.training.checkpoint import save_checkpoint
from tests.helpers import GRAPHS, color_folder

TINY = """\
name: tiny
input: {name: image, shape: [3, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, units: 3}
train: {batch_size: 8, epochs: 1, lr: 0.05}
"""
REFUSAL = re.compile(
    r"batch size (\d+) plans a peak of [\d.]+ [MG]iB, but [\d.]+ [MG]iB is available; "
    r"the largest batch size that fits is (\d+)$"
)


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_largest_batch_that_fits_is_the_plans_own(monkeypatch):
    graph = alexc.load_graph(GRAPHS / "alexnet.yaml")

    def need(b):
        return lower(graph, b, training=True).planned_peak_bytes

    monkeypatch.setattr(memory, "available_bytes", lambda: need(37) + 1)
    memory.check_fits(need, 37, "here")  # fits: no error
    with pytest.raises(AlexcError) as caught:
        memory.check_fits(need, 500, "here")
    refused, largest = REFUSAL.search(str(caught.value)).groups()
    assert (refused, largest) == ("500", "37")
    monkeypatch.setattr(memory, "available_bytes", lambda: need(1) - 1)
    with pytest.raises(AlexcError, match="not even batch size 1 fits"):
        memory.check_fits(need, 2, "here")


def test_available_memory_is_known_on_linux():
    available = memory.available_bytes()
    assert available is not None and available > 0


def test_train_refuses_a_batch_beyond_this_machines_memory(tmp_path, run_cli):
    # The paper net at a million images per batch plans terabytes: no machine has them.
    data = color_folder(tmp_path / "images", per_class=4)
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", GRAPHS / "alexnet.yaml", "--data", data, "--out", run, "--batch-size", 1_000_000
    )
    line = one_line(code, err)
    assert "alexc train alexnet" in line and "TiB" not in line
    refused, largest = REFUSAL.search(line).groups()
    assert refused == "1000000" and 1 <= int(largest) < 1_000_000
    assert not (run / "metrics.jsonl").exists()  # refused before the run started


@pytest.fixture
def weights(tmp_path):
    graph_path = tmp_path / "tiny.yaml"
    graph_path.write_text(TINY)
    graph = alexc.load_graph(graph_path)
    save_checkpoint(tmp_path / "w.safetensors", graph.init_params(0))
    return graph_path, tmp_path / "w.safetensors", color_folder(tmp_path / "images", per_class=4)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_eval_refuses_before_it_starts(weights, run_cli, monkeypatch, ten_crop):
    graph_path, ckpt, data = weights
    graph = alexc.load_graph(graph_path)
    crops = 10 if ten_crop else 1
    # Room for batch 16 (16 crops, or 160 with ten-crop) and a little more, not for 64.
    room = lower(graph, 16 * crops, training=False).planned_peak_bytes * 1.05
    monkeypatch.setattr(memory, "available_bytes", lambda: int(room))
    args = [
        "eval",
        graph_path,
        "--weights",
        ckpt,
        "--data",
        data,
        "--split",
        "val",
        "--batch-size",
        64,
    ]
    code, out, err = run_cli(*args, *(["--ten-crop"] if ten_crop else []))
    line = one_line(code, err)
    refused, largest = REFUSAL.search(line).groups()
    assert "alexc eval tiny" in line and refused == "64" and 1 <= int(largest) < 16
    assert out == ""
    code, out, err = run_cli(*args[:-1], largest, *(["--ten-crop"] if ten_crop else []))
    assert code == 0 and "top-1" in out, err


def test_bench_refuses_before_measuring(run_cli):
    code, out, err = run_cli(
        "bench", GRAPHS / "alexnet.yaml", "-b", "1,100000", "-e", "numpy", "--modes", "train"
    )
    line = one_line(code, err)
    refused, largest = REFUSAL.search(line).groups()
    assert "alexc bench alexnet" in line and refused == "100000" and int(largest) >= 1
    assert out == ""
