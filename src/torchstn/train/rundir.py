"""The run directory: its layout, its metadata, and the checkpoints in it.

::

    config.yaml     the resolved configuration (defaults + file + flags)
    meta.json       git sha and dirty flag, seed, package versions, command line, machine, world size
    log.jsonl       one JSON line per epoch (losses, errors, learning rate, time, images/s)
    metrics.json    final metrics and status
    metrics.csv     the same rows as CSV (one column per metric)
    tensorboard/    the same scalars for TensorBoard (when ``torch.utils.tensorboard`` imports)
    checkpoints/    last.pt (written atomically, loaded with ``weights_only=True``); best.pt, the epoch with the
                    lowest validation error (with ``data.n_valid``)
    pictures/       what the transformers learnt (PNG per transformer, GIF across epochs), curves.png

Every file is written through :mod:`torchstn._io` (a unique temporary file renamed over the target), so a kill at
any moment leaves the previous version or the new one, never a partial file; temporaries a kill leaves behind are
removed when the run resumes. A checkpoint records the SHA-256 of its payload, checked on load, and the log rows up
to its epoch, so ``log.jsonl`` is rewritten from it on resume and the two always agree. While a run trains it holds
an exclusive lock on ``RUN/.lock`` (``fcntl.flock``): a second process cannot train into the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

import torchstn
from torchstn._io import atomic_write_bytes, atomic_write_text, stale_temporaries
from torchstn.errors import CheckpointError, CheckpointNotFoundError, RunError

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "RUN_FILES",
    "clean_stale_temporaries",
    "git_info",
    "load_checkpoint",
    "lock_run",
    "new_run_dir",
    "prepare_run_dir",
    "probe_writable",
    "read_log",
    "run_meta",
    "save_checkpoint",
    "write_config",
    "write_csv",
    "write_json",
    "write_log",
]

CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
RUN_FILES = ("config.yaml", "meta.json", "log.jsonl", "metrics.csv", "metrics.json", "checkpoints", "pictures",
             "tensorboard", "model.onnx")  # fmt: skip
_FORMAT = "torchstn-checkpoint"
_VERSION = 1


def _describe(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no space left on the device (or the file-size limit is reached)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable"
    return err.strerror or str(err)


@contextlib.contextmanager
def writing(what: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``what`` into a :class:`~torchstn.errors.RunError` naming the cause."""
    try:
        yield
    except OSError as err:
        raise RunError(f"{what}: cannot write: {_describe(err)} ({err.strerror or err})") from err


def new_run_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """Create a new, uniquely named run directory ``PARENT/NAME-YYYYmmdd-HHMMSS-microseconds[-k]``.

    The name is claimed with an exclusive ``mkdir``, so two runs started at the same moment never share one.
    """
    root = Path(parent)
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now % 1 * 1e6):06d}"
    for k in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            with writing(root):
                path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{root}: could not claim a new run directory named {name}-{stamp}")  # pragma: no cover


