"""SVHN and CUB-200 train from the command line on tiny on-disk datasets in their real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from tests.data.test_cub import write_cub
from tests.data.test_svhn import ENTRIES, H, W, write_digit_struct
from torchstn.cli import main


@pytest.fixture
def svhn_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        d = tmp_path / "svhn" / split
        d.mkdir(parents=True)
        write_digit_struct(d / "digitStruct.mat", ENTRIES)
        for name, _ in ENTRIES:
            Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).save(d / name)
    return tmp_path / "svhn"


def small_backbone() -> nn.Module:
    """What a user would point model.kwargs.backbone at (here tiny, for speed)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _train(out: Path, config: str, *sets: str) -> dict[str, object]:
    common = ["train.epochs=1", "train.batch_size=4", "train.threads=1", "visualize.enabled=False"]
    allow = ["--allow-call", "tests.train"]  # the CUB config's backbone is a call: into this module
    assert main(["train", "--config", config, "--out", str(out), "--quiet", *allow, "--set", *common, *sets]) == 0
    return json.loads((out / "metrics.json").read_text())  # type: ignore[no-any-return]


def test_svhn_trains_and_scores_sequences(svhn_root: Path, tmp_path: Path) -> None:
    metrics = _train(tmp_path / "run", "configs/svhn.yaml", f"data.root={svhn_root}", "model.kwargs={'width': 0.0625}")
    assert metrics["status"] == "finished"
    assert metrics["test_error"] in (0.0, 100 / 3, 200 / 3, 100.0)  # 3 sequences kept (one has six digits)


def test_cub_trains_with_a_user_backbone(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    metrics = _train(
        tmp_path / "run",
        "configs/cub.yaml",
        f"data.root={root}",
        "data.size=64",
        "model.kwargs={'backbone': 'call:tests.train.test_svhn_cub_training:small_backbone', 'feature_dim': 8, "
        "'input_size': 64, 'crop_size': 32}",
    )
    assert metrics["status"] == "finished" and 0 <= float(metrics["test_error"]) <= 100  # type: ignore[arg-type]
