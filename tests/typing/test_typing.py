"""The public API type-checks under mypy strict for a typed client (``typed_client.py``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.typing import typed_client

ROOT = Path(__file__).resolve().parents[2]


def test_typed_client_runs() -> None:
    assert typed_client.spatial_transformer_calls().shape == (2, 1, 28, 28)
    assert typed_client.container_calls().shape == (2, 1, 28, 28)
    assert typed_client.warp_calls().shape == (2, 1, 8, 8)


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the dev extra)")
def test_typed_client_passes_mypy_strict(tmp_path: Path) -> None:
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}  # this checkout's torchstn, whatever is installed
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict"]
    cmd += ["--cache-dir", str(ROOT / ".mypy_cache"), str(Path(__file__).with_name("typed_client.py"))]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
