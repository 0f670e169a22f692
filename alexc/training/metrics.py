"""The run's metrics log (RUN_DIR/metrics.jsonl): written one JSON line at a time, read back
by `alexc plot`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..errors import AlexcError
from ..files import os_reason


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


class NoLog:
    """The metrics log of ranks other than 0."""

    def write(self, **record):
        pass

    def close(self):
        pass


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
