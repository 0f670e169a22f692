"""Training over MPI: real ranks started by the MPI launcher (skipped, with the reason, only
where MPI cannot start), checked against one process; and the pieces it rests on (the batch
split, dropout masks keyed by sample, the executor's gradient hook), checked without MPI."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from alexc_runtime.sample_rng import SampleRng

import alexc
from alexc.data.loader import batch_share
from alexc.passes.compile import compile
from alexc.training.checkpoint import read_checkpoint
from alexc.training.distributed import Single, launch_command
from tests.helpers import GRAPHS, ROOT

TINY = """\
name: tiny
input: {name: image, shape: [1, 12, 12]}
nodes:
  - {name: conv1, op: conv, filters: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 2, stride: 2}
  - {name: flatten, op: flatten}
  - {name: fc6, op: linear, units: 32}
  - {name: relu6, op: relu}
  - {name: drop6, op: dropout, rate: 0.5}
  - {name: fc7, op: linear, units: 32}
  - {name: relu7, op: relu}
  - {name: drop7, op: dropout, rate: 0.5}
  - {name: fc8, op: linear, units: 10}
train: {batch_size: 10, epochs: 2, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
data: {flip: true, mean: [0.3], std: [0.35]}
"""
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'runtime'}"}


def write_idx(folder: Path, images: int, size: int, seed: int = 0) -> Path:
    """A Fashion-MNIST-shaped IDX folder (train and t10k) of random images whose label is
    learnable from their mean brightness."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", images), ("t10k", images // 4)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 120, (n, size, size)) + labels[:, None, None] * 12
        header = np.array([0x803, n, size, size], ">u4").tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + x.astype(np.uint8).tobytes())
        )
        header = np.array([0x801, n], ">u4").tobytes()
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(header + labels.tobytes())
        )
    return folder


@pytest.fixture(scope="module")
def mpi():
    """Skip unless 2 ranks start here; then the launcher prefix (command, env)."""
    probe = [sys.executable, "-c", "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"]
    try:
        command, env = launch_command(2, probe)
    except alexc.AlexcError as e:
        pytest.skip(f"MPI is not installed: {e}")
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("MPI did not start 2 ranks within 600 s")
    if done.stdout.split() != ["2", "2"]:
        pytest.skip(f"MPI cannot start 2 ranks here: {(done.stderr or done.stdout)[-300:]}")
    return command[: -len(probe)], env


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def idx(tmp_path):
    return write_idx(tmp_path / "idx", 400, 12)


def alexc_cmd(*args, ranks=1):
    cmd = [sys.executable, "-m", "alexc", *map(str, args)]
    return cmd + ["--ranks", str(ranks)] if ranks > 1 else cmd


def run(cmd, timeout=600):  # generous: the machine may be loaded; a hang still ends
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "last.safetensors")[0]


# --- without MPI ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, ranks", [(128, 2), (10, 3), (7, 7), (5, 1)])
def test_batch_shares_cover_the_batch_in_order(n, ranks):
    rows = np.concatenate([np.arange(n)[batch_share(n, r, ranks)] for r in range(ranks)])
    assert rows.tolist() == list(range(n))
    sizes = [len(range(n)[batch_share(n, r, ranks)]) for r in range(ranks)]
    assert max(sizes) - min(sizes) <= 1


def test_dropout_rows_do_not_depend_on_how_the_batch_is_split():
    whole = SampleRng([3, 7]).random((10, 6), dtype=np.float32)
    again = SampleRng([3, 7]).random((10, 6), dtype=np.float32)
    head = SampleRng([3, 7], first_sample=0).random((4, 6), dtype=np.float32)
    tail = SampleRng([3, 7], first_sample=4).random((6, 6), dtype=np.float32)
    np.testing.assert_array_equal(np.concatenate([head, tail]), whole)
    np.testing.assert_array_equal(again, whole)
    two = SampleRng([3, 7])
    first, second = two.random((10, 6)), two.random((10, 6))
    assert not np.array_equal(first, second)  # two dropout layers get different masks
    assert not np.array_equal(SampleRng([3, 8]).random((10, 6), dtype=np.float32), whole)


def test_executor_reports_each_gradient_once_when_final_last_layer_first():
    graph = alexc.load_graph(GRAPHS / "alexnet-mini.yaml")
    params = graph.init_params(0)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    y = np.array([1, 2, 3, 4])
    exe = compile(graph, 4)
    seen = []

    def on_grad(name, grad):
        seen.append((name, grad.copy()))

    _, grads = exe.loss_and_grads(params, x, y, train=False)
    _, _, hooked = exe.train_step(params, x, y, train=False, on_grad=on_grad)
    assert sorted(name for name, _ in seen) == sorted(params)
    assert seen[0][0].startswith("fc8")
    for name, at_report in seen:  # never written again after it was reported
        np.testing.assert_array_equal(at_report, hooked[name])
        np.testing.assert_array_equal(at_report, grads[name])