def prepare_run_dir(run: Path, *, overwrite: bool) -> None:
    """Make ``run`` ready for a new run: created if missing; refused if it holds a run unless ``overwrite``.

    Raises:
        RunError: ``run`` holds files of a run and ``overwrite`` is false, or it is not a directory.
    """
    if run.exists() and not run.is_dir():
        raise RunError(f"{run}: exists and is not a directory")
    present = [name for name in RUN_FILES if (run / name).exists()]
    if present and not overwrite:
        raise RunError(
            f"{run}: already holds a run ({', '.join(present)}); resume it with --resume {run}, choose another "
            "--out, or pass --overwrite to replace it"
        )
    with writing(run):
        run.mkdir(parents=True, exist_ok=True)
    for name in present:
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextlib.contextmanager
def lock_run(run: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``RUN/.lock`` for the block.

    Raises:
        RunError: Another process holds the lock (it is training this run).
    """
    import fcntl

    with writing(run):
        fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunError(f"{run}: another process (pid {other}) is training this run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_stale_temporaries(run: Path) -> list[Path]:
    """Remove the temporary files interrupted writes left in ``run`` and its subdirectories; return them."""
    stale = [p for d in (run, run / "checkpoints", run / "pictures") for p in stale_temporaries(d)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def probe_writable(path: Path, nbytes: int) -> None:
    """Write (atomically, then remove) a file of ``nbytes`` beside ``path``: a full disk or an unwritable
    directory is found before training, not after the first epoch.

    Raises:
        RunError: The probe could not be written (naming the cause: no space left, not writable).
    """
    probe = path.with_name(f".{path.name}.probe")
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(probe, bytes(nbytes))
        probe.unlink()


def git_info(cwd: str | os.PathLike[str] | None = None, paths: Sequence[str] = ()) -> dict[str, Any]:
    """The git sha of the checkout the run is started from (``cwd``, default: the working directory) and whether
    it has uncommitted changes; both ``None`` outside a checkout (an installed torchstn says nothing about the
    user's code, so its own install location is never asked). ``paths``: only changes under these count."""
    root = Path.cwd() if cwd is None else Path(cwd)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True, text=True, check=True
        )
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_sha": None, "git_dirty": None}


def run_meta(config: dict[str, Any], world: int, device: str | None = None) -> dict[str, Any]:
    """What ``meta.json`` records: code version, seeds, packages, command line, machine."""
    import numpy

    return {
        **git_info(),
        "seed": config["train"]["seed"],
        "data_seed": config["data"]["seed"],
        "command": sys.argv,
        "versions": {
            "torchstn": torchstn.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": device,
        },
        "world_size": world,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write the resolved config as ``config.yaml``."""
    with writing(path):
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with writing(path):
        atomic_write_text(path, json.dumps(data, indent=1))


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``log.jsonl`` (one JSON line per row), atomically: a kill never leaves a partial line."""
    with writing(path):
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the log rows as CSV, atomically: a column per metric (the union of the rows' keys, in the order they
    first appear; a row without one leaves its cell empty)."""
    import csv

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with writing(path):
        atomic_write_text(path, buffer.getvalue())


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl`` (empty if there is none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, with the SHA-256 of its payload: a crash mid-write leaves the previous one.

    The file is ``torch.save({"format", "version", "sha256", "payload"})`` where ``payload`` holds the bytes of
    ``torch.save(state)`` (a uint8 tensor), so any changed byte is found on load.

    Raises:
        RunError: The file cannot be written (no space left, not writable).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    outer = io.BytesIO()
    payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    torch.save({"format": _FORMAT, "version": _VERSION, "sha256": hashlib.sha256(data).hexdigest(), "payload": payload},
               outer)  # fmt: skip
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, outer.getvalue())


class _UnsafeCheckpoint(CheckpointError, pickle.UnpicklingError):
    """A checkpoint whose pickle asks for more than tensors and containers (refused, nothing is run)."""


def _load(source: Any, path: Any, map_location: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise _UnsafeCheckpoint(
            f"{path}: not a torchstn checkpoint: refused by the safe loader (a corrupt file, or one that asks to build "
            f"objects a checkpoint never holds; nothing was run): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable torchstn checkpoint (corrupt or truncated: {first})") from None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (``weights_only=True``), verifying its SHA-256.

    Tensors are loaded onto ``map_location`` (default: the CPU, whatever device wrote them); a checkpoint written
    on a GPU loads on a machine without one.

    Checkpoints written before checksums were recorded (a plain state dict) still load, unverified.

    Raises:
        CheckpointError: The file is not a torchstn checkpoint, is corrupt or truncated, or fails its checksum
            (also a ``pickle.UnpicklingError`` when the pickle asks to run code).
        CheckpointNotFoundError: There is no such file (also a ``FileNotFoundError``).
    """
    if not Path(path).is_file():
        raise CheckpointNotFoundError(errno.ENOENT, "No such file (no checkpoint)", str(path))
    state = _load(path, path, map_location)
    if isinstance(state, dict) and state.get("format") == _FORMAT:
        payload = state.get("payload")
        if (
            not isinstance(payload, torch.Tensor)
            or payload.dtype != torch.uint8
            or not isinstance(state.get("sha256"), str)
        ):
            raise CheckpointError(f"{path}: malformed torchstn checkpoint (no payload or checksum)")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != state["sha256"]:
            raise CheckpointError(f"{path}: the checkpoint fails its SHA-256 checksum (the file is corrupt)")
        state = _load(io.BytesIO(data), path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a torchstn checkpoint")
    return state
