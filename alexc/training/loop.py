"""The training loop: `train()` runs the recipe (recipe.py) with SGD (optim.py), validates
(evaluate.py), writes checkpoints that survive any crash (checkpoint.py) and the metrics log
(metrics.py), and resumes exactly.

Determinism: the data order and augmentation are keyed by (seed, epoch, sample), the dropout
masks of step s by (seed, s, row of the batch), and checkpoints hold the exact float32 weights,
momentum and schedule state, so a resumed run continues bit for bit (with one thread; more
threads keep BLAS's summation order fixed per run but not across thread counts). Under MPI
(alexc.training.distributed) the ranks split each batch and compute the same training up to float
summation order.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from alexc_runtime.sample_rng import SampleRng

from ..data.loader import batch_share
from ..errors import AlexcError, CheckpointError
from ..files import os_reason
from ..ir import Graph, init_param
from ..ir.graph import check_params, with_classes
from ..passes.compile import compile
from .checkpoint import read_checkpoint, save_checkpoint
from .distributed import Single, process_ranks
from .evaluate import evaluate, topk_correct
from .memory import check_fits
from .metrics import MetricsLog, NoLog
from .optim import SGD, Schedule
from .progress import ChanceWatch, ProgressBar, SkipReport
from .recipe import Recipe

VAL_BATCH = 256  # validation batches are at least this large: inference needs less memory


@dataclass
class RunState:
    """Where a run stands: saved in every checkpoint's metadata."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken
    best_top1: float = -1.0
    schedule: dict = field(default_factory=dict)


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
    ranks = ranks or process_ranks()
    run = _Run(
        graph,
        data=data,
        out=Path(out),
        recipe=Recipe.from_graph(graph, epochs=epochs, batch_size=batch_size, lr=lr),
        threads=threads,
        seed=seed,
        resume=resume,
        init_weights=init_weights,
        checkpoint_every=checkpoint_every,
        workers=workers,
        limit_batches=limit_batches,
        console=console,
        ranks=ranks,
    )
    sigint = _DeferredInterrupt(ranks.stop_signals)
    try:
        while run.state.epoch < run.recipe.epochs:
            epoch = run.state.epoch
            tally = run.train_epoch(sigint)
            run.end_epoch(epoch, tally, run.validate())
    except KeyboardInterrupt:
        run.interrupted()
        raise
    finally:
        sigint.restore()
        run.close()
    return run.final | {"run_dir": str(run.out), "seconds": time.perf_counter() - run.started}


@dataclass
class _Tally:
    """One epoch's training: its batches, and the images, top-1 hits and summed loss so far."""

    batches: int
    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