def test_missing_mpi_is_one_line_with_the_install_command(tiny, run_cli, monkeypatch):
    import alexc.training.distributed as distributed

    monkeypatch.setattr(distributed, "_launcher", lambda: None)
    code, _, err = run_cli("train", tiny, "--ranks", "2")
    assert code == 1 and err.count("\n") == 1 and ".[mpi]" in err, err
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_process_ranks", None)
    code, _, err = run_cli("train", tiny)
    assert code == 1 and err.count("\n") == 1 and ".[mpi]" in err, err


# --- real ranks -----------------------------------------------------------------------------


def test_two_ranks_train_alexnet_mini_as_one_process_does(mpi, tmp_path):
    """4 steps, global batch 32 (so 16 rows per rank), then validation. (The mini net has no
    dropout; masks across ranks are checked with TINY's, 3 ranks on an uneven batch, below.)

    Not more steps: training on random images is chaotic, and float32 rounding that differs
    with how a batch is split grows about 2x per step. After 20 steps one process that splits
    its own batch in two halves differs from itself by up to 9% (3x3 conv1, no MPI involved),
    so the comparison would measure the chaos, not the ranks."""
    data = write_idx(tmp_path / "idx28", 712, 28)  # 641 train (20 batches of 32), 71 val
    common = ["--data", data, "-b", "32", "--epochs", "1", "--threads", "1", "--lr", "0.02"]
    common += ["--limit-batches", "4"]
    one = run(alexc_cmd("train", GRAPHS / "alexnet-mini.yaml", *common, "-o", tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = alexc_cmd("train", GRAPHS / "alexnet-mini.yaml", *common, "-o", tmp_path / "two")
    two = run(two + ["--ranks", "2"])
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("done in") == 1  # rank 0 alone prints
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    last = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()][-1]
    last2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()][-1]
    assert last["step"] == last2["step"] == 4
    assert last2["train_loss"] == pytest.approx(last["train_loss"], rel=1e-5)
    assert last2["val_top1"] == pytest.approx(last["val_top1"], abs=1 / 71)  # one image


def test_resume_across_rank_counts(mpi, tiny, idx, tmp_path):
    common = ["--data", idx, "--threads", "1", "--limit-batches", "8"]
    straight = run(alexc_cmd("train", tiny, *common, "-o", tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    for name, first, then in (("b", 1, 2), ("c", 2, 1)):
        out = tmp_path / name
        done = run(alexc_cmd("train", tiny, *common, "--epochs", "1", "-o", out, ranks=first))
        assert done.returncode == 0, done.stderr
        resumed = alexc_cmd(
            "train", tiny, *common, "-o", out, "--resume", out / "last.safetensors", ranks=then
        )
        done = run(resumed)
        assert done.returncode == 0, done.stderr
        assert read_checkpoint(out / "last.safetensors")[2]["step"] == 16
        a, b = weights(tmp_path / "a"), weights(out)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=key)


EVERY_RANK_WRITES = """\
import sys
from pathlib import Path

from mpi4py import MPI

import alexc
from alexc.training.distributed import GradientAverager, Ranks
from alexc.errors import AlexcError
from alexc.training.loop import train


class Nudged(GradientAverager):
    def finish(self):
        grads = super().finish()
        if self.comm.Get_rank() == 1:  # a rank that computes something else
            grads["fc8.bias"][0] += 1e-3
        return grads


class EveryRankWrites(Ranks):
    lead = True

    def averager(self):
        return (Nudged if sys.argv[3] == "nudge" else GradientAverager)(self.comm)


ranks = EveryRankWrites(MPI.COMM_WORLD)
out = Path(sys.argv[2]) / f"rank{ranks.rank}"
try:
    train(alexc.load_graph(sys.argv[1]), data=sys.argv[4], out=out, threads=1, epochs=1,
          limit_batches=6, ranks=ranks)
except AlexcError as e:
    print(f"rank {ranks.rank}: {e}", flush=True)
"""


def test_parameters_stay_bitwise_identical_across_ranks(mpi, tiny, idx, tmp_path):
    launcher, env = mpi
    script = tmp_path / "every_rank.py"
    script.write_text(EVERY_RANK_WRITES)
    cmd = [*launcher, sys.executable, script, tiny, tmp_path, "same", idx]
    done = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a, b = weights(tmp_path / "rank0"), weights(tmp_path / "rank1")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    start = alexc.load_graph(tiny).init_params(0)
    assert all(not np.array_equal(a[k], start[k]) for k in a)  # they did train


def test_ranks_that_drift_apart_are_stopped(mpi, tiny, idx, tmp_path):
    launcher, env = mpi
    script = tmp_path / "every_rank.py"
    script.write_text(EVERY_RANK_WRITES)
    cmd = [*launcher, sys.executable, script, tiny, tmp_path, "nudge", idx]
    done = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=600)
    assert "after step 6 the parameters of rank 1 differ from rank 0's" in done.stdout, done


