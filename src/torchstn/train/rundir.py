"""The run directory: its layout, its metadata, and the checkpoints in it.

::

    config.yaml     the resolved configuration (defaults + file + flags)
    meta.json       git sha and dirty flag, seed, package versions, command line, machine, world size
    log.jsonl       one JSON line per epoch (losses, errors, learning rate, time, images/s)
    metrics.json    final metrics and status
    checkpoints/    last.pt (written atomically, loaded with ``weights_only=True``)
    pictures/       what the transformers learnt (PNG per transformer, GIF across epochs), curves.png

Every file is written through :mod:`torchstn._io` (a unique temporary file renamed over the target), so a kill at
any moment leaves the previous version or the new one, never a partial file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import torchstn
from torchstn._io import atomic_write_bytes, atomic_write_text
from torchstn.errors import CheckpointError

__all__ = [
    "CHECKPOINT",
    "git_info",
    "load_checkpoint",
    "read_log",
    "run_meta",
    "save_checkpoint",
    "write_config",
    "write_json",
]

CHECKPOINT = Path("checkpoints") / "last.pt"


def git_info() -> dict[str, Any]:
    """The source tree's git sha and whether it has uncommitted changes (``None`` outside a checkout)."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_sha": None, "git_dirty": None}


def run_meta(config: dict[str, Any], world: int) -> dict[str, Any]:
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
        },
        "world_size": world,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write the resolved config as ``config.yaml``."""
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=1))


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl`` (empty if there is none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    Raises:
        CheckpointError: The file is not a torchstn checkpoint.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a torchstn checkpoint")
    return state
