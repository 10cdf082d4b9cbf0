"""The C allocator's settings for CPU training (torchstn.train.allocator): what they change, and who applies them.

The behaviour is checked in child processes, since the settings are the whole process's; what is measured is the
page faults a step of large allocations causes, not time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchstn
from tests.train.conftest import tiny_mnist  # noqa: F401  (the fixture)
from torchstn.cli import main
from torchstn.train import allocator

SRC = Path(torchstn.__file__).parents[1]
GLIBC = allocator._libc() is not None

# 20 rounds of a 64 MiB tensor written and freed (larger than glibc's largest mmap threshold), page faults counted
# from the fifth round on.
_ROUNDS = """
import json, resource, sys
import torch
from torchstn.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for i in range(20):
    if i == 4:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 << 20)
    t.fill_(1.0)
    del t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(json.dumps({"applied": applied, "faults_per_round": faults / 16}))
"""


def _rounds(mode: str, **env: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    """Without the settings each 64 MiB block is mapped afresh, so every round faults in all its 16,384 pages; with
    them the heap keeps the block and later rounds fault in (almost) none."""
    plain = _rounds("plain")
    kept = _rounds("keep")
    assert not plain["applied"] and kept["applied"]
    assert plain["faults_per_round"] > 15_000, plain
    assert kept["faults_per_round"] < 100, kept


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_torchstn_malloc_system_leaves_the_allocator_alone() -> None:
    out = _rounds("keep", TORCHSTN_MALLOC="system")
    assert not out["applied"] and out["faults_per_round"] > 15_000, out


def test_mallopt_is_false_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.mallopt(allocator.M_MMAP_MAX, 0) is False
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cli_train_applies_the_settings_for_cpu_training(
    device: str,
    monkeypatch: pytest.MonkeyPatch,
    tiny_mnist: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``torchstn train`` on the CPU (also ``auto`` on a machine without CUDA) calls keep_freed_memory."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen: list[bool] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    flags = [
        f"data.mnist={tiny_mnist}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.recipe=rotated",
        "data.n_train=32",
        "train.epochs=1",
        "train.batch_size=32",
        "train.threads=1",
        f"train.device={device}",
        "visualize.enabled=False",
        "model.name=fcn_baseline",
    ]
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet", "--set", *flags]) == 0
    assert seen == [True]
