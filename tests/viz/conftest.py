"""Fixtures of the picture tests: a batch of images and a trained-size ST-CNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from torchstn.models import create_model


@pytest.fixture
def images(gen: torch.Generator) -> Tensor:
    return torch.rand(6, 1, 28, 28, generator=gen)


@pytest.fixture(scope="module")
def _st_cnn_once() -> nn.Module:
    return create_model("st_cnn_aff", input_shape=(1, 28, 28))


@pytest.fixture
def st_cnn(_st_cnn_once: nn.Module) -> nn.Module:
    """A fresh copy per test (building the model sizes its classifier, which takes a while)."""
    return copy.deepcopy(_st_cnn_once)
