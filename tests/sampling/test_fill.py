"""padding="fill": a constant per channel outside the image, exact inside it for any finite fill."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.sampling._common import random_grid, random_input
from torchstn import sample

# --- padding with a constant ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fill_padding_is_a_constant_per_channel(gen: torch.Generator, mode: str, backend: str) -> None:
    x = random_input(gen, (2, 3, 6, 6), torch.float64)
    fill = torch.tensor([0.5, -2.0, 7.0], dtype=torch.float64)
    g = random_grid(gen, 2, 5, 5, torch.float64, spread=3.0)
    out = sample(x, g, mode, "fill", fill, backend=backend)  # type: ignore[arg-type]
    # Independent computation: pad the image with the constant far enough, then sample inside the padded frame.
    pad = 8
    padded = torch.cat([F.pad(x[:, c : c + 1], (pad,) * 4, value=float(fill[c])) for c in range(3)], dim=1)
    scale = torch.tensor([6 / (6 + 2 * pad)] * 2, dtype=torch.float64)
    expected = sample(padded, g * scale, mode, "border")  # type: ignore[arg-type]
    assert_close(out, expected, scale=1e3)


def test_fill_far_outside_is_exactly_the_fill(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 2, 4, 4), torch.float32)
    g = torch.full((2, 3, 3, 2), 5.0)
    out = sample(x, g, padding="fill", fill=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(out[:, :, 0, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_fill_equals_warping_a_validity_mask(gen: torch.Generator) -> None:
    x = random_input(gen, (1, 1, 6, 7), torch.float64)
    g = random_grid(gen, 1, 5, 5, torch.float64, spread=1.5)
    inside = sample(torch.ones_like(x), g)
    expected = sample(x, g) + 0.7 * (1 - inside)
    assert_close(sample(x, g, padding="fill", fill=0.7), expected)


def _padded_reference(x: torch.Tensor, g: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """Independent computation in float64: pad the image with the constant, sample inside the padded frame."""
    pad = 8
    h, w = x.shape[-2:]
    padded = F.pad(x.double(), (pad,) * 4, value=fill)
    scale = torch.tensor([w / (w + 2 * pad), h / (h + 2 * pad)], dtype=torch.float64)
    return sample(padded, g.double() * scale, mode, "border")  # type: ignore[arg-type]


@pytest.mark.parametrize("fill", [1e6, 1e8, -3e12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_large_fill_leaves_the_image_exact(
    gen: torch.Generator, fill: float, dtype: torch.dtype, mode: str, backend: str
) -> None:
    """Issue 17, defect 8: sampling ``input - fill`` and adding ``fill`` back lost the image to rounding (max
    error 0.031 at 1e6, all zeros at 1e8 in float32). Pixels whose kernel reads only the image must equal zero
    padding bit for bit; pixels wholly outside read exactly the fill; the rest agree with padding the image."""
    x = random_input(gen, (2, 2, 7, 9), dtype)
    g = random_grid(gen, 2, 6, 8, dtype, spread=1.6)
    g[:, 0, :4] = torch.tensor([0.1, -0.2], dtype=dtype)  # well inside
    g[:, 1, :4] = torch.tensor([3.0, -4.0], dtype=dtype)  # far outside
    out = sample(x, g, mode, "fill", fill, backend=backend)  # type: ignore[arg-type]
    zeros = sample(x, g, mode, "zeros", backend=backend)  # type: ignore[arg-type]
    assert torch.equal(out[:, :, 0, :4], zeros[:, :, 0, :4])
    assert (out[:, :, 1, :4] == torch.tensor(fill, dtype=dtype)).all()
    margin = 2 if mode == "bicubic" else 1  # taps beyond the point's own pixel
    h, w = x.shape[-2:]
    px = ((g[..., 0].double() + 1) * w - 1) / 2
    py = ((g[..., 1].double() + 1) * h - 1) / 2
    inside = (px >= margin) & (px <= w - 1 - margin) & (py >= margin) & (py <= h - 1 - margin)  # (B, H', W')
    inside = inside.unsqueeze(1).expand_as(out)
    assert inside.sum() > 10
    assert torch.equal(out[inside], zeros[inside])
    expected = _padded_reference(x, g, mode, fill)
    bound = 64 * torch.finfo(dtype).eps * abs(fill) + 1e-5  # the border pixels' share of the fill, to rounding
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=bound)
    torch.testing.assert_close(out.double()[inside], expected[inside], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan")])
def test_nonfinite_fill_is_refused(fill: float) -> None:
    from torchstn.errors import OptionError

    x, g = torch.rand(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)
    for value in (fill, [0.0, fill], torch.tensor([0.0, fill]), torch.tensor([[fill, 1.0]])):
        with pytest.raises(OptionError, match=r"fill: expected finite values"):
            sample(x, g, padding="fill", fill=value)  # type: ignore[arg-type]