class _Run:
    """One run of `train()`, step by step: setup (here), one epoch, validation, the end of an
    epoch (checkpoints, log), an interrupt, and closing."""

    def __init__(
        self,
        graph: Graph,
        *,
        data,
        out: Path,
        recipe: Recipe,
        threads,
        seed,
        resume,
        init_weights,
        checkpoint_every,
        workers,
        limit_batches,
        console,
        ranks,
    ):
        from ..data import open_source

        # Plain text: paths and error messages may hold [brackets], which rich reads as markup.
        say = (lambda text: console.print(text, markup=False)) if console is not None else print
        if not ranks.lead:
            console, say = None, _silent
        if recipe.batch_size < ranks.size:
            raise AlexcError(
                f"train: the batch size ({recipe.batch_size}) is smaller than the number of ranks "
                f"({ranks.size}): every rank needs at least one image of each batch"
            )
        try:
            if ranks.lead:
                out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AlexcError(
                f"{out}: cannot create the run directory ({os_reason(out, e)})"
            ) from None

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

        state, params, momentum = _starting_point(graph, resume, resumed, seed, init_weights, say)

        self.graph, self.data, self.out, self.recipe = graph, data, out, recipe
        self.seed, self.workers, self.limit_batches = seed, workers, limit_batches
        self.checkpoint_every, self.console, self.say = checkpoint_every, console, say
        self.ranks = ranks
        self.train_src, self.val_src, self.augment = train_src, val_src, augment
        self.state, self.params = state, params
        self.schedule = Schedule(recipe.schedule, recipe.lr, state.schedule or None, recipe.epochs)
        self.sgd = SGD(params, recipe.momentum, recipe.weight_decay, momentum, threads=threads)
        self.executor = compile(
            graph,
            recipe.batch_size,
            threads=threads,
            seed=seed,
            label_smoothing=recipe.label_smoothing,
        )
        self.log = MetricsLog(out / "metrics.jsonl") if ranks.lead else NoLog()
        self.averager = ranks.averager()
        self.log.write(
            event="start",
            graph=graph.name,
            data=str(data),
            recipe=asdict(recipe),
            seed=seed,
            threads=threads,
            train_images=len(train_src),
            val_images=len(val_src),
        )
        self.skips = SkipReport(train_src, val_src, say=say)
        self.chance = ChanceWatch(graph.shapes[graph.outputs[0]][0])
        self.last = out / "last.safetensors"
        self.final = {}
        self.lr_now = self.schedule.lr(state.epoch)
        self.started = time.perf_counter()
        self.updating = False  # an interrupt now would leave a half-applied update

    def train_epoch(self, sigint: _DeferredInterrupt) -> _Tally:
        """SGD steps through this epoch (from the batch a resumed run stopped at), then a word
        if the loss stayed at chance."""
        state, recipe, ranks = self.state, self.recipe, self.ranks
        epoch = state.epoch
        loader = training_loader(
            self.train_src,
            self.augment,
            recipe.batch_size,
            self.seed,
            self.workers,
            epoch,
            state.batch,
            ranks.part,
        )
        batches = loader.batches_per_epoch
        if self.limit_batches is not None:
            batches = min(batches, self.limit_batches)
        tally = _Tally(batches)
        t0 = time.perf_counter()
        with (
            loader,
            ProgressBar(
                self.console, f"epoch {epoch + 1}/{recipe.epochs}", batches, state.batch
            ) as bar,
        ):
            for x, y in loader:
                if state.batch >= batches:
                    break
                self.lr_now = self.schedule.lr(epoch, state.batch, batches)
                loss, global_correct, global_n, grads = rank_step(
                    self.executor,
                    self.params,
                    x,
                    y,
                    self.seed,
                    state.step,
                    recipe.batch_size,
                    ranks,
                    self.averager,
                )
                if not math.isfinite(loss):
                    raise self.diverged(f"the loss became {loss}")
                self.updating = True
                self.sgd.step(self.params, grads, self.lr_now)
                state.step += 1
                state.batch += 1
                self.updating = False
                tally.seen += global_n
                tally.loss_sum += loss * global_n
                tally.correct += global_correct
                self.chance.add(loss * global_n, global_correct, global_n)
                images_per_s = tally.seen / max(time.perf_counter() - t0, 1e-9)
                bar(
                    loss=tally.loss_sum / tally.seen,
                    accuracy=tally.correct / tally.seen,
                    images_per_s=images_per_s,
                )
                if self.checkpoint_every and state.step % self.checkpoint_every == 0:
                    self.checkpoint(self.last)
                if state.step % 50 == 0:
                    self.log.write(
                        event="step",
                        epoch=epoch + 1,
                        step=state.step,
                        lr=self.lr_now,
                        loss=loss,
                        images_per_s=images_per_s,
                    )
                if ranks.any(sigint.requested):  # every rank stops after the same step
                    raise KeyboardInterrupt
        tally.seconds = time.perf_counter() - t0
        self.tell_if_stuck(epoch)
        return tally

    def tell_if_stuck(self, epoch: int) -> None:
        """Log and say so when the epoch's last steps stayed at chance."""
        stuck = self.chance.verdict()
        if stuck:
            self.log.write(event="stuck", epoch=epoch + 1, step=self.state.step, **stuck)
            self.say(
                f"epoch {epoch + 1}, step {self.state.step}: the training loss has stayed at "
                f"chance ({stuck['loss']:.4f}, ln({self.chance.classes}) = "
                f"{math.log(self.chance.classes):.4f}; top-1 {stuck['top1']:.3f}) over the last "
                f"{stuck['steps']} steps: the network is not learning; try a lower --lr, a "
                "warm-up (train.schedule: {cosine: {warmup: 1}}) or another init"
            )

    def validate(self) -> dict:
        """Top-1, top-5 and loss on the held-out split (each rank its share)."""
        from ..data import Loader

        val_loader = Loader(
            self.val_src,
            self.augment,
            batch_size=max(self.recipe.batch_size, VAL_BATCH),
            train=False,
            seed=self.seed,
            workers=self.workers,
            part=self.ranks.part,
        )
        with val_loader:
            return evaluate(
                self.executor.predictor(self.params),
                val_loader,
                crops=self.augment.crops_per_image(train=False),
                limit_batches=self.limit_batches,
                ranks=self.ranks,
            )

    def end_epoch(self, epoch: int, tally: _Tally, val: dict) -> None:
        """Advance the schedule, save last (and best) checkpoints, log and print the epoch."""
        state = self.state
        self.ranks.check_identical(self.params, state.step)
        self.schedule.end_epoch(val["top1"])
        state.epoch += 1
        state.batch = 0
        improved = val["top1"] > state.best_top1
        if improved:
            state.best_top1 = val["top1"]
        self.checkpoint(self.last)
        if improved:
            self.checkpoint(self.out / "best.safetensors")
        record = {
            "event": "epoch",
            "epoch": epoch + 1,
            "step": state.step,
            "lr": self.schedule.lr(epoch, 0, tally.batches),  # at the epoch's first step
            "train_loss": tally.loss_sum / max(tally.seen, 1),
            "train_top1": tally.correct / max(tally.seen, 1),
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_loss": val["loss"],
            "images_per_s": tally.seen / max(tally.seconds, 1e-9),
            "epoch_seconds": tally.seconds,
            "elapsed_seconds": time.perf_counter() - self.started,
            "skipped": self.skips.count(),
        }
        self.log.write(**record)
        self.say(
            f"epoch {epoch + 1}/{self.recipe.epochs}: train loss {record['train_loss']:.4f}, "
            f"val top-1 {val['top1']:.4f}, top-5 {val['top5']:.4f}, "
            f"{record['images_per_s']:.0f} img/s, {tally.seconds:.0f} s"
        )
        self.skips.tell()
        self.final = record

    def checkpoint(self, path: Path) -> None:
        """Save weights, momentum and the run's state to `path` (rank 0), if still finite."""
        if not all(np.isfinite(v).all() for v in self.params.values()):
            raise self.diverged("the weights are no longer finite")
        state, graph = self.state, self.graph
        meta = {
            "state": asdict(state) | {"schedule": self.schedule.state()},
            "seed": self.seed,
            "graph": graph.fingerprint(),
            "graph_name": graph.name,
            "classes": list(graph.classes or []),
            "lr": self.lr_now,
            "epoch": state.epoch,
            "step": state.step,
            "recipe": asdict(self.recipe),
            "input_shape": list(graph.input.shape),
            "data": dict(graph.data),
        }
        if self.ranks.lead:
            save_checkpoint(path, self.params, momentum=self.sgd.buffers, meta=meta)

    def diverged(self, what: str) -> AlexcError:
        """The error that stops a diverged run, logged, naming what is kept."""
        last = self.last
        kept = f"{last} keeps the last good weights" if last.exists() else "no checkpoint was kept"
        state = self.state
        self.log.write(event="diverged", epoch=state.epoch + 1, step=state.step, what=what)
        return AlexcError(
            f"training diverged: {what} at epoch {state.epoch + 1}, step "
            f"{state.step}; stopped, {kept} (try a lower --lr)"
        )

    def interrupted(self) -> None:
        """Ctrl-C: save the state after the last completed step, unless mid-update."""
        state, last = self.state, self.last
        self.log.write(event="interrupted", epoch=state.epoch + 1, step=state.step)
        if self.updating:
            self.say(f"interrupted during an update: {last} keeps the state of its last save")
        else:  # the arrays hold the state after the last completed step
            self.checkpoint(last)
            self.say(
                f"interrupted: saved {last} (epoch {state.epoch + 1}, step {state.step}); "
                f"continue with --resume {last}"
            )

    def close(self) -> None:
        self.log.close()
        self.executor.close()
        if self.averager is not None:
            self.averager.close()


def _starting_point(graph, resume, resumed, seed, init_weights, say):
    """(RunState, parameters, momentum buffers or None): a resumed run's, checked against the
    graph, or a fresh (or fine-tuned) start's."""
    if resumed is None:
        return RunState(), initial_params(graph, seed, init_weights, say), None
    loaded, momentum, meta = resumed
    if meta.get("graph") != graph.fingerprint():
        raise CheckpointError(
            f"{resume}: was written for another graph (or other classes); "
            "resume needs the same graph file and data"
        )
    params = check_params(loaded, graph, str(resume))
    state = RunState(**meta["state"])
    say(f"resuming from {resume}: epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
    return state, params, momentum


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
