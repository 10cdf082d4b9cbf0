"""The ``"torch"`` backend: ``F.grid_sample``, fast on every device (and ONNX's ``GridSample`` on export)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from torchstn.sampling._backend import GridBackend

__all__ = ["TorchBackend"]


class TorchBackend(GridBackend):
    """``F.grid_sample``: every mode, padding, dtype and device."""

    name = "torch"

    def sample(self, input: Tensor, grid: Tensor, mode: str, padding: str, align_corners: bool) -> Tensor:
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
