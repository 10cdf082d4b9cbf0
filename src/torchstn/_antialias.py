"""Anti-aliased bilinear sampling: each output pixel averages its source footprint (``warp(..., antialias=True)``).

Bilinear sampling reads a 2x2 neighbourhood whatever the warp does, so a warp that shrinks (a crop smaller than
its window, a zoom out, the far side of a perspective) skips source pixels and aliases, as the paper warns. The
ideal output pixel is the source image box-filtered over the pixel's preimage (its *footprint*); this module
approximates that with a **mip-map**, as texture hardware and differentiable renderers (nvdiffrast) do:

1. **Footprint.** The grid's finite-difference Jacobian ``J = d(source pixel) / d(output pixel)`` (central
   differences inside, one-sided on the grid's edges, zero along an axis of length 1) gives the footprint's
   axes. Its largest singular value ``sigma`` is the major axis in source pixels: the most the warp shrinks in any
   direction at that pixel. Projective and thin-plate-spline warps get a footprint per pixel.
2. **No shrink, no change.** Where ``sigma <= 1 + 1e-2`` (identity, upsampling, rotation, and the rounding of
   their finite differences) the output *is* the plain bilinear sample, bit for bit, so turning the option on
   never costs correctness there.
3. **Pyramid.** Level ``k`` is the input box-averaged ``2^k x 2^k`` (the 2x2 mean of the previous level, odd
   sizes rounded up), down to one pixel. Each level is a valid image, so the padding modes keep their meaning:
   a level is read at the exact source position of the output pixel, in its own pixel units, with its own
   zeros, border or reflection padding (``"fill"`` samples ``input - fill`` with zeros and adds ``fill`` back).
4. **Level and trilinear blend.** The level is continuous, ``L = log2(sigma / (1 + 1e-2))``, clamped to the
   top level; the output blends the bilinear samples of levels ``floor(L)`` and ``floor(L) + 1`` by the fraction
   of ``L``, level 0 being the plain sample itself, so the output is continuous in the warp. Levels 1 and up
   sit in one atlas (stacked with one zero row or column between them), so the whole blend costs **one plain
   ``grid_sample`` plus one ``grid_sample`` of twice the output's points** on an image a third of the input's
   size, plus the pyramid and the Jacobian's elementwise ops.

Why this method: its cost does not depend on the shrink (supersampling a ``K x K`` pattern costs ``K^2``
samples and still aliases beyond ``K``x; an elliptical weighted average costs the footprint's area), it is
made of standard operators (strided sums, ``grid_sample``, a gather from a small table, arithmetic), so it is
differentiable, ``torch.compile``-able and exports to ONNX, and it degrades gracefully. What it approximates:
an isotropic box-then-tent filter ``2^L`` source pixels wide per output pixel. The level follows the
footprint's **major** axis (as OpenGL's ``max`` rule), so nothing aliases along any direction, at the price of
over-blurring strongly anisotropic footprints (a grazing perspective) across their minor axis; the filter is
also somewhat wider than the exact box (a tent on top of the box), which blurs a little more than the ideal.
A level of odd size is rounded up: its last row or column averages what is left and reaches up to one level
pixel past the image's far edge, so padding starts that much later there; reflection with ``align_corners=True``
reflects levels 1 and up about their edges rather than about the outer pixel centres (a difference within a
level pixel of the border).

Gradients: everything is plain autograd, so gradients reach the input (through the pyramid and both samples)
and the grid (hence the parameters): through the sampling positions and through the footprint, i.e. the level
and its blend weight depend on the grid's finite differences. The singular value uses a guarded square root
(its derivative is bounded, and zero at exactly isotropic footprints, where the singular values cross). The
level's integer part only switches which pair of levels is blended; the output is continuous across it.

Only bilinear sampling of 2D images, on the grid path (the fused kernel of :mod:`torchstn.ext` is never used
with ``antialias=True``); non-finite grids must be caught before (``warp`` does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstn.errors import OptionError

__all__ = ["SHRINK_TOLERANCE", "antialiased_sample", "footprint_level"]

#: Footprints whose major axis is at most ``1 + SHRINK_TOLERANCE`` source pixels count as not shrinking.
SHRINK_TOLERANCE = 1e-2

Sampler = Callable[[Tensor, Tensor, str, bool], Tensor]


def _grid_sample(input: Tensor, grid: Tensor, padding: str, align_corners: bool) -> Tensor:
    return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding, align_corners=align_corners)


def _to_pixels(coord: Tensor, n: int, align_corners: bool) -> Tensor:
    """Normalised coordinate -> source pixel coordinate (pixel ``i``'s centre at ``i``), as ``grid_sample``."""
    if align_corners:
        return (coord + 1.0) * (0.5 * (n - 1))
    return ((coord + 1.0) * n - 1.0) * 0.5


def _derivative(t: Tensor, dim: int) -> Tensor:
    """Finite difference of ``t`` along ``dim``: central inside, one-sided at both ends, zero for length 1."""
    n = t.shape[dim]
    if n == 1:
        return torch.zeros_like(t)
    first = t.narrow(dim, 1, 1) - t.narrow(dim, 0, 1)
    last = t.narrow(dim, n - 1, 1) - t.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat((first, last), dim)
    inner = (t.narrow(dim, 2, n - 2) - t.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat((first, inner, last), dim)


def _guarded_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero (not infinite) derivative at 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def footprint_level(grid: Tensor, src_size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """The continuous mip level of each output pixel: ``log2`` of its footprint's major axis, in source pixels.

    Args:
        grid: ``(B, H', W', 2)`` normalised source coordinates ``(x, y)``.
        src_size: The source's ``(H, W)``.
        align_corners: The grid's convention.

    Returns:
        ``(B, H', W')``, ``max(0, log2(sigma / (1 + SHRINK_TOLERANCE)))`` where ``sigma`` is the largest singular
        value of the grid's finite-difference Jacobian in source pixels per output pixel: 0 where the warp does
        not shrink.

    Example:
        >>> import math
        >>> from torchstn.geometry import affine_grid
        >>> theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
        >>> level = footprint_level(affine_grid(theta, (8, 8)), (32, 32))  # 32 -> 8 px: a 4x shrink
        >>> torch.allclose(level, torch.full_like(level, math.log2(4 / 1.01)))
        True
    """
    h, w = src_size
    px = _to_pixels(grid[..., 0], w, align_corners)  # (B, H', W')
    py = _to_pixels(grid[..., 1], h, align_corners)
    a, c = _derivative(px, 2), _derivative(py, 2)  # d(x, y) / d(column)
    b, d = _derivative(px, 1), _derivative(py, 1)  # d(x, y) / d(row)
    p, q, r = a * a + c * c, b * b + d * d, a * b + c * d  # J^T J = [[p, r], [r, q]]
    half = 0.5 * (p - q)
    sigma2 = 0.5 * (p + q) + _guarded_sqrt(half * half + r * r)  # the largest eigenvalue of J^T J
    floor = (1.0 + SHRINK_TOLERANCE) ** 2
    return 0.5 * torch.log2(sigma2.clamp_min(floor) / floor)


def _pad(p: Tensor, n: Tensor, padding: str) -> Tensor:
    """Level pixel coordinates with ``padding`` applied (``n``: the level's size along this axis, per point).
    For zeros, clamp into ``[-1, n]``: the atlas's zero margins then give exactly zero padding."""
    if padding == "zeros":
        return torch.minimum(p.clamp_min(-1.0), n)
    if padding == "border":
        return torch.minimum(p.clamp_min(0.0), n - 1)
    span = n  # reflect about the level's edges -0.5 and n - 0.5, as align_corners=False does
    q = (p + 0.5).abs()
    extra = torch.fmod(q, span)
    flips = torch.floor(q / span)
    q = torch.where(torch.remainder(flips, 2) == 0, extra, span - extra) - 0.5
    return torch.minimum(q.clamp_min(0.0), n - 1)


def _pyramid(input: Tensor) -> list[Tensor]:
    """Levels 1.. of the box pyramid down to 1x1: each the 2x2 mean of the previous, odd sizes rounded up (the
    last row or column, replicated, averages with itself: ``avg_pool2d(..., ceil_mode=True)``, faster)."""
    levels: list[Tensor] = []
    cur = input
    while cur.shape[-1] > 1 or cur.shape[-2] > 1:
        h, w = cur.shape[-2:]
        if h % 2 or w % 2:
            cur = F.pad(cur, (0, w % 2, 0, h % 2), mode="replicate")
        cur = (cur[..., ::2, ::2] + cur[..., 1::2, ::2] + cur[..., ::2, 1::2] + cur[..., 1::2, 1::2]) * 0.25
        levels.append(cur)
    return levels


def _atlas(levels: list[Tensor]) -> tuple[Tensor, list[int]]:
    """Levels stacked vertically in one image, a zero row above each and a zero column left and right of the
    widest; returns the atlas ``(B, C, H_a, W_a)`` and each level's first row."""
    width = levels[0].shape[-1] + 2
    parts, rows, top = [], [], 0
    for lev in levels:
        parts.append(F.pad(lev, (1, width - 1 - lev.shape[-1], 1, 0)))  # zero column left, row above
        rows.append(top + 1)
        top += lev.shape[-2] + 1
    parts.append(torch.zeros_like(parts[-1][..., :1, :]))  # a zero row below the last level
    return torch.cat(parts, dim=-2), rows


def antialiased_sample(
    input: Tensor,
    grid: Tensor,
    padding: str = "zeros",
    align_corners: bool = False,
    fill: Tensor | float | None = None,
    *,
    sampler: Sampler | None = None,
) -> Tensor:
    """Bilinear sampling that averages each output pixel's source footprint (see the module docstring).

    Args:
        input: ``(B, C, H, W)`` images.
        grid: ``(B, H', W', 2)`` normalised source coordinates ``(x, y)``, same dtype and device, finite.
        padding: ``"zeros"``, ``"border"``, ``"reflection"`` or ``"fill"``.
        fill: With ``padding="fill"``: a number or a tensor broadcastable to ``(B, C, 1, 1)``.
        align_corners: The grid's convention, as in :func:`torchstn.sample`.
        sampler: ``sampler(input, grid, padding, align_corners)`` gives the plain bilinear sample (level 0);
            default ``F.grid_sample``. The levels above are always read with ``F.grid_sample``.

    Returns:
        ``(B, C, H', W')``: equal to ``sampler(input, grid, ...)`` wherever the warp does not shrink.

    Example:
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> x[..., ::2] = 1.0  # stripes one pixel wide: the plain 4x shrink reads only the zeros or the ones
        >>> from torchstn.geometry import affine_grid
        >>> g = affine_grid(torch.tensor([[[1.0, 0, 0.125], [0, 1.0, 0]]]), (2, 2))
        >>> F.grid_sample(x, g, padding_mode="border", align_corners=False).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> antialiased_sample(x, g, "border").flatten().round(decimals=2).tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    run = _grid_sample if sampler is None else sampler
    if padding == "fill":
        if fill is None:
            raise OptionError("fill: a value is required when padding='fill'")
        shift = torch.as_tensor(fill, dtype=input.dtype, device=input.device)
        if shift.ndim in (1, 2):  # (C,) or (B, C)
            shift = shift.reshape(-1 if shift.ndim == 2 else 1, shift.shape[-1], 1, 1)
        return antialiased_sample(input - shift, grid, "zeros", align_corners, sampler=sampler) + shift
    h, w = input.shape[-2:]
    plain = run(input, grid, padding, align_corners)  # (B, C, H', W')
    if h == 1 and w == 1:
        return plain
    levels = _pyramid(input)
    top = len(levels)
    level = footprint_level(grid, (h, w), align_corners).clamp_max(float(top))  # (B, H', W')
    low = level.detach().floor()
    frac = level - low
    low_i = low.long()
    pair = torch.stack((low_i.clamp_min(1), (low_i + 1).clamp_max(top)), dim=-1)  # (B, H', W', 2) levels >= 1
    atlas, rows = _atlas(levels)
    k = pair.to(input.dtype)
    scale = torch.exp2(-k)  # level k's pixels are 2^k source pixels; its size is ceil(size / 2^k), exactly
    lw, lh = torch.ceil(scale * w), torch.ceil(scale * h)
    first = torch.tensor([0.0, *rows], dtype=input.dtype, device=input.device)  # (top + 1,)
    row = first.index_select(0, pair.reshape(-1)).view_as(k)  # each level's first atlas row
    x = _to_pixels(grid[..., 0], w, align_corners).unsqueeze(-1)  # (B, H', W', 1) source pixels
    y = _to_pixels(grid[..., 1], h, align_corners).unsqueeze(-1)
    u = _pad((x + 0.5) * scale - 0.5, lw, padding) + 1.0  # atlas pixels: level pixels + the zero column
    v = _pad((y + 0.5) * scale - 0.5, lh, padding) + row
    ha, wa = atlas.shape[-2:]
    coords = torch.stack((u * (2.0 / (wa - 1)) - 1.0, v * (2.0 / (ha - 1)) - 1.0), dim=-1)  # (B, H', W', 2, 2)
    b, ho, wo = grid.shape[:3]
    both = F.grid_sample(atlas, coords.reshape(b, ho, 2 * wo, 2), mode="bilinear", align_corners=True)
    both = both.view(b, input.shape[1], ho, wo, 2)  # (B, C, H', W', 2): levels floor(L) (>= 1) and floor(L) + 1
    lower = torch.where((low_i == 0).unsqueeze(1), plain, both[..., 0])
    t = frac.unsqueeze(1)  # (B, 1, H', W')
    blend = lower + t * (both[..., 1] - lower)
    return torch.where((level > 0).unsqueeze(1), blend, plain)
