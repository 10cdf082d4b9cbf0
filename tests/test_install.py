"""Installed use (issue 13): the wheel, installed into a fresh virtual environment outside the checkout, trains a
packaged config from another directory.

Slow (a wheel build and an install, then a short training run): ``pytest -m slow tests/test_install.py``. No
network is used: the wheel is built with ``--no-build-isolation`` from this environment's setuptools, and the fresh
environment borrows this one's packages (torch and the rest) through a ``.pth`` line, so only torchstn itself comes
from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_and_trains_a_packaged_config_elsewhere(tmp_path: Path) -> None:
    # built from a copy, so the checkout gets no build/ or egg-info (a stale build/ could leak into later wheels)
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT / "src", source / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w",
          str(wheels)], cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("torchstn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"torchstn/configs/demo.yaml", "torchstn/configs/rts.yaml", "torchstn/py.typed"} <= set(names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, numpy, ... and pip
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import torchstn; print(torchstn.__file__)"], elsewhere).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout
    cli = venv / "bin" / "torchstn"
    flags = ["train.max_steps=2", "data.n_train=256", "data.n_test=128", "train.threads=1", "visualize.enabled=False"]
    flags += [f"data.cache_dir={tmp_path / 'cache'}"]
    _run([str(cli), "train", "--config", "demo", "--device", "cpu", "--out", "run", "--quiet", "--set", *flags],
         cwd=elsewhere)  # fmt: skip
    run = elsewhere / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["step"] == 2
    meta = json.loads((run / "meta.json").read_text())
    assert meta["git_sha"] is None  # the project directory is not a checkout; the library's location is not asked
    _run([str(cli), "eval", "run", "--device", "cpu"], cwd=elsewhere)
