"""Training: the graph file's `train:` recipe (CLI flags override it), SGD, validation,
checkpoints that survive any crash, and exact resume.

Determinism: the data order and augmentation are keyed by (seed, epoch, sample), the dropout
masks of step s by (seed, s, row of the batch), and checkpoints hold the exact float32 weights,
momentum and schedule state, so a resumed run continues bit for bit (with one thread; more
threads keep BLAS's summation order fixed per run but not across thread counts). Under MPI
(alexc.distributed) the ranks split each batch and compute the same training up to float
summation order.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from alexc_runtime.sample_rng import SampleRng

from ..errors import AlexcError, CheckpointError, SectionError, is_int, is_number
from ..files import os_reason
from ..ir import Graph, init_param
from ..ir.graph import check_params, with_classes
from ..passes.compile import compile
from .checkpoint import read_checkpoint, save_checkpoint
from .distributed import Single, batch_share, process_ranks
from .memory import check_fits
from .optim import SGD, Schedule

TRAIN_KEYS = (
    "batch_size",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "optimizer",
)


VAL_BATCH = 256  # validation batches are at least this large: inference needs less memory


@dataclass
class Recipe:
    batch_size: int = 128
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    schedule: object = None
    label_smoothing: float = 0.0

    @classmethod
    def from_section(cls, section: Mapping) -> Recipe:
        """A graph file's `train:` section, every value checked (SectionError names the key)."""
        section = dict(section)
        unknown = sorted(str(k) for k in section if k not in TRAIN_KEYS)
        if unknown:
            raise SectionError(
                "train", unknown[0], f"unknown key '{unknown[0]}' (known: {', '.join(TRAIN_KEYS)})"
            )
        if section.pop("optimizer", "sgd") != "sgd":
            raise SectionError("train", "optimizer", "optimizer must be sgd")
        recipe = cls(**section)
        recipe.check()
        return recipe

    @classmethod
    def from_graph(cls, graph: Graph, **overrides) -> Recipe:
        """The graph file's `train:` section, with non-None overrides on top."""
        recipe = cls.from_section(graph.train)
        for k, v in overrides.items():
            if v is not None:
                setattr(recipe, k, v)
        recipe.check()
        return recipe

    def check(self) -> None:
        """Refuse values training cannot use, naming the key and what it takes."""
        for key, ok, want in (
            ("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("epochs", is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("lr", is_number(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", is_number(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            (
                "weight_decay",
                is_number(self.weight_decay) and self.weight_decay >= 0,
                "a number >= 0",
            ),
            (
                "label_smoothing",
                is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                "a number in [0, 1)",
            ),
        ):
            if not ok:
                raise SectionError(
                    "train", key, f"{key} must be {want}, got {getattr(self, key)!r}"
                )
        Schedule(self.schedule, self.lr)  # validates the schedule now, not epochs later


@dataclass
class RunState:
    """Where a run stands: saved in every checkpoint's metadata."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken
    best_top1: float = -1.0
    schedule: dict = field(default_factory=dict)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def evaluate(
    predictor,
    loader,
    crops: int = 1,
    limit_batches: int | None = None,
    ranks: Single = Single(),
    confusion: bool = False,
) -> dict:
    """Top-1, top-5 and mean loss of a predictor (either executor's `.predict(x)`) over every
    batch of `loader` (under MPI: of every rank's share of them, the counts summed); with
    `confusion`, also the counts of (true class, top-1 class) pairs as a nested list under
    "confusion" (rows: true class).

    With `crops` > 1 the loader yields that many crops per image, in consecutive rows, and
    the prediction is the mean of their softmax (the paper's 10-crop evaluation)."""
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    counts = None
    for i, (x, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        logp = log_softmax(predictor.predict(x))
        if crops > 1:
            logp = np.log(np.exp(logp).reshape(len(y), crops, -1).mean(axis=1))
        logits = logp
        loss_sum += float(-logp[np.arange(len(y)), y].sum())
        correct1 += topk_correct(logits, y, 1)
        correct5 += topk_correct(logits, y, 5)
        n += len(y)
        if confusion:
            if counts is None:
                counts = np.zeros((logits.shape[1], logits.shape[1]), np.int64)
            # The same call as topk_correct's, so ties break alike and the trace is top-1.
            np.add.at(counts, (y, np.argpartition(-logits, 0, axis=1)[:, 0]), 1)
    correct1, correct5, loss_sum, n = ranks.sum([correct1, correct5, loss_sum, n])
    n = int(n)
    if confusion and counts is not None:
        counts = ranks.sum(counts.ravel()).reshape(counts.shape).astype(np.int64)
    if n == 0:
        raise AlexcError("the validation set is empty")
    result = {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "images": n}
    if confusion:
        result["confusion"] = counts.tolist()
    return result


def adapt_graph(graph: Graph, classes: list[str]) -> Graph:
    """Size the last linear layer to the data's classes and record their names."""
    if graph.shapes[graph.outputs[0]] != (len(classes),) or graph.classes != tuple(classes):
        graph = with_classes(graph, len(classes), classes)
    return graph


def training_data(graph: Graph, data: str):
    """The training split of `data`, `graph` sized to its classes, and the graph's augmentation:
    (source, graph, augment), as `alexc train` (and `alexc bench --data`) build them.

    The split's seed is not the run's: every run holds out the same validation images."""
    from ..data import Augment, open_source

    source = open_source(data, split="train", channels=graph.input.shape[0])
    graph = adapt_graph(graph, list(source.classes))
    return source, graph, Augment.from_config(graph.data, graph.input.shape)


def training_loader(
    source, augment, batch_size: int, seed: int, workers: int, epoch=0, start=0, part=(0, 1)
):
    """The loader of one training epoch (shuffled, augmented, prefetched by `workers` threads;
    `part`: this rank's share of each batch)."""
    from ..data import Loader

    return Loader(
        source,
        augment,
        batch_size=batch_size,
        train=True,
        seed=seed,
        epoch=epoch,
        start_batch=start,
        workers=workers,
        part=part,
    )


def training_need(graph: Graph, workers: int, prefetch: int = 4):
    """Planned peak bytes of training at batch size b: the training step with its momentum
    buffers, or validation (at batch max(b, 256)), whichever is larger, and the batches the
    loader holds ready."""
    from .memory import input_bytes, plan_peak

    momentum = sum(math.prod(p.shape) for p in graph.params) * 4
    held = prefetch + workers

    def need(b: int) -> int:
        val = max(b, VAL_BATCH)
        return max(
            plan_peak(graph, b, training=True) + momentum + held * input_bytes(graph, b),
            plan_peak(graph, val, training=False) + held * input_bytes(graph, val),
        )

    return need


def initial_params(graph: Graph, seed: int, init_weights: str | None, notice) -> dict:
    """Fresh parameters, or pretrained ones with mismatched tensors re-initialised."""
    params = graph.init_params(seed)
    if init_weights is None:
        return params
    loaded, _, _ = read_checkpoint(init_weights)
    fresh = []
    for p in graph.params:
        value = loaded.get(p.name)
        if value is not None and tuple(value.shape) == p.shape:
            params[p.name] = np.ascontiguousarray(value, dtype=np.float32)
        else:
            fresh.append(p.name)
            params[p.name] = init_param(p, seed)
    if len(fresh) == len(graph.params):
        raise CheckpointError(f"{init_weights}: no tensor fits graph '{graph.name}'")
    if fresh:
        notice(
            f"re-initialised {len(fresh)} tensor(s) whose shape differs or that are missing in "
            f"{init_weights}: {', '.join(fresh)}"
        )
    return params


class MetricsLog:
    """Appends one JSON object per line; flushed per line so a killed run keeps its log.

    A line that cannot be written (a full disk) is one AlexcError naming the file; a torn last
    line is what `load_run_metrics` ignores."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = open(path, "a", buffering=1)  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise self._error(e) from None

    def write(self, **record):
        try:
            self.file.write(json.dumps(record) + "\n")
        except OSError as e:
            raise self._error(e) from None

    def close(self):
        try:
            self.file.close()
        except OSError:  # the unwritten rest of a line that already failed: reported then
            pass

    def _error(self, e: OSError) -> AlexcError:
        return AlexcError(f"{self.path}: cannot write the metrics log ({os_reason(self.path, e)})")


def train(
    graph: Graph,
    *,
    data: str = "fashion-mnist",
    out: str | Path = "runs/latest",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    threads: int = 2,
    seed: int = 0,
    resume: str | Path | None = None,
    init_weights: str | Path | None = None,
    checkpoint_every: int | None = None,
    workers: int = 2,
    limit_batches: int | None = None,
    console=None,
    ranks: Single | None = None,
) -> dict:
    """Train `graph` and return the final metrics; see `alexc train --help` for the options.

    Writes RUN_DIR/metrics.jsonl, RUN_DIR/last.safetensors (every `checkpoint_every` steps and
    each epoch) and RUN_DIR/best.safetensors (best validation top-1). Under MPI (`ranks`,
    default: this process's), each rank trains on its share of every batch and rank 0 alone
    writes files and prints."""
    from ..data import Loader, open_source

    ranks = ranks or process_ranks()
    # Plain text: paths and error messages may hold [brackets], which rich reads as markup.
    say = (lambda text: console.print(text, markup=False)) if console is not None else print
    if not ranks.lead:
        console, say = None, _silent
    recipe = Recipe.from_graph(graph, epochs=epochs, batch_size=batch_size, lr=lr)
    if recipe.batch_size < ranks.size:
        raise AlexcError(
            f"train: the batch size ({recipe.batch_size}) is smaller than the number of ranks "
            f"({ranks.size}): every rank needs at least one image of each batch"
        )
    out = Path(out)
    try:
        if ranks.lead:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AlexcError(f"{out}: cannot create the run directory ({os_reason(out, e)})") from None

    resumed = read_checkpoint(resume) if resume is not None else None
    if resumed is not None:
        seed = resumed[2].get("seed", seed)  # the data order depends on it
    train_src, graph, augment = training_data(graph, data)
    val_src = open_source(data, split="val", channels=graph.input.shape[0])
    ranks.check_same(
        _run_settings(graph, data, train_src, recipe, seed, resume, init_weights)
        | {"checkpoint_every": checkpoint_every, "limit_batches": limit_batches}
    )
    check_fits(training_need(graph, workers), recipe.batch_size, f"alexc train {graph.name}")

    state = RunState()
    momentum = None
    if resumed is not None:
        loaded, momentum, meta = resumed
        if meta.get("graph") != graph.fingerprint():
            raise CheckpointError(
                f"{resume}: was written for another graph (or other classes); "
                "resume needs the same graph file and data"
            )
        params = check_params(loaded, graph, str(resume))
        state = RunState(**meta["state"])
        say(
            f"resuming from {resume}: epoch {state.epoch + 1}, batch {state.batch}, "
            f"step {state.step}"
        )
    else:
        params = initial_params(graph, seed, init_weights, say)

    schedule = Schedule(recipe.schedule, recipe.lr, state.schedule or None, recipe.epochs)
    sgd = SGD(params, recipe.momentum, recipe.weight_decay, momentum, threads=threads)
    executor = compile(
        graph, recipe.batch_size, threads=threads, seed=seed, label_smoothing=recipe.label_smoothing
    )
    log = MetricsLog(out / "metrics.jsonl") if ranks.lead else _NoLog()
    averager = ranks.averager()
    log.write(
        event="start",
        graph=graph.name,
        data=str(data),
        recipe=asdict(recipe),
        seed=seed,
        threads=threads,
        train_images=len(train_src),
        val_images=len(val_src),
    )
    skips = _SkipReport(train_src, val_src, say=say)
    chance = _ChanceWatch(graph.shapes[graph.outputs[0]][0])

    last = out / "last.safetensors"

    def diverged(what: str) -> AlexcError:
        kept = f"{last} keeps the last good weights" if last.exists() else "no checkpoint was kept"
        log.write(event="diverged", epoch=state.epoch + 1, step=state.step, what=what)
        return AlexcError(
            f"training diverged: {what} at epoch {state.epoch + 1}, step "
            f"{state.step}; stopped, {kept} (try a lower --lr)"
        )

    def checkpoint(path: Path):
        if not all(np.isfinite(v).all() for v in params.values()):
            raise diverged("the weights are no longer finite")
        meta = {
            "state": asdict(state) | {"schedule": schedule.state()},
            "seed": seed,
            "graph": graph.fingerprint(),
            "graph_name": graph.name,
            "classes": list(graph.classes or []),
            "lr": lr_now,
            "epoch": state.epoch,
            "step": state.step,
            "recipe": asdict(recipe),
            "input_shape": list(graph.input.shape),
            "data": dict(graph.data),
        }
        if ranks.lead:
            save_checkpoint(path, params, momentum=sgd.buffers, meta=meta)

    final = {}
    lr_now = schedule.lr(state.epoch)
    started = time.perf_counter()
    updating = False
    sigint = _DeferredInterrupt(ranks.stop_signals)
    try:
        while state.epoch < recipe.epochs:
            epoch = state.epoch
            loader = training_loader(
                train_src, augment, recipe.batch_size, seed, workers, epoch, state.batch, ranks.part
            )
            total = loader.batches_per_epoch
            if limit_batches is not None:
                total = min(total, limit_batches)
            seen = correct = 0
            loss_sum = 0.0
            t0 = time.perf_counter()
            with (
                loader,
                _progress(console, f"epoch {epoch + 1}/{recipe.epochs}", total, state.batch) as bar,
            ):
                for x, y in loader:
                    if state.batch >= total:
                        break
                    lr_now = schedule.lr(epoch, state.batch, total)
                    loss, global_correct, global_n, grads = rank_step(
                        executor, params, x, y, seed, state.step, recipe.batch_size, ranks, averager
                    )
                    if not math.isfinite(loss):
                        raise diverged(f"the loss became {loss}")
                    updating = True  # an interrupt now would leave a half-applied update
                    sgd.step(params, grads, lr_now)
                    state.step += 1
                    state.batch += 1
                    updating = False
                    seen += global_n
                    loss_sum += loss * global_n
                    correct += global_correct
                    chance.add(loss * global_n, global_correct, global_n)
                    elapsed = time.perf_counter() - t0
                    bar(
                        loss=loss_sum / seen,
                        accuracy=correct / seen,
                        images_per_s=seen / max(elapsed, 1e-9),
                    )
                    if checkpoint_every and state.step % checkpoint_every == 0:
                        checkpoint(last)
                    if state.step % 50 == 0:
                        log.write(
                            event="step",
                            epoch=epoch + 1,
                            step=state.step,
                            lr=lr_now,
                            loss=loss,
                            images_per_s=seen / max(elapsed, 1e-9),
                        )
                    if ranks.any(sigint.requested):  # every rank stops after the same step
                        raise KeyboardInterrupt
            train_time = time.perf_counter() - t0
            stuck = chance.verdict()
            if stuck:
                log.write(event="stuck", epoch=epoch + 1, step=state.step, **stuck)
                say(
                    f"epoch {epoch + 1}, step {state.step}: the training loss has stayed at "
                    f"chance ({stuck['loss']:.4f}, ln({chance.classes}) = "
                    f"{math.log(chance.classes):.4f}; top-1 {stuck['top1']:.3f}) over the last "
                    f"{stuck['steps']} steps: the network is not learning; try a lower --lr, a "
                    "warm-up (train.schedule: {cosine: {warmup: 1}}) or another init"
                )
            val_loader = Loader(
                val_src,
                augment,
                batch_size=max(recipe.batch_size, VAL_BATCH),
                train=False,
                seed=seed,
                workers=workers,
                part=ranks.part,
            )
            with val_loader:
                val = evaluate(
                    executor.predictor(params),
                    val_loader,
                    crops=augment.crops_per_image(train=False),
                    limit_batches=limit_batches,
                    ranks=ranks,
                )
            ranks.check_identical(params, state.step)
            schedule.end_epoch(val["top1"])
            state.epoch += 1
            state.batch = 0
            improved = val["top1"] > state.best_top1
            if improved:
                state.best_top1 = val["top1"]
            checkpoint(last)
            if improved:
                checkpoint(out / "best.safetensors")
            record = {
                "event": "epoch",
                "epoch": epoch + 1,
                "step": state.step,
                "lr": schedule.lr(epoch, 0, total),  # at the epoch's first step
                "train_loss": loss_sum / max(seen, 1),
                "train_top1": correct / max(seen, 1),
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "val_loss": val["loss"],
                "images_per_s": seen / max(train_time, 1e-9),
                "epoch_seconds": train_time,
                "elapsed_seconds": time.perf_counter() - started,
                "skipped": skips.count(),
            }
            log.write(**record)
            say(
                f"epoch {epoch + 1}/{recipe.epochs}: train loss {record['train_loss']:.4f}, "
                f"val top-1 {val['top1']:.4f}, top-5 {val['top5']:.4f}, "
                f"{record['images_per_s']:.0f} img/s, {train_time:.0f} s"
            )
            skips.tell()
            final = record
    except KeyboardInterrupt:
        log.write(event="interrupted", epoch=state.epoch + 1, step=state.step)
        if updating:
            say(f"interrupted during an update: {last} keeps the state of its last save")
        else:  # the arrays hold the state after the last completed step
            checkpoint(last)
            say(
                f"interrupted: saved {last} (epoch {state.epoch + 1}, step {state.step}); "
                f"continue with --resume {last}"
            )
        raise
    finally:
        sigint.restore()
        log.close()
        executor.close()
        if averager is not None:
            averager.close()
    return final | {"run_dir": str(out), "seconds": time.perf_counter() - started}


class _SkipReport:
    """Counts the images the sources skipped as unreadable, and says when that number grows."""

    def __init__(self, *sources, say):
        self.sources, self.say, self.told = sources, say, 0

    def count(self) -> int:
        return sum(len(getattr(source, "skipped", ())) for source in self.sources)

    def tell(self) -> None:
        count = self.count()
        if count > self.told:
            where, why = next(s for src in self.sources for s in getattr(src, "skipped", ()))
            self.say(
                f"skipped {count} unreadable image(s) so far ({count - self.told} new), "
                f"e.g. {where}: {why}"
            )
            self.told = count


class _ChanceWatch:
    """Tells whether the last steps of an epoch stayed at chance: a mean loss within 1% of
    ln(classes) (the loss of the uniform prediction) with chance-level top-1."""

    WINDOW = 50  # steps

    def __init__(self, classes: int):
        self.classes = max(classes, 2)
        self.losses, self.correct, self.seen = [], [], []

    def add(self, loss_sum: float, correct: int, seen: int) -> None:
        """One step: its summed loss, top-1 hits and images (the global batch's, under MPI)."""
        for buf, value in ((self.losses, loss_sum), (self.correct, correct), (self.seen, seen)):
            buf.append(value)
            del buf[: -self.WINDOW]

    def verdict(self) -> dict | None:
        """The window's loss, top-1 and length if it was stuck at chance, else None; resets."""
        seen = sum(self.seen)
        if not seen:
            return None
        loss, top1 = sum(self.losses) / seen, sum(self.correct) / seen
        steps = len(self.seen)
        self.losses, self.correct, self.seen = [], [], []
        at_chance = abs(loss - math.log(self.classes)) < 0.01 * math.log(self.classes)
        if at_chance and top1 < 2 / self.classes:
            return {"loss": loss, "top1": top1, "steps": steps}
        return None


def rank_step(executor, params, x, y, seed: int, step: int, batch_size: int, ranks, averager):
    """Forward and backward of this rank's share (x, y) of global batch `step`: (the global
    batch's mean loss, its top-1 hits, its images, the gradients of its mean loss).

    Dropout masks are keyed by (seed, step, row of the global batch), so any number of ranks
    draws the masks of a single process."""
    n = int(ranks.sum([len(y)])[0])  # less than batch_size if images failed to decode
    rng = SampleRng([seed, step], first_sample=batch_share(batch_size, *ranks.part).start)
    if averager is not None:
        averager.start_step()
    with np.errstate(over="ignore", invalid="ignore"):  # divergence: the caller checks
        loss, logits, grads = executor.train_step(
            params,
            x,
            y,
            train=True,
            rng=rng,
            loss_scale=len(y) / n,
            on_grad=averager.add if averager is not None else None,
        )
    correct = topk_correct(logits, y, 1)
    if averager is None:
        return loss, correct, n, grads
    grads = averager.finish()
    loss_sum, correct = ranks.sum([loss * len(y), correct])
    return loss_sum / n, int(correct), n, grads


def _run_settings(graph, data, source, recipe, seed, resume, init_weights) -> dict:
    """What every rank of one run must agree on (threads and workers may differ per rank)."""
    return {
        "graph": graph.fingerprint(),
        "data section": dict(graph.data),
        "data": str(data),
        "images": [len(source), zlib.crc32(np.ascontiguousarray(source.labels).view(np.uint8))],
        "recipe": asdict(recipe),
        "seed": seed,
        "resume": str(resume),
        "init_weights": str(init_weights),
    }


def _silent(*args, **kwargs) -> None:
    """`say` on ranks other than 0."""


class _NoLog:
    """The metrics log of ranks other than 0."""

    def write(self, **record):
        pass

    def close(self):
        pass


class _DeferredInterrupt:
    """The first Ctrl-C (or another of `signals`) asks the loop to stop after the current step
    (which then saves); a second one interrupts at once. Only the main thread can install
    signal handlers."""

    def __init__(self, signals=(signal.SIGINT,)):
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for s, previous in self.previous.items():
            signal.signal(s, previous)


class _progress:
    """A progress bar on a terminal; silent elsewhere (per-epoch lines are printed anyway)."""

    def __init__(self, console, title: str, total: int, done: int):
        self.console, self.title, self.total, self.done = console, title, total, done
        self.bar = None

    def __enter__(self):
        if self.console is not None and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                self.title, total=self.total, completed=self.done, info=""
            )
        return self

    def __call__(self, loss: float, accuracy: float, images_per_s: float):
        if self.bar is not None:
            self.bar.update(
                self.task,
                advance=1,
                info=f"loss {loss:.4f}  acc {accuracy:.3f}  {images_per_s:,.0f} img/s",
            )

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def load_run_metrics(run_dir: str | Path) -> list[Mapping]:
    """The records of RUN_DIR/metrics.jsonl (a torn last line from a killed run is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise AlexcError(f"{run_dir}: no metrics.jsonl (is this a run directory of alexc train?)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
