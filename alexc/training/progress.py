"""What a run tells its user while it trains: the progress bar, images skipped as unreadable,
and a loss stuck at chance."""

from __future__ import annotations

import math


class ProgressBar:
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


class SkipReport:
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


class ChanceWatch:
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
