"""Full disks and unwritable places, for real: a small tmpfs filled up or mounted read-only.

Every writer (checkpoint, metrics line, ONNX file, graph file) gives one line naming the path
and the reason, leaves the previous file intact and loadable, and leaves no temporary file.
Mounting needs root (CI runs as root); elsewhere these tests skip, and the injected
OSError(ENOSPC) tests below stand in for them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import alexc
from alexc.errors import AlexcError
from alexc.serial.graph_yaml import write_graph
from alexc.training.checkpoint import read_checkpoint, save_checkpoint
from alexc.training.metrics import MetricsLog, load_run_metrics
from tests.helpers import color_folder

GRAPH = """\
name: tiny
input: {name: image, shape: [3, 8, 8]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, units: 3}
train: {batch_size: 8, epochs: 1, lr: 0.05}
"""
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
READ_ONLY = os.strerror(errno.EROFS)  # "Read-only file system"


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    """A 512 KiB tmpfs of our own, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the injected-ENOSPC tests cover the logic")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt, leave: int = 0) -> None:
    """Fill the file system until only about `leave` bytes stay free."""
    stat = os.statvfs(mnt)
    todo = stat.f_bavail * stat.f_frsize - leave
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while todo > 0 or not leave:  # with leave=0: on to ENOSPC, past what statvfs counted
            todo -= os.write(fd, bytes(min(max(todo, 4096), 1 << 16)))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def read_only(mnt) -> None:
    remounted = _mount("-o", "remount,ro", str(mnt))
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remounted.stderr.strip()}")


def graph():
    return alexc.parse_graph(GRAPH, "tiny.yaml")


def params(seed: int):
    return graph().init_params(seed)


# Each writer: write(folder, version) writes version `version` of its file and returns its
# path; read(path) gives back what a later reader sees.
def write_checkpoint(folder, version):
    path = folder / "last.safetensors"
    save_checkpoint(path, params(version), momentum=params(version), meta={"epoch": version})
    return path


def read_checkpoint_epoch(path):
    tensors, momentum, meta = read_checkpoint(path)
    assert all(np.array_equal(tensors[k], v) for k, v in params(meta["epoch"]).items())
    return meta["epoch"]


def write_onnx(folder, version):
    path = folder / "model.onnx"
    alexc.export_onnx(graph(), params(version), path)
    return path


def read_onnx(path):
    import onnx

    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name == "fc.weight")
    return next(
        v
        for v in range(3)
        if np.array_equal(onnx.numpy_helper.to_array(weight), params(v)["fc.weight"])
    )


def write_graph_file(folder, version):
    path = folder / "graph.yaml"
    g = alexc.parse_graph(GRAPH.replace("units: 3", f"units: {3 + version}"), "tiny.yaml")
    write_graph(g, path, comment="x" * 8000)  # bigger than the page left free
    return path


def read_graph_file(path):
    return alexc.load_graph(path).shapes["fc"][0] - 3


def write_metrics(folder, version):
    path = folder / "metrics.jsonl"
    log = MetricsLog(path)
    try:
        log.write(event="epoch", epoch=version, note="x" * 9000)
    finally:
        log.close()
    return path


def read_metrics(path):
    return load_run_metrics(path.parent)[-1]["epoch"]


WRITERS = {
    "checkpoint": (write_checkpoint, read_checkpoint_epoch),
    "onnx": (write_onnx, read_onnx),
    "graph file": (write_graph_file, read_graph_file),
    "metrics line": (write_metrics, read_metrics),
}


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_a_full_disk_is_one_line_and_the_previous_file_survives(disk, what):
    write, read = WRITERS[what]
    path = write(disk, 1)
    before = sorted(p.name for p in disk.iterdir())
    fill(disk)
    with pytest.raises(AlexcError) as caught:
        write(disk, 2)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and NO_SPACE in message, message
    (disk / "filler").unlink()
    assert sorted(p.name for p in disk.iterdir()) == before  # no temporary file left
    assert read(path) == 1


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_a_read_only_disk_is_one_line_and_the_previous_file_survives(disk, what):
    write, read = WRITERS[what]
    path = write(disk, 1)
    before = sorted(p.name for p in disk.iterdir())
    read_only(disk)
    with pytest.raises(AlexcError) as caught:
        write(disk, 2)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and READ_ONLY in message, message
    assert sorted(p.name for p in disk.iterdir()) == before
    assert read(path) == 1


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_a_path_through_a_file_is_one_line(tmp_path, what):
    write, _ = WRITERS[what]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(AlexcError) as caught:
        write(blocker, 1)
    message = str(caught.value)
    assert "\n" not in message and str(blocker) in message and "not a folder" in message, message


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_injected_no_space_is_one_line_and_the_previous_file_survives(tmp_path, monkeypatch, what):
    """The same promise where no tmpfs can be mounted: ENOSPC from every write call."""
    write, read = WRITERS[what]
    path = write(tmp_path, 1)
    before = sorted(p.name for p in tmp_path.iterdir())

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, NO_SPACE)

    real_open = open

    def open_full(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if any(m in mode for m in "wax"):
            handle.write = no_space
        return handle

    monkeypatch.setattr("builtins.open", open_full)
    with pytest.raises(AlexcError) as caught:
        write(tmp_path, 2)
    monkeypatch.undo()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and NO_SPACE in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert read(path) == 1


def test_training_onto_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    disk, tmp_path, run_cli
):
    graph_path = tmp_path / "tiny.yaml"
    graph_path.write_text(GRAPH)
    data = color_folder(tmp_path / "images", per_class=8)
    run = disk / "run"
    code, _, err = run_cli("train", graph_path, "--data", data, "--out", run, "--threads", "1")
    assert code == 0, err
    last = run / "last.safetensors"
    first = last.read_bytes()
    before = sorted(p.name for p in run.iterdir())
    fill(disk, leave=4096)  # room for a metrics line, not for a checkpoint
    code, _, err = run_cli(
        "train", graph_path, "--data", data, "--out", run, "--threads", "1",
        "--epochs", "2", "--resume", last,
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert str(last) in lines[0] and NO_SPACE in lines[0], lines[0]
    assert last.read_bytes() == first and read_checkpoint(last)[2]["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == before
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records][:2] == ["start", "epoch"]
