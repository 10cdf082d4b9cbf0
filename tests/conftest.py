"""Fixtures shared by the test suite: seeded data, devices and dtypes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


#: The devices the ``device`` fixture runs a test on: the CPU always, CUDA marked ``cuda`` (select the GPU cases
#: with ``pytest -m cuda``, as ``scripts/gpu_check.sh`` does) and skipped where no GPU is available.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _seed_global_rng() -> None:
    """Every test starts from the same global RNG state, whatever the order or worker it runs in."""
    torch.manual_seed(0)
