"""The reference sampler: the paper's sampling equation (3) in plain tensor ops.

``V_i = sum_nm U_nm k(x_i - m) k(y_i - n)`` with the integer kernel (4), the bilinear kernel (5) and PyTorch's
cubic-convolution kernel (``a = -0.75``), written with gathers and arithmetic. Autograd through these ops gives
exactly the gradients of equations (6)-(7) away from integer coordinates; at an integer coordinate the bilinear
kernel has a kink and both this and ``F.grid_sample`` take the one-sided derivative from the cell ``[m, m + 1]``.
Being plain ops it supports double backward and exports to ONNX without a ``GridSample`` operator. It reproduces
``grid_sample`` for every mode and padding mode, for both ``align_corners`` values.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn.sampling._backend import GridBackend

__all__ = ["ReferenceBackend", "reference_sample"]

_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


def _unnormalize(coord: Tensor, n: int, align_corners: bool) -> Tensor:
    """Normalised coordinate -> pixel coordinate (pixel ``i``'s centre at ``i``)."""
    if align_corners:
        return (coord + 1.0) * (0.5 * (n - 1))
    return ((coord + 1.0) * n - 1.0) * 0.5


def _reflect(p: Tensor, twice_low: int, twice_high: int) -> Tensor:
    """Reflect ``p`` into ``[twice_low / 2, twice_high / 2]`` (PyTorch's ``reflect_coordinates``)."""
    if twice_low == twice_high:
        return torch.zeros_like(p)
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    p = (p - low).abs()
    extra = torch.fmod(p, span)
    flips = torch.floor(p / span)
    return torch.where(torch.remainder(flips, 2) == 0, extra + low, span - extra + low)


def _pad_coord(p: Tensor, n: int, padding: str, align_corners: bool) -> Tensor:
    """Apply ``border`` or ``reflection`` padding to pixel coordinates (identity for ``zeros``)."""
    if padding == "border":
        return p.clamp(0, n - 1)
    if padding == "reflection":
        p = _reflect(p, 0, 2 * (n - 1)) if align_corners else _reflect(p, -1, 2 * n - 1)
        return p.clamp(0, n - 1)
    return p


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """Cubic-convolution weights of the taps at offsets -1, 0, 1, 2 for fractional position ``t``."""
    a = _CUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def reference_sample(input: Tensor, grid: Tensor, mode: str, padding: str, align_corners: bool) -> Tensor:
    """The sampling equation (3) in plain tensor ops (see the module docstring).

    Args:
        input: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        grid: ``(B, H', W', 2)`` or ``(B, D', H', W', 3)``.
        mode: ``"nearest"``, ``"bilinear"`` (trilinear on volumes) or ``"bicubic"`` (images).
        padding: ``"zeros"``, ``"border"`` or ``"reflection"``.
        align_corners: Coordinate convention.

    Returns:
        ``(B, C, H', W')`` or ``(B, C, D', H', W')``, equal to ``F.grid_sample`` with the same arguments.
    """
    b, c = input.shape[:2]
    in_sizes = list(input.shape[2:])[::-1]  # (W, H[, D]) matching the grid's (x, y[, z])
    out_shape = grid.shape[1:-1]
    flat = input.reshape(b, c, -1)  # (B, C, N_in)
    coords = grid.reshape(b, -1, grid.shape[-1]).unbind(-1)  # each (B, P)
    pix = [_unnormalize(g, n, align_corners) for g, n in zip(coords, in_sizes, strict=True)]
    strides = [1]
    for n in in_sizes[:-1]:
        strides.append(strides[-1] * n)

    def tap(indices: Sequence[Tensor]) -> Tensor:
        """Values at integer (float-valued) tap indices, 0 outside the input: (B, C, P)."""
        valid = torch.ones_like(indices[0], dtype=torch.bool)
        lin = torch.zeros_like(indices[0], dtype=torch.long)
        for idx, n, s in zip(indices, in_sizes, strides, strict=True):
            valid = valid & (idx >= 0) & (idx <= n - 1)
            lin = lin + idx.clamp(0, n - 1).long() * s
        vals = torch.gather(flat, 2, lin.unsqueeze(1).expand(b, c, lin.shape[-1]))
        return vals * valid.unsqueeze(1).to(vals.dtype)

    if mode == "nearest":
        out = tap([torch.round(_pad_coord(p, n, padding, align_corners)) for p, n in zip(pix, in_sizes, strict=True)])
    elif mode == "bilinear":
        pix = [_pad_coord(p, n, padding, align_corners) for p, n in zip(pix, in_sizes, strict=True)]
        lows = [torch.floor(p) for p in pix]
        fracs = [p - lo for p, lo in zip(pix, lows, strict=True)]
        out = torch.zeros(b, c, pix[0].shape[-1], device=input.device, dtype=input.dtype)
        for corner in itertools.product((0, 1), repeat=len(pix)):
            weight = torch.ones_like(fracs[0])
            for bit, f in zip(corner, fracs, strict=True):
                weight = weight * (f if bit else 1.0 - f)  # bilinear kernel max(0, 1 - |d|), eq. (5)
            out = out + weight.unsqueeze(1) * tap([lo + bit for lo, bit in zip(lows, corner, strict=True)])
    else:  # bicubic, 2D: taps at floor - 1 .. floor + 2, each padded on its own (as PyTorch does)
        lows = [torch.floor(p) for p in pix]
        weights = [_cubic_weights(p - lo) for p, lo in zip(pix, lows, strict=True)]
        out = torch.zeros(b, c, pix[0].shape[-1], device=input.device, dtype=input.dtype)
        for i, j in itertools.product(range(4), repeat=2):
            tx = _pad_coord(lows[0] + (i - 1), in_sizes[0], padding, align_corners)
            ty = _pad_coord(lows[1] + (j - 1), in_sizes[1], padding, align_corners)
            out = out + (weights[0][i] * weights[1][j]).unsqueeze(1) * tap([tx, ty])
    return out.reshape(b, c, *out_shape)


class ReferenceBackend(GridBackend):
    """The ``"reference"`` backend: :func:`reference_sample` (double backward, export without ``GridSample``)."""

    name = "reference"

    def sample(self, input: Tensor, grid: Tensor, mode: str, padding: str, align_corners: bool) -> Tensor:
        return reference_sample(input, grid, mode, padding, align_corners)
