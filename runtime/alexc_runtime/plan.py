"""The Plan: what the compiler hands the runtime. A flat list of kernel calls over named buffers.

Invariants the compiler guarantees (and tests check):
- forward steps are in topological order; backward steps in reverse, each after every step that
  produces a gradient it reads;
- every activation and gradient has a Slot: its size and the steps it lives between (a forward
  value a backward rule keeps lives until that backward step);
- `free_after` on a step lists the buffers whose life ends there;
- slots whose lives overlap never overlap in the arena, except an alias (a view a kernel returns
  of its input, e.g. flatten) and a result written in place (relu, dropout), which share the
  bytes of the value they come from, whose life is extended to cover theirs.

The executor allocates the arena (`arena_bytes`) once and runs every step in the views its
Slots give: activations and gradients (`slots`), what forward saves for backward (`saved`, per
node) and each step's scratch (`workspace`, per step index).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    op: str  # kernel name, a key of alexc_runtime.kernels.KERNELS
    node: str  # the IR node this step belongs to
    attrs: Mapping
    inputs: tuple[str, ...]  # forward: activations then params; backward: (grad of output,)
    outputs: tuple[str | None, ...]  # forward: (y,); backward: a grad per forward input, or None
    backward: bool = False
    accumulate: tuple[bool, ...] = ()  # backward: add into an existing gradient buffer
    free_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    offset: int  # bytes into the arena (-1: a feed, the caller's own array)
    nbytes: int
    shape: tuple[int, ...]
    start: int  # index of the step that writes it (-1: before the first step)
    end: int  # index of the step that last reads it


@dataclass(frozen=True)
class Plan:
    batch_size: int
    inputs: tuple[str, ...]  # fed by the caller: the image, and for training the labels
    params: tuple[str, ...]
    outputs: tuple[str, ...]  # inference: the graph's outputs; training: the loss
    steps: tuple[Step, ...]  # forward steps, then backward steps
    grads: Mapping[str, str] = field(default_factory=dict)  # param -> its gradient buffer
    slots: Mapping[str, Slot] = field(default_factory=dict)  # activations and gradients
    saved: Mapping[str, Slot] = field(default_factory=dict)  # node -> what forward keeps
    workspace: Mapping[int, Slot] = field(default_factory=dict)  # step index -> its scratch
    aliases: Mapping[str, str] = field(default_factory=dict)  # a view -> the value it views
    # a result written over an input nobody reads afterwards -> the value whose bytes it takes
    in_place: Mapping[str, str] = field(default_factory=dict)
    dtype: str = "float32"  # of activations and gradients
    arena_bytes: int = 0  # size of the arena holding every slot
    live_peak_bytes: int = 0  # the most bytes of slots in use at one step (the arena's lower
    # bound; first-fit placement leaves some gaps above it)
    param_bytes: int = 0  # parameters and their gradients

    @property
    def training(self) -> bool:
        return any(s.backward for s in self.steps)

    @property
    def planned_peak_bytes(self) -> int:
        """What running the plan holds: its arena, parameters and their gradients."""
        return self.arena_bytes + self.param_bytes
