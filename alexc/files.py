"""Atomic file writes: what alexc writes is either the old file or the new one, whole."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .errors import AlexcError


def write_atomic(path: str | Path, data: bytes, what: str, error=AlexcError) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename it over `path`, and fsync
    the folder, so a crash at any moment (SIGKILL included) leaves the old file or the new one.

    Any OSError becomes one `error` line naming the path and the reason."""
    path = Path(path)
    # Not mkstemp: its 0600 mode would make the file private; "x" honours the umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # make the rename itself durable
        finally:
            os.close(folder)
    except OSError as e:
        _remove(tmp)
        raise error(f"{path}: cannot write the {what} ({os_reason(path, e)})") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # the folder itself is unusable: there is no temp file to remove
        pass


def os_reason(path: Path, e: OSError) -> str:
    """Why `path` could not be written, in words: the OS's reason, or the file in the way."""
    # mkdir under a regular file says "File exists"; name the file that is in the way instead.
    for parent in path.parents:
        if parent.exists():
            return e.strerror or str(e) if parent.is_dir() else f"{parent} is not a folder"
    return e.strerror or str(e)
