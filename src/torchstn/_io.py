"""Atomic file writes: one helper for every file torchstn writes (checkpoints, caches, pictures, logs' siblings).

A file is written to a temporary name that is unique to this process and call (``tempfile.mkstemp`` in the target's
directory), flushed and fsynced, given the usual permissions (``0o666`` less the umask, as ``open`` would), then
renamed over the target, so a reader sees the old file or the new one, never a partial one, and two processes
writing the same target never share a temporary file. On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__: list[str] = []

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success it is renamed to ``path``, on error removed."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a unique temporary file, then rename it to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Temporary files left in ``directory`` (not recursive) by an interrupted atomic write."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file())