def test_ranks_launched_with_different_settings_are_refused(mpi, tiny, idx, tmp_path):
    launcher, env = mpi
    launcher = [a for a in launcher if a not in ("-n", "2")]
    base = alexc_cmd("train", tiny, "--data", idx, "--limit-batches", "2", "-o", tmp_path / "r")
    cmd = [*launcher, "-n", "1", *base, "--lr", "0.1", ":", "-n", "1", *base, "--lr", "0.2"]
    done = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: rank 1 was started with another recipe than rank 0: launch every rank with "
        "the same graph file, data and flags"
    ], done.stderr
    assert not (tmp_path / "r" / "last.safetensors").exists()


RAISING_RANK = """\
import sys
import time

import alexc.training.distributed as distributed
from alexc.cli import main
from alexc.errors import AlexcError

finish = distributed.GradientAverager.finish
calls = []


def failing_finish(self):
    calls.append(1)
    if self.comm.Get_rank() == 1 and len(calls) == 3:
        print(f"raising at {time.time()}", flush=True)
        raise AlexcError("the disk is full")
    return finish(self)


distributed.GradientAverager.finish = failing_finish
sys.argv = ["alexc", *sys.argv[1:]]
main()
"""


def test_a_rank_that_raises_stops_every_rank(mpi, tiny, idx, tmp_path):
    launcher, env = mpi
    script = tmp_path / "raising.py"
    script.write_text(RAISING_RANK)
    args = ["train", tiny, "--data", idx, "-o", tmp_path / "r", "--threads", "1"]
    done = subprocess.run(
        list(map(str, [*launcher, sys.executable, script, *args])),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    raised = float(done.stdout.split("raising at ")[1].split()[0])
    assert done.returncode != 0 and time.time() - raised < 30
    assert "error: rank 1 of 2: the disk is full" in done.stderr, done.stderr


def test_a_killed_rank_stops_the_others_and_the_checkpoint_resumes(mpi, tiny, tmp_path):
    data = write_idx(tmp_path / "big", 4000, 12)
    tag = f"alexc-test-{os.getpid()}-{time.monotonic_ns()}"
    common = ["--data", data, "--threads", "1", "-o", tmp_path / "r", "--checkpoint-every", "1"]
    cmd = alexc_cmd("train", tiny, *common, "--epochs", "1", ranks=2)
    proc = subprocess.Popen(
        cmd, env={**ENV, "ALEXC_TEST_TAG": tag}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    checkpoint = tmp_path / "r" / "last.safetensors"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = [pid for pid in _pids_with(f"ALEXC_TEST_TAG={tag}") if _rank(pid) == "1"]
    assert len(rank1) == 1, "rank 1 not found"
    os.kill(rank1[0], signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and time.monotonic() - killed < 30
    assert "rank 1" in err.decode()
    assert read_checkpoint(checkpoint)[2]["step"] >= 1
    resumed = run(alexc_cmd("train", tiny, *common, "--epochs", "1", "--resume", checkpoint))
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(checkpoint)[2]["epoch"] == 1


def _pids_with(variable: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and variable.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _rank(pid: int) -> str | None:
    for item in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
        if item.startswith(b"OMPI_COMM_WORLD_RANK=") or item.startswith(b"PMI_RANK="):
            return item.split(b"=", 1)[1].decode()
    return None


def test_eval_over_two_ranks_counts_every_image_once(mpi, tiny, idx, tmp_path):
    trained = run(alexc_cmd("train", tiny, "--data", idx, "--epochs", "1", "-o", tmp_path / "r"))
    assert trained.returncode == 0, trained.stderr
    launcher, env = mpi
    args = ["eval", tiny, "-w", tmp_path / "r" / "last.safetensors", "--data", idx, "--json"]
    one = run(alexc_cmd(*args, "-b", "7"))
    two = subprocess.run(
        list(map(str, [*launcher, *alexc_cmd(*args, "-b", "7")])),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # rank 0 alone prints
    assert a["images"] == b["images"] == 100
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


@pytest.mark.parametrize(
    "inherited", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "background"]
)
def test_ctrl_c_on_the_launcher_saves_and_the_run_resumes(mpi, tiny, tmp_path, inherited):
    """From a terminal, and from a process that ignores SIGINT (a background job of a shell
    without job control, such as `cmd &` in a script), whose children inherit the ignoring: a
    single run saves on SIGINT either way, and so must the launcher of ranks."""
    data = write_idx(tmp_path / "big", 4000, 12)
    common = ["--data", data, "--threads", "1", "-o", tmp_path / "r", "--epochs", "1"]
    proc = subprocess.Popen(
        alexc_cmd("train", tiny, *common, "--checkpoint-every", "5", ranks=2),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: what a terminal's Ctrl-C signals
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    deadline = time.monotonic() + 600
    while not (tmp_path / "r" / "last.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert out.count("interrupted: saved") == 1, out
    step = read_checkpoint(tmp_path / "r" / "last.safetensors")[2]["step"]
    log = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert log[-1] == {"event": "interrupted", "epoch": 1, "step": step}
    resumed = run(alexc_cmd("train", tiny, *common, "--resume", tmp_path / "r/last.safetensors"))
    assert resumed.returncode == 0, resumed.stderr


def test_three_ranks_split_an_uneven_batch_as_one_process_does(mpi, tiny, idx, tmp_path):
    """Batch 10 over 3 ranks: 4 + 3 + 3 rows."""
    common = ["--data", idx, "--threads", "1", "--limit-batches", "6", "--epochs", "1"]
    one = run(alexc_cmd("train", tiny, *common, "-o", tmp_path / "one"))
    three = run(alexc_cmd("train", tiny, *common, "-o", tmp_path / "three", ranks=3))
    assert one.returncode == 0 and three.returncode == 0, three.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "three")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_scaling_model_against_a_hand_calculation():
    from alexc.bench.mpi import predict_step_ms

    stretches = [  # backward order: an FC layer's gradient first, then a conv's, then SGD
        {
            "node": "fc",
            "op": "linear",
            "forward_ms": 1,
            "backward_ms": 2,
            "bytes": 100e6,
            "units": 1000,
        },
        {"node": "conv", "op": "conv", "forward_ms": 3, "backward_ms": 4, "bytes": 1e6},
        {"node": "sgd update", "op": "sgd", "forward_ms": 0, "backward_ms": 10, "bytes": 0},
    ]
    link = (1e9, 0.0)  # 1 GB/s, no latency
    # One rank: all compute at the measured batch, no communication.
    assert predict_step_ms(stretches, 8, 8, 1, link, False) == pytest.approx(1 + 2 + 3 + 4 + 10)
    # Two ranks, data parallel: half the compute; the FC gradient (100 MB, ring: 2 * 1/2 of it
    # at 1 GB/s = 100 ms) leaves after 1 ms of backward, the conv's (1 ms) after it.
    assert predict_step_ms(stretches, 8, 8, 2, link, False) == pytest.approx(2 + 102 + 10)
    # Hybrid: the FC input (8 rows x 25,000 features x 4 bytes) is all-gathered forward and
    # reduce-scattered backward (0.4 ms each); only the conv gradient is allreduced, after
    # 1 ms of FC and 2 ms of conv backward; half the FC update.
    hybrid = 2 + 0.8 + (1 + 2 + 1) + 10 * (1e6 + 50e6) / 101e6
    assert predict_step_ms(stretches, 8, 8, 2, link, True) == pytest.approx(hybrid)


def test_bench_ranks_and_scaling_tables(mpi, tiny):
    done = run(
        alexc_cmd(
            "bench",
            tiny,
            "--ranks",
            "2",
            "--transports",
            "shm",
            "-b",
            "8",
            "-r",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--scaling",
        )
    )
    assert done.returncode == 0, done.stderr
    for row in ("2 x 1", "1 x 2", "10 Gbit/s, data parallel", "100 Gbit/s, hybrid"):
        assert row in done.stdout, done.stdout
    assert "10 Gbit/s, hybrid: images/s peak at" in done.stdout


class _RecordingRanks(Single):
    """One process that records the collective sums it is asked for: every rank must make the
    same calls with the same sizes, or MPI's allreduce waits forever."""

    def __init__(self):
        self.sums = []

    def sum(self, values):
        values = np.asarray(values, np.float64)
        self.sums.append(values.shape)
        return values


class _Uniform:
    def __init__(self, classes):
        self.classes = classes

    def predict(self, x):
        return np.zeros((len(x), self.classes), np.float32)


def test_eval_makes_the_same_collective_calls_on_a_rank_that_sees_no_image():
    from alexc.training.evaluate import evaluate

    images = [(np.zeros((4, 1, 2, 2), np.float32), np.array([0, 1, 2, 1]))]
    busy, idle = _RecordingRanks(), _RecordingRanks()
    result = evaluate(_Uniform(3), images, ranks=busy, confusion=True, classes=3)
    with pytest.raises(alexc.AlexcError, match="empty"):  # one rank alone: nothing summed in
        evaluate(_Uniform(3), [], ranks=idle, confusion=True, classes=3)
    assert idle.sums == busy.sums
    assert np.array(result["confusion"]).sum() == 4
