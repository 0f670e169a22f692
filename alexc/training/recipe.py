"""The training recipe: a graph file's `train:` section, every value checked (CLI flags
override it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SectionError, is_int, is_number
from ..ir import Graph
from .optim import Schedule

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
