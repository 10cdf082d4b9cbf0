"""Draw docs/guide/coordinates.png: where an Affine transformer samples, in torchstn's coordinate convention.

Run from the repository root: ``python docs/guide/coordinates.py``. The picture is made with the library's own
drawing (:func:`torchstn.viz.draw_record`): left, a 48x32 input whose red channel grows with x (left to right) and
whose green channel grows with y (top to bottom), with the outline of the sampled window; right, the output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import torchstn
from torchstn.transforms import Affine
from torchstn.viz import TransformerRecord, draw_record

# theta maps output points to input points (x_src, y_src) = A (x_dst, y_dst) + t, all in [-1, 1]:
# half the size, centred at x = +0.5 (right of centre), y = -0.5 (above the centre: y grows downwards).
THETA = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.5, -0.5]])


def picture() -> torch.Tensor:
    """A ``(1, 3, 32, 48)`` image: red = x, green = y (both from 0 to 1), a white dot at the centre (0, 0)."""
    h, w = 32, 48
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack((xs, ys, torch.full_like(xs, 0.2)))
    image[:, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1] = 1.0
    return image[None]


def main(out: Path) -> Path:
    x = picture()
    t = Affine()
    params = THETA  # Affine's six parameters are the 2x3 matrix, row by row
    y = torchstn.warp(x, params, t, output_size=(16, 24))
    record = TransformerRecord("Affine: scale 0.5, centre (x, y) = (0.5, -0.5)", x, y, params, t)
    draw_record(record, zoom=4, ncols=1).save(out)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("coordinates.png")))
