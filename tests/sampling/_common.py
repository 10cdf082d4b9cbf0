"""Random inputs and grids shared by the sampling tests."""

from __future__ import annotations

import torch


def random_grid(gen: torch.Generator, b: int, h: int, w: int, dtype: torch.dtype, spread: float = 1.3) -> torch.Tensor:
    """Random grid covering the image and a margin around it, kept away from integer pixel positions."""
    g = (torch.rand(b, h, w, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    return g.to(dtype)


def random_input(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
