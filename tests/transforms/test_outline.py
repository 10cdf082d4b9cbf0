"""Outlines (grid_outline) and attention boxes: where a transform's output lands in its input, in pixels."""

from __future__ import annotations

import math

import pytest
import torch

from tests.viz._helpers import border
from torchstn.errors import OptionError, ShapeError
from torchstn.modules import (
    tiling_params,
)
from torchstn.transforms import Affine, Affine3D, Attention, Similarity, ThinPlateSpline
from torchstn.viz import (
    attention_boxes,
    grid_outline,
)


@pytest.mark.parametrize("size", [(28, 28), (20, 30)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_outline_at_identity_is_the_image_border(size: tuple[int, int], align_corners: bool) -> None:
    h, w = size
    [quad] = grid_outline(Affine(), Affine().identity_params(2), size, align_corners)
    assert quad.shape == (2, 5, 2)
    torch.testing.assert_close(quad[1], border(-0.5, -0.5, w - 0.5, h - 0.5))


def test_outline_of_a_centred_half_size_attention() -> None:
    [quad] = grid_outline(Attention(), torch.tensor([[0.5, 0.0, 0.0]]), (28, 28))
    torch.testing.assert_close(quad[0], border(6.5, 6.5, 20.5, 20.5))  # 14 pixels, 7..20, centred


def test_outline_keeps_head_dimensions() -> None:
    [quad] = grid_outline(Attention(), tiling_params(1, 2).expand(3, 2, 3), (28, 28))
    assert quad.shape == (3, 2, 5, 2)
    torch.testing.assert_close(quad[0, 0], border(-0.5, 6.5, 13.5, 20.5))  # left half
    torch.testing.assert_close(quad[0, 1], border(13.5, 6.5, 27.5, 20.5))  # right half


def test_outline_follows_a_rotation() -> None:
    # 90 degrees in pixel space on a 20x30 image: the output's top-left corner, (-15, -10) pixels from the centre
    # (14.5, 9.5), samples the input at R (-15, -10) = (10, -15) from the centre.
    [quad] = grid_outline(Similarity(), torch.tensor([[math.pi / 2, 0.0, 0.0, 0.0]]), (20, 30))
    torch.testing.assert_close(quad[0, 0], torch.tensor([24.5, -5.5]), atol=1e-4, rtol=0)


def test_tps_mesh_at_identity_is_the_regular_grid() -> None:
    tps = ThinPlateSpline((4, 4))
    lines = grid_outline(tps, tps.identity_params(1), (28, 28), samples=9)
    assert len(lines) == 14  # default: 7 horizontal + 7 vertical
    ticks = torch.linspace(-0.5, 27.5, 7)
    along = torch.linspace(-0.5, 27.5, 9)
    for k, v in enumerate(ticks):
        torch.testing.assert_close(lines[k][0], torch.stack((along, v.expand(9)), -1), atol=1e-4, rtol=0)
        torch.testing.assert_close(lines[7 + k][0], torch.stack((v.expand(9), along), -1), atol=1e-4, rtol=0)
    [closed] = grid_outline(tps, tps.identity_params(1), (28, 28), mesh=0, samples=5)
    assert closed.shape == (1, 17, 2)
    torch.testing.assert_close(closed[0, ::4], border(-0.5, -0.5, 27.5, 27.5), atol=1e-4, rtol=0)


def test_outline_rejects_bad_arguments() -> None:
    with pytest.raises(OptionError, match="mesh"):
        grid_outline(Affine(), Affine().identity_params(1), (28, 28), mesh=1)
    with pytest.raises(OptionError, match="2D"):
        grid_outline(Affine3D(), Affine3D().identity_params(1), (28, 28))
    with pytest.raises(ShapeError, match="params"):
        grid_outline(Affine(), torch.zeros(1, 3), (28, 28))


def test_attention_boxes_hand_checked() -> None:
    params = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.5, -0.5], [28 / 84, 0.0, 0.0]])
    expected = torch.tensor([[0, 0, 84, 84], [21, 21, 63, 63], [42, 0, 84, 42], [28, 28, 56, 56]]).float()
    torch.testing.assert_close(attention_boxes(params, (84, 84)), expected)
    # non-square, and align_corners=True: the identity still covers the whole image
    torch.testing.assert_close(attention_boxes(params[:1], (20, 30), True), torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    assert attention_boxes(tiling_params(2, 2).expand(5, 4, 3), (40, 40)).shape == (5, 4, 4)


@pytest.mark.parametrize("align_corners", [False, True])
def test_attention_boxes_agree_with_outline(gen: torch.Generator, align_corners: bool) -> None:
    params = torch.cat((0.2 + torch.rand(4, 1, generator=gen), torch.rand(4, 2, generator=gen) - 0.5), -1)
    [quad] = grid_outline(Attention(), params, (30, 40), align_corners, output_size=(10, 12))
    lo, hi = quad.amin(1) + 0.5, quad.amax(1) + 0.5  # pixel centres -> pixel edges
    boxes = attention_boxes(params, (30, 40), align_corners, output_size=(10, 12))
    torch.testing.assert_close(boxes, torch.cat((lo, hi), -1))


def test_the_colocalisation_metric_scores_boxes_without_the_drawing_code() -> None:
    """``ColocTask._misses`` takes its boxes from the geometry layer: scoring imports no picture module."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, types, torch\n"
        "from torchstn.train.tasks import ColocTask\n"
        "me = types.SimpleNamespace(image_size=84)\n"
        "params = torch.tensor([[0.5, 0.0, 0.0], [0.25, 0.5, 0.5]])\n"
        "boxes = torch.tensor([[21.0, 21.0, 63.0, 63.0], [0.0, 0.0, 10.0, 10.0]])\n"
        "print(int(ColocTask._misses(me, params, boxes)))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torchstn.viz', 'torchstn.visualize', 'matplotlib'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["1", "[]"]
