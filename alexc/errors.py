"""The errors a user can fix: the CLI prints them as one line, never a traceback."""

import math
import sys


class AlexcError(Exception):
    """An error the user can fix: printed as one line, no traceback."""


class GraphError(AlexcError):
    """A graph file (or a graph built in Python) is malformed.

    The message names the file, the line where known, the node and what to change.
    """

    def __init__(self, what: str, *, file=None, line=None, node=None):
        self.what, self.file, self.line, self.node = what, file, line, node
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        who = f"node '{node}': " if node is not None else ""
        super().__init__(f"{where}{who}{what}")


class SectionError(AlexcError):
    """A wrong value in a graph's `train:` or `data:` section.

    `key` names the entry at fault, so the YAML frontend can add the file and its line."""

    def __init__(self, section: str, key: str | None, what: str):
        self.section, self.key, self.what = section, key, what
        super().__init__(f"{section}: {what}")


class DataError(AlexcError):
    """Bad or missing data."""


class CheckpointError(AlexcError):
    """A checkpoint or weights file is missing, corrupt, or does not fit the graph."""


def is_int(value) -> bool:
    """An integer (YAML's true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An integer or a finite float that converts to a float (YAML's true and false are not)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value) and abs(value) <= sys.float_info.max
