"""Small builders shared by the picture tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from torchstn.modules import SpatialTransformer, conv_localisation, tiling_params
from torchstn.transforms import Attention


def two_head_attention(channels: int = 1, size: int = 28, combine: str = "stack") -> SpatialTransformer:
    t = Attention()
    loc = conv_localisation((channels, size, size), t, num_heads=2, init=tiling_params(1, 2))
    return SpatialTransformer(loc, t, combine=combine)  # type: ignore[arg-type]


def set_bias(st: SpatialTransformer, params: Tensor) -> None:
    """Make the (zero-weight) head output ``params`` for every input."""
    with torch.no_grad():
        st.localisation.head.linear.bias.copy_(params.reshape(-1))  # type: ignore[union-attr, operator]


def border(x0: float, y0: float, x1: float, y1: float) -> Tensor:
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def has_colour(img: Image.Image, rgb: tuple[int, int, int]) -> bool:
    return bool((np.asarray(img) == np.array(rgb, dtype=np.uint8)).all(-1).any())
