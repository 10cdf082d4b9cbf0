"""A tiny MNIST stand-in written as the pickled format, so training tests need no real data."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512/64/128 'digits': a bright bar whose position encodes the label, plus noise."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        images = rng.random((n, 28, 28), dtype=np.float32) * 0.1
        for i, y in enumerate(labels):
            images[i, 4 + 2 * y : 6 + 2 * y, 6:22] = 1.0
        return images.reshape(n, 784), labels.astype(np.int64)

    path = tmp_path_factory.mktemp("mnist") / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((split(512), split(64), split(128)), f, protocol=2)
    return path
