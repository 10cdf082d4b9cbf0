"""Fault injection (slow): a short training killed at random moments resumes to exactly the uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import torchstn

DROP = {"epoch_seconds", "images_per_second"}
SRC = Path(torchstn.__file__).parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchstn.cli", *args]


def _flags(mnist: Path, tmp: Path) -> list[str]:
    return [
        f"data.mnist={mnist}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.recipe=rotated",
        "data.n_train=256",
        "train.epochs=4",
        "train.batch_size=32",
        "train.threads=1",
        "visualize.enabled=False",
        "model.name=st_fcn_aff",
    ]


def _result(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in DROP}  # noqa: E731
    return [strip(r) for r in rows], strip(metrics)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_runs_resume_to_the_uninterrupted_run(tiny_mnist: Path, tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    flags = _flags(tiny_mnist, tmp_path)
    whole = tmp_path / "whole"
    start = time.perf_counter()
    subprocess.run(_cli("train", "--out", str(whole), "--quiet", "--set", *flags), check=True, env=env)
    duration = time.perf_counter() - start
    expected = _result(whole)
    rng = random.Random(signum)
    for trial in range(int(os.environ.get("TORCHSTN_FAULT_TRIALS", "6"))):
        run = tmp_path / f"run{trial}"
        proc = subprocess.Popen(_cli("train", "--out", str(run), "--quiet", "--set", *flags), env=env)
        time.sleep(rng.uniform(0.3, duration))
        proc.send_signal(signum)
        proc.wait(timeout=300)
        resume = ["train", "--resume", str(run), "--quiet"] if (run / "config.yaml").exists() else None
        args = resume or ["train", "--out", str(run), "--overwrite", "--quiet", "--set", *flags]
        done = subprocess.run(_cli(*args), capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert _result(run) == expected, f"trial {trial}: killed after {proc.returncode}"
        assert not [p for p in run.rglob("*.tmp")], f"trial {trial}: temporary files left"
