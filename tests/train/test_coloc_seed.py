"""Co-localisation runs of different ``train.seed`` start from different weights (the encoder stays fixed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from torchstn.train import load_checkpoint, load_config, train
from torchstn.train.engine import build_model
from torchstn.train.tasks import ColocTask, build_task


def _config(mnist: Path, tmp: Path, seed: int, *extra: str) -> dict[str, Any]:
    return load_config(
        None,
        [
            f"data.mnist={str(mnist)!r}",
            f"data.cache_dir={str(tmp / 'cache')!r}",
            "task='coloc'",
            "data.recipe='colocalisation'",
            "data.recipe_params={'digit': 3}",
            "data.n_train=32",
            "data.n_test=16",
            "model.name='coloc_attention'",
            "coloc.encoder_epochs=1",
            "train.batch_size=16",
            "train.threads=1",
            "visualize.enabled=False",
            f"train.seed={seed}",
            *extra,
        ],
    )


def _initial_weights(mnist: Path, tmp: Path, seed: int) -> dict[str, torch.Tensor]:
    """The weights the engine starts from: one step at learning rate 0 leaves them as they were drawn."""
    run = tmp / f"run-{seed}-{len(list(tmp.iterdir()))}"
    train(_config(mnist, tmp, seed, "train.lr=0.0", "train.epochs=1", "train.max_steps=1"), run, quiet=True)
    weights: dict[str, torch.Tensor] = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return weights


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_coloc_initial_weights_follow_train_seed(tiny_mnist: Path, tmp_path: Path) -> None:
    w0, w0_again, w1 = (_initial_weights(tiny_mnist, tmp_path, s) for s in (0, 0, 1))
    assert _same(w0, w0_again)
    assert not _same(w0, w1)
    # The localisation head starts at the chosen placement; the rest of the network differs between seeds.
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if "backbone" in k)


def test_coloc_encoder_is_the_same_for_every_seed(tiny_mnist: Path, tmp_path: Path) -> None:
    encoders = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # as the engine does before building the task
        task = build_task(_config(tiny_mnist, tmp_path, seed))
        assert isinstance(task, ColocTask)
        encoders.append(task.encoder.state_dict())
    assert _same(*encoders)


def test_building_the_coloc_task_leaves_the_global_generator_alone(tiny_mnist: Path, tmp_path: Path) -> None:
    config = _config(tiny_mnist, tmp_path, 3)
    torch.manual_seed(3)
    expected = build_model(config).state_dict()
    torch.manual_seed(3)
    build_task(config)
    assert _same(build_model(config).state_dict(), expected)


def test_coloc_crops_script_scores_a_run_as_the_task_does(tiny_mnist: Path, tmp_path: Path) -> None:
    """scripts/coloc_crops.py on a finished run: its hit rate is the complement of the test error the run logged
    (the task's own IoU scoring, computed independently), and its other figures are in range."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("coloc_crops", root / "scripts" / "coloc_crops.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tmp_path / "run"
    metrics = train(_config(tiny_mnist, tmp_path, 0, "train.epochs=1"), run, quiet=True)
    row = script.crops(run)
    assert row["hits %"] == pytest.approx(100.0 - metrics["test_error"], abs=1e-9)
    assert 0.0 <= row["holds the box %"] <= 100.0 and 0.0 <= row["hits at the true size %"] <= 100.0
    assert row["median crop/box size"] > 0.0
    hits, misses = row["hits %"] > 0.0, row["hits %"] < 100.0  # the medians over an empty set read NaN
    assert math.isnan(row["centre error px (median), hits"]) != hits
    assert math.isnan(row["centre error px (median), misses"]) != misses
    assert math.isnan(row["misses near the box % (IoU > 0.3)"]) != misses
    assert not misses or 0.0 <= row["misses near the box % (IoU > 0.3)"] <= 100.0
    assert not misses or row["centre error px (median), misses"] >= 0.0
