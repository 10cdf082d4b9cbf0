"""Anti-aliased bilinear sampling: each output pixel averages its source footprint (``warp(..., antialias=True)``).

Bilinear sampling reads a 2x2 neighbourhood whatever the warp does, so a warp that shrinks (a crop smaller than
its window, a zoom out, the far side of a perspective) skips source pixels and aliases, as the paper warns. The
ideal output pixel is the source image box-filtered over the pixel's preimage (its *footprint*). Two methods,
chosen by the warp:

**Affine warps** (every matrix family but the projective one): the footprint is the same parallelogram at every
output pixel, so it is filtered exactly where it matters, at full resolution: :func:`prefiltered_affine_sample`
box-filters the input once per image with a separable kernel whose variance along each source axis is the
footprint's (:func:`affine_footprint_variance`; a box over unit cells of the matching width,
:func:`box_width`, :func:`box_kernel`), then takes the plain bilinear sample of the filtered image (through the
fused kernel where it runs). Every output pixel then averages its own footprint at its own sub-pixel position,
so a moving image does not flicker, and the filter costs a few passes over the input whatever the batch's
warps. For the axis-aligned families (``Attention``, ``Translation``: source x depends on output x alone) the
compiled CPU kernel does filter and sample in one pass that filters only the pixels the sampler reads and
builds the kernels itself (``csrc/axis_resample.cpp``, the same output and gradients to rounding), which is
what keeps an attention crop much smaller than its input cheap. What it approximates: the box over the
footprint's parallelogram by the box over its axis-aligned variance (exact for axis-aligned shrinks, and for
rotations with an isotropic shrink, whose footprint's variance is the same along every axis), plus bilinear's
own tent (which the supersampled reference has too); the prefilter's variance ramps in from zero over footprint
widths 1 to ``1 + PREFILTER_RAMP`` source pixels, so the output is continuous in the warp and nothing changes
where nothing shrinks. A footprint wider than twice the input (a window hundreds of times the image) takes the
mip-map below, whose cost does not grow with it.

**Projective and thin-plate-spline warps**, whose footprint varies per pixel, and ready-made grids: a
**mip-map** with a per-pixel level, as texture hardware and differentiable renderers (nvdiffrast) do:

1. **Footprint.** The grid's finite-difference Jacobian ``J = d(source pixel) / d(output pixel)`` (central
   differences inside, one-sided on the grid's edges, zero along an axis of length 1) gives the footprint's
   axes: its singular values, the major and minor axes in source pixels. Projective and thin-plate-spline warps
   get a footprint per pixel.
2. **No shrink, no change.** Where the major axis is ``<= 1 + 1e-2`` (identity, upsampling, rotation, and the
   rounding of their finite differences) the output *is* the plain bilinear sample, bit for bit, so turning the
   option on never costs correctness there.
3. **Pyramid.** Level ``k`` is the input box-averaged ``2^k x 2^k`` (the 2x2 mean of the previous level, odd
   sizes rounded up), built only as far as some pixel needs in eager mode. Each level is a valid image, so the
   padding modes keep their meaning: a level is read at the exact source position of the output pixel, in its
   own pixel units, with its own zeros, border or reflection padding (``"fill"`` samples ``input - fill`` with
   zeros and adds ``fill`` back).
4. **Level and trilinear blend.** The level is continuous, the mean over the two axes of ``log2(axis / (1 +
   1e-2))``, each clamped at 0 (the log of the axes' geometric mean, ``MAJOR_WEIGHT``), and clamped to the top
   level; the output blends the bilinear samples of levels ``floor(L)`` and ``floor(L) + 1`` by the fraction of
   ``L``, level 0 being the plain sample itself, so the output is continuous in the warp. In eager mode, when
   the pixels' ``floor(L)`` takes one or two values (any affine warp, mild perspectives), each level needed is
   read by its own ``grid_sample`` on the level itself (the grid rescaled by two constants per axis) and the
   samples are weighted by tents in ``L``; the plain sample is skipped when every pixel's level is 1 or more,
   and the pyramid when nothing shrinks. Otherwise, and always under ``torch.compile`` and export (the choice
   reads the levels' range on the host), levels 1 and up sit in one atlas (stacked with one zero row or column
   between them), and the blend costs one plain ``grid_sample`` plus one ``grid_sample`` of twice the output's
   points on the atlas. The two paths agree to rounding.

Why the mip-map there: its cost does not depend on the shrink (supersampling a ``K x K`` pattern costs ``K^2``
samples and still aliases beyond ``K``x; an elliptical weighted average costs the footprint's area), it is
made of standard operators (sums of halves, ``grid_sample``, a gather from a small table, arithmetic), so it is
differentiable, ``torch.compile``-able and exports to ONNX, and it degrades gracefully. What it approximates:
an isotropic box-then-tent filter ``2^L`` source pixels wide per output pixel. The level follows the geometric
mean of the footprint's axes, not OpenGL's major-axis rule (``MAJOR_WEIGHT = 1``): the two agree on isotropic
shrinks; on strongly anisotropic footprints (a grazing perspective) the major-axis rule over-blurs across the
minor axis (measured on a strong perspective: MNIST-RTS digits -1.2 dB against plain bilinear with it, +2.2 dB
with the geometric mean; the zone plate +4.0 and +6.9 dB), at the price of some aliasing left along the major
axis (the checkerboard's gain there drops from +15.2 to +11.3 dB). A ``[1, 3, 3, 1]`` binomial prefilter for
the levels was measured and rejected: it cut the zone plate's gain at 4x from +19.7 to +14.0 dB for a flicker
only 1.2x lower. The filter is somewhat wider than the exact box (a tent on top of the box), which blurs a
little more than the ideal. A level of odd size is rounded up: its last row or column averages what is left and
reaches up to one level pixel past the image's far edge, so padding starts that much later there; reflection
with ``align_corners=True`` reflects levels 1 and up about their edges rather than about the outer pixel
centres (a difference within a level pixel of the border).

Gradients: everything is plain autograd, so gradients reach the input (through the pyramid and both samples)
and the grid (hence the parameters): through the sampling positions and through the footprint, i.e. the level
and its blend weight depend on the grid's finite differences. The singular values use a guarded square root
(its derivative is bounded, and zero at exactly isotropic footprints, where the singular values cross). The
level's integer part only switches which pair of levels is blended; the output is continuous across it.

Both methods: bilinear sampling of 2D images only; non-finite grids must be caught before (``warp`` does). The
mip-map reads level 0 with the grid path's sampler; the affine prefilter samples its filtered image with the
backend ``backend=`` chooses without the option (the fused kernel under ``"auto"`` on the CPU). The prefilter's
gradient reaches the parameters through the sampling positions and through the kernels (their widths are
continuous functions of the matrix).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from torchstn._checks import capturing_graph
from torchstn.errors import OptionError

__all__ = [
    "PREFILTER_RAMP",
    "SHRINK_TOLERANCE",
    "affine_footprint_variance",
    "antialiased_sample",
    "box_kernel",
    "box_width",
    "footprint_level",
    "prefiltered_affine_sample",
    "static_radius",
]

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


#: The level is ``MAJOR_WEIGHT * log2(major) + (1 - MAJOR_WEIGHT) * log2(minor)`` (axes in source pixels, each
#: counted from ``1 + SHRINK_TOLERANCE``): 1 is OpenGL's rule (no aliasing in any direction, over-blurs
#: anisotropic footprints across their minor axis), 0.5 the geometric mean (the footprint's area).
MAJOR_WEIGHT = 0.5


def footprint_level(grid: Tensor, src_size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """The continuous mip level of each output pixel: ``log2`` of its footprint's size, in source pixels.

    Args:
        grid: ``(B, H', W', 2)`` normalised source coordinates ``(x, y)``.
        src_size: The source's ``(H, W)``.
        align_corners: The grid's convention.

    Returns:
        ``(B, H', W')``, ``w * a(sigma_1) + (1 - w) * a(sigma_2)`` with ``a(s) = max(0, log2(s / (1 +
        SHRINK_TOLERANCE)))``, ``sigma_1 >= sigma_2`` the singular values of the grid's finite-difference Jacobian
        in source pixels per output pixel and ``w = MAJOR_WEIGHT`` (0.5: the geometric mean of the axes): 0 where
        the warp does not shrink (``sigma_1 <= 1 + SHRINK_TOLERANCE``).

    Example:
        >>> import math
        >>> from torchstn.geometry import affine_grid
        >>> theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
        >>> level = footprint_level(affine_grid(theta, (8, 8)), (32, 32))  # 32 -> 8 px: a 4x shrink
        >>> torch.allclose(level, torch.full_like(level, math.log2(4 / 1.01)))
        True
    """
    h, w = src_size
    n = (w - 1, h - 1) if align_corners else (w, h)
    per_unit = torch.tensor([0.5 * n[0], 0.5 * n[1]], dtype=grid.dtype, device=grid.device)  # pixels per unit
    g = (grid * per_unit).permute(3, 0, 1, 2)  # (2, B, H', W'): source pixels (up to a shift), x then y
    dc = _derivative(g, 3)  # d(x, y) / d(column), contiguous
    dr = _derivative(g, 2)  # d(x, y) / d(row)
    p = torch.addcmul(dc[0] * dc[0], dc[1], dc[1])  # J^T J = [[p, r], [r, q]]
    q = torch.addcmul(dr[0] * dr[0], dr[1], dr[1])
    r = torch.addcmul(dc[0] * dr[0], dc[1], dr[1])
    half = 0.5 * (p - q)
    major2 = 0.5 * (p + q) + _guarded_sqrt(torch.addcmul(r * r, half, half))  # the largest eigenvalue of J^T J
    floor = (1.0 + SHRINK_TOLERANCE) ** 2
    major = torch.log2(major2.clamp_min(floor) * (1.0 / floor))
    if MAJOR_WEIGHT == 1.0:
        return 0.5 * major
    minor2 = (p * q - r * r) / major2.clamp_min(floor)  # the other eigenvalue (where the major one counts)
    minor = torch.log2(minor2.clamp_min(floor) * (1.0 / floor))
    return (0.5 * MAJOR_WEIGHT) * major + (0.5 * (1.0 - MAJOR_WEIGHT)) * minor


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


def _halve(cur: Tensor) -> Tensor:
    """The next level, ``ceil(size / 2)`` along each axis: the 2x2 mean, an odd size's last row or column
    averaging what is left (replicated: the same as ``avg_pool2d(cur, 2, ceil_mode=True)``, several times faster on
    the CPU, as two sums of unbound views, whose backward writes each gradient once)."""
    h, w = cur.shape[-2:]
    if h % 2 or w % 2:
        cur = F.pad(cur, (0, w % 2, 0, h % 2), mode="replicate")
        h, w = h + h % 2, w + w % 2
    lead = cur.shape[:-2]
    top, bottom = cur.reshape(*lead, h // 2, 2, w).unbind(-2)  # views of the even and odd rows
    left, right = (top + bottom).reshape(*lead, h // 2, w // 2, 2).unbind(-1)  # sums of 2: even, odd columns
    return (left + right) * 0.25


def _pyramid(input: Tensor, count: int) -> list[Tensor]:
    """Levels ``1..count``, each the prefiltered half of the previous."""
    levels: list[Tensor] = []
    cur = input
    for _ in range(count):
        cur = _halve(cur)
        levels.append(cur)
    return levels


def _top_level(h: int, w: int) -> int:
    """The number of halvings (``ceil``) that take ``h x w`` to ``1 x 1``."""
    return max(math.ceil(math.log2(h)) if h > 1 else 0, math.ceil(math.log2(w)) if w > 1 else 0)


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
    top = _top_level(h, w)
    if top == 0:
        return run(input, grid, padding, align_corners)
    level = footprint_level(grid, (h, w), align_corners).clamp_max(float(top))  # (B, H', W')
    low = level.detach().floor()
    frac = level - low
    low_i = low.long()
    general = capturing_graph() or torch.compiler.is_compiling()
    if not general:  # eager: skip what no pixel needs (the path changes a pixel's value by rounding only)
        lo, hi = (float(v) for v in torch.aminmax(level.detach()))
        general = not (math.isfinite(lo) and math.isfinite(hi))
    if general:
        need_plain, need_lower, count = True, True, top
    else:
        if hi <= 0.0:  # nothing shrinks
            return run(input, grid, padding, align_corners)
        need_plain = lo < 1.0  # some pixel blends level 0 (or is level 0)
        need_lower = hi >= 1.0  # some pixel's lower level is 1 or above
        count = min(top, int(hi) + 1)
        first_lo, first_hi = min(int(lo), top - 1), min(int(hi), top - 1)
        if first_hi - first_lo < _DIRECT_SPAN:  # a few levels in all: sample each level directly
            return _direct(input, grid, padding, align_corners, run, level, first_lo, first_hi + 1, lo > 0.0)
    levels = _pyramid(input, count)
    atlas, rows = _atlas(levels)
    pairs = []
    if need_lower:
        pairs.append(low_i.clamp(1, count))
    pairs.append((low_i + 1).clamp(1, count))
    pair = torch.stack(pairs, dim=-1)  # (B, H', W', 1 or 2): levels >= 1
    k = pair.to(input.dtype)
    scale = torch.exp2(-k)  # level k's pixels are 2^k source pixels; its size is ceil(size / 2^k), exactly
    lw, lh = torch.ceil(scale * w), torch.ceil(scale * h)
    first = torch.tensor([0.0, *rows], dtype=input.dtype, device=input.device)  # (count + 1,)
    row = first.index_select(0, pair.reshape(-1)).view_as(k)  # each level's first atlas row
    x = _to_pixels(grid[..., 0], w, align_corners).unsqueeze(-1)  # (B, H', W', 1) source pixels
    y = _to_pixels(grid[..., 1], h, align_corners).unsqueeze(-1)
    u = _pad((x + 0.5) * scale - 0.5, lw, padding) + 1.0  # atlas pixels: level pixels + the zero column
    v = _pad((y + 0.5) * scale - 0.5, lh, padding) + row
    ha, wa = atlas.shape[-2:]
    coords = torch.stack((u * (2.0 / (wa - 1)) - 1.0, v * (2.0 / (ha - 1)) - 1.0), dim=-1)  # (B, H', W', n, 2)
    b, ho, wo = grid.shape[:3]
    m = len(pairs)
    both = F.grid_sample(atlas, coords.reshape(b, ho, m * wo, 2), mode="bilinear", align_corners=True)
    both = both.view(b, input.shape[1], ho, wo, m)  # (B, C, H', W', n): levels floor(L) (>= 1), floor(L) + 1
    upper = both[..., -1]
    t = frac.unsqueeze(1)  # (B, 1, H', W')
    if not need_plain:
        lower = both[..., 0]
        return lower + t * (upper - lower)
    plain = run(input, grid, padding, align_corners)  # (B, C, H', W')
    lower = torch.where((low_i == 0).unsqueeze(1), plain, both[..., 0]) if need_lower else plain
    blend = lower + t * (upper - lower)
    return torch.where((level > 0).unsqueeze(1), blend, plain)


def _level_grid(
    grid: Tensor, src_size: tuple[int, int], lev_size: tuple[int, int], k: int, align_corners: bool
) -> Tensor:
    """``grid`` as normalised coordinates (``align_corners=False``) of level ``k``, of size ``lev_size``: the same
    source point, in the level's pixels (``(x + 0.5) / 2^k - 0.5``), so ``grid_sample`` pads the level itself."""
    coef = []
    for n, nk in zip(src_size[::-1], lev_size[::-1], strict=True):  # (x, y): width first
        if align_corners:  # x = (c + 1) (n - 1) / 2; level pixel P = (x + 0.5) / 2^k - 0.5; c' = (2P + 1) / nk - 1
            a = (n - 1) / (nk * 2.0**k)
            coef.append((a, a + 1.0 / (nk * 2.0**k) - 1.0))
        else:  # c' = (c + 1) n / (2^k nk) - 1
            a = n / (nk * 2.0**k)
            coef.append((a, a - 1.0))
    scale = torch.tensor([coef[0][0], coef[1][0]], dtype=grid.dtype, device=grid.device)
    shift = torch.tensor([coef[0][1], coef[1][1]], dtype=grid.dtype, device=grid.device)
    return torch.addcmul(shift, grid, scale)


#: Eager calls whose pixels' ``floor(L)`` spans fewer than this many values sample each level directly.
_DIRECT_SPAN = 2


def _direct(
    input: Tensor,
    grid: Tensor,
    padding: str,
    align_corners: bool,
    run: Sampler,
    level: Tensor,
    first: int,
    last: int,
    all_shrink: bool,
) -> Tensor:
    """Every pixel's level lies in ``[first, last]``: one ``grid_sample`` per level, on the level itself, weighted
    by the tent ``max(0, 1 - |L - k|)`` (``1 - frac`` on ``floor(L)``, ``frac`` on the next, zero elsewhere)."""
    h, w = input.shape[-2:]
    levels = [input, *_pyramid(input, last)]
    out: Tensor | None = None
    for k in range(first, last + 1):
        if k == 0:
            s = run(input, grid, padding, align_corners)
        else:
            lev = levels[k]
            g = _level_grid(grid, (h, w), (lev.shape[-2], lev.shape[-1]), k, align_corners)
            s = F.grid_sample(lev, g, mode="bilinear", padding_mode=padding, align_corners=False)
        if k == 0 and not all_shrink:
            plain = s
        if last == first + 1:  # one pair: a lerp
            out = s if out is None else torch.lerp(out, s, (level - first).unsqueeze(1))
            continue
        weight = (1.0 - (level - k).abs()).clamp_min(0.0).unsqueeze(1)  # (B, 1, H', W')
        out = s * weight if out is None else torch.addcmul(out, s, weight)
    assert out is not None
    if first == 0 and not all_shrink:
        return torch.where((level > 0).unsqueeze(1), out, plain)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Affine warps: the exact footprint, as a separable prefilter at full resolution
# --------------------------------------------------------------------------------------------------------------------

#: The prefilter's variance grows from 0 at a footprint width of 1 source pixel to the whole footprint's at
#: ``1 + PREFILTER_RAMP`` (continuous in the warp, and nothing changes where nothing shrinks).
PREFILTER_RAMP = 0.5


def box_width(variance: Tensor) -> Tensor:
    """The width ``L >= 1`` of the centred box whose area over unit cells (the weights :func:`box_kernel` gives)
    has ``variance``; closed form, differentiable in ``variance`` (``>= 0``).

    For ``2n + 1 <= L <= 2n + 3`` cells ``|m| <= n`` weigh ``1 / L`` and the two cells ``|m| = n + 1`` weigh
    ``f / L`` each with ``L = 2n + 1 + 2f``, so ``variance * L = 2 (n(n + 1)(2n + 1) / 6 + (n + 1)^2 f)``.

    Example:
        >>> box_width(torch.tensor([0.0, 2 / 3, 2.0]))  # 1 cell; 3 cells (variance 2/3); 5 cells (variance 2)
        tensor([1., 3., 5.])
    """
    n = torch.floor((torch.sqrt(1.0 + 12.0 * variance.detach()) - 1.0) / 2.0)
    s = n * (n + 1.0) * (2.0 * n + 1.0) / 6.0
    f = (variance * (2.0 * n + 1.0) - 2.0 * s) / (2.0 * ((n + 1.0) ** 2 - variance))
    return 2.0 * n + 1.0 + 2.0 * f


def box_kernel(width: Tensor, radius: int) -> Tensor:
    """``(B, 2 radius + 1)`` weights: the area of a centred box of ``width`` (``(B,)``, source pixels) over the
    unit cells ``[m - 1/2, m + 1/2]``, normalised to sum to 1. Width 1 gives exactly ``[0, ..., 1, ..., 0]``."""
    m = torch.arange(-radius, radius + 1, dtype=width.dtype, device=width.device)
    half = width[:, None] * 0.5
    w = (torch.minimum(m + 0.5, half) - torch.maximum(m - 0.5, -half)).clamp_min(0.0)
    return w / w.sum(-1, keepdim=True)


def affine_footprint_variance(
    matrix: Tensor, src_size: tuple[int, int], out_size: tuple[int, int], align_corners: bool
) -> tuple[Tensor, Tensor]:
    """The prefilter's variance along the source's x and y axes (source pixels squared), ``(B,)`` each.

    An output pixel of an affine warp covers the parallelogram spanned by the columns of ``J``, the Jacobian in
    source pixels per output pixel (the same for every pixel); the variance of its projection on the source's x
    axis is ``(J00^2 + J01^2) / 12``, that of a box of width ``wx = sqrt(J00^2 + J01^2)``; likewise y. A rotation
    keeps both widths at 1 (no filter), an isotropic shrink by ``s`` gives ``s`` on both axes whatever the angle.
    The variance used is ``wx^2 / 12`` times ``clamp((wx - 1) / PREFILTER_RAMP, 0, 1)``.
    """
    h, w = src_size
    oh, ow = out_size
    if align_corners:  # pixels per normalised unit, source and output
        sx, sy, ox, oy = (w - 1) / 2, (h - 1) / 2, max(ow - 1, 1) / 2, max(oh - 1, 1) / 2
    else:
        sx, sy, ox, oy = w / 2, h / 2, ow / 2, oh / 2
    per_pixel = torch.tensor([[sx / ox, sx / oy], [sy / ox, sy / oy]], dtype=matrix.dtype, device=matrix.device)
    w2 = (matrix[:, :2, :2] * per_pixel).square().sum(-1)  # (B, 2): wx^2, wy^2
    ramp = ((w2.clamp_min(1e-12).sqrt() - 1.0) * (1.0 / PREFILTER_RAMP)).clamp(0.0, 1.0)  # no gradient below 1
    v = w2 * ramp * (1.0 / 12.0)
    return v[:, 0], v[:, 1]


def _reflect_index(n: int, radius: int, align_corners: bool, device: torch.device) -> Tensor:
    """Indices of an axis of length ``n`` extended by ``radius`` each side as ``grid_sample`` reflects: about the
    edges (``align_corners=False``: ``x[-1] = x[0]``) or about the outer pixel centres (``x[-1] = x[1]``)."""
    i = torch.arange(-radius, n + radius, device=device)
    if align_corners:
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        m = i.remainder(period)
        return torch.where(m < n, m, period - m)
    period = 2 * n
    m = i.remainder(period)
    return torch.where(m < n, m, period - 1 - m)


def _filter_axis(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Valid correlation of ``x`` (``(B, C, H, W)``) along ``dim`` with each image's ``(K,)`` row of
    ``kernel`` (``(B, K)``): K shifted slices, multiplied and added (the kernel is symmetric)."""
    k = kernel.shape[1]
    n = x.shape[dim] - (k - 1)
    weights = kernel.to(x.dtype).view(-1, k, 1, 1, 1)
    out = x.narrow(dim, 0, n) * weights[:, 0]
    for j in range(1, k):
        out = out.addcmul(x.narrow(dim, j, n), weights[:, j])
    return out


class _SeparableFilter(torch.autograd.Function):
    """``torch.ops.torchstn.separable_filter`` (``csrc/separable_filter.cpp``) and its compiled backward (first
    order, as the fused warp's)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, kx: Tensor, ky: Tensor) -> Tensor:
        ctx.save_for_backward(input, kx, ky)
        out: Tensor = torch.ops.torchstn.separable_filter(input, kx, ky)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        input, kx, ky = ctx.saved_tensors
        gin, gkx, gky = torch.ops.torchstn.separable_filter_backward(
            grad.contiguous(), input, kx, ky, bool(ctx.needs_input_grad[0])
        )
        b, c = input.shape[:2]
        return (gin if ctx.needs_input_grad[0] else None), gkx.view(b, c, -1).sum(1), gky.view(b, c, -1).sum(1)


def _compiled_filter_runs(input: Tensor, static: bool) -> bool:
    if static or input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64):
        return False
    from torchstn import ext  # here: `python -m torchstn.ext` must not find it imported already

    return ext.available()


def _separable_filter(input: Tensor, kx: Tensor | None, ky: Tensor | None, static: bool = False) -> Tensor:
    """Valid correlation of each image with its kernels ``kx`` (``(B, Kx)``, along W) and ``ky`` (along H), None
    for an axis left alone: the compiled kernel on the CPU where it is built (one pass per axis, a fused
    backward), else shifted multiply-adds in tensor ops (any device, and with ``static``: under compile or
    export)."""
    if _compiled_filter_runs(input, static):
        one = torch.ones(input.shape[0], 1, dtype=input.dtype, device=input.device)
        kx = one if kx is None else kx.to(input.dtype).contiguous()
        ky = one if ky is None else ky.to(input.dtype).contiguous()
        out: Tensor = _SeparableFilter.apply(input.contiguous(), kx, ky)  # type: ignore[no-untyped-call]
        return out
    if kx is not None:
        input = _filter_axis(input, kx, -1)
    if ky is not None:
        input = _filter_axis(input, ky, -2)
    return input


_PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}


class _AxisWarp(torch.autograd.Function):
    """``torch.ops.torchstn.axis_warp_antialiased`` (``csrc/axis_resample.cpp``): the prefiltered sample of an
    axis-aligned affine warp in one pass, kernels included, with its compiled backward (first order, as the
    fused warp's). Returns the output, the ``(B,)`` mask of the images that do not shrink and whether some
    footprint is wider than twice the input (then nothing was computed)."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, matrix: Tensor, xs: Tensor, ys: Tensor, padding: int, align: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(input, matrix, xs, ys)
        ctx.options = (padding, align, PREFILTER_RAMP)
        out, still, wide = torch.ops.torchstn.axis_warp_antialiased(
            input, matrix, xs, ys, padding, align, PREFILTER_RAMP
        )
        ctx.mark_non_differentiable(still, wide)
        return out, still, wide

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        input, matrix, xs, ys = ctx.saved_tensors
        needs_input = bool(ctx.needs_input_grad[0])
        gin, gmat = torch.ops.torchstn.axis_warp_antialiased_backward(
            grad.contiguous(), input, matrix, xs, ys, *ctx.options, needs_input
        )
        return (gin if needs_input else None), gmat, None, None, None, None


def _axis_warp(
    input: Tensor,
    matrix: Tensor,
    size: tuple[int, int],
    padding: str,
    align_corners: bool,
    sample: Callable[[Tensor, Tensor, str], Tensor],
    wide: Callable[[Tensor, str], Tensor] | None,
) -> Tensor:
    """:func:`prefiltered_affine_sample` of an axis-aligned matrix by the compiled kernel: output column ``c``
    reads source ``x = m00 xo[c] + m02`` and row ``r`` source ``y = m11 yo[r] + m12``, each through its two
    bilinear taps' kernels, so the filtered image is computed only where it is read; the kernels are built there
    too, each image's to its own radius. Equal to the full-resolution filter then the bilinear sample, to
    rounding; the images that do not shrink get ``sample``'s plain output, bit for bit (the kernel skips them)."""
    from torchstn.sampling._fused import _target_coords  # here: the sampling package imports this module

    dtype = input.dtype
    xs, ys = _target_coords(size[1], align_corners, dtype), _target_coords(size[0], align_corners, dtype)
    m = matrix.to(dtype).contiguous()
    code = _PADDING_CODES[padding]
    out: Tensor
    out, still, wide_flag = _AxisWarp.apply(input.contiguous(), m, xs, ys, code, align_corners)  # type: ignore[no-untyped-call]
    any_still, all_still, too_wide = torch.stack((still.any(), still.all(), wide_flag)).tolist()  # one host read
    if too_wide:
        return _too_wide(wide, input, padding)
    if all_still:  # nothing shrinks (the kernel computed nothing): the plain warp itself
        return sample(input, matrix, padding)
    if any_still:  # the kernel left them zero
        out = torch.where(still.view(-1, 1, 1, 1), sample(input, matrix, padding), out)
    return out


def _too_wide(wide: Callable[[Tensor, str], Tensor] | None, input: Tensor, padding: str) -> Tensor:
    """The output of a batch with a footprint wider than twice the input: the caller's mip-map."""
    if wide is None:
        raise OptionError("antialias=True: a footprint wider than twice the input needs the mip-map fallback (wide=)")
    return wide(input, padding)


def prefiltered_affine_sample(
    input: Tensor,
    matrix: Tensor,
    size: tuple[int, int],
    padding: str,
    align_corners: bool,
    sample: Callable[[Tensor, Tensor, str], Tensor],
    static: bool = False,
    axis_aligned: bool = False,
    wide: Callable[[Tensor, str], Tensor] | None = None,
) -> Tensor:
    """``antialias=True`` for an affine warp: the input box-filtered over each output pixel's footprint, then
    sampled bilinearly by ``sample(source, matrix, padding)`` (the plain warp of ``(B, 2, 3)`` matrices).

    The footprint is the same for every output pixel of an affine warp, so the filter is one separable kernel
    per image and axis (:func:`affine_footprint_variance`, :func:`box_width`, :func:`box_kernel`), run over the
    whole input at full resolution: each output pixel then averages its own footprint, at any sub-pixel
    position, which is what keeps a moving image from flickering. Zeros and border padding are filtered too:
    the input is extended by twice the kernel's radius as the padding extends it, filtered to a band one radius
    wide around the image, and the band is sampled with the matrix rescaled to it; reflection commutes with a
    symmetric filter, so the reflected image is filtered to its own size. Where nothing in the batch shrinks
    this is ``sample(input, matrix, padding)`` itself; an image that does not shrink in a batch that does gets
    its plain sample.

    In eager mode the kernels are as long as the batch's widest footprint needs (one read of two numbers to the
    host). With ``static`` (a graph being captured or compiled, where values cannot be read) the kernels have a
    radius fixed by the sizes alone, :func:`static_radius` (footprints up to three times the size ratio wide;
    wider ones are filtered at that width), the images that do not shrink are selected in the graph, and the
    output equals eager mode's to rounding.

    With ``axis_aligned`` (the caller guarantees ``matrix[:, 0, 1] = matrix[:, 1, 0] = 0`` for every parameter
    value: :attr:`~torchstn.transforms.MatrixTransform.axis_aligned`) and the compiled kernel running, filter and
    sample are one pass that filters only the pixels the sampler reads (``csrc/axis_resample.cpp``); same output
    to rounding, a fraction of the cost when the output is smaller than the input.

    In eager mode, when some footprint is wider than twice the input along an axis (a window many times the
    image: the kernels, the band and the tables all grow with the footprint), ``wide(input, padding)`` gives the
    output instead: the caller's mip-map (:func:`antialiased_sample`), whose cost does not depend on the shrink.
    """
    if axis_aligned and _compiled_filter_runs(input, static):
        return _axis_warp(input, matrix, size, padding, align_corners, sample, wide)
    h, w = input.shape[-2:]
    vx, vy = affine_footprint_variance(matrix, (h, w), size, align_corners)
    if static:
        rx, ry = static_radius(w, size[1]), static_radius(h, size[0])
        vx = vx.clamp(max=_box_variance_of_width(2 * rx + 1))
        vy = vy.clamp(max=_box_variance_of_width(2 * ry + 1))
        any_still = True
    else:
        with torch.no_grad():  # the one host sync: the kernels' sizes, and whether some image does not shrink
            top_x, top_y, any_still = torch.stack((vx.max(), vy.max(), ((vx <= 0) & (vy <= 0)).any())).tolist()
        if top_x <= 0 and top_y <= 0:
            return sample(input, matrix, padding)
        rx, ry = _radius(top_x), _radius(top_y)
        if rx > w or ry > h:  # a kernel wider than twice the input: the mip-map
            return _too_wide(wide, input, padding)
    # Both axes' kernels in one go, to the larger radius; each keeps its own length (its outer taps are zero).
    top = max(rx, ry)
    kernels = box_kernel(box_width(torch.stack((vx, vy), -1).flatten()), top).view(vx.shape[0], 2, -1)
    kx = None if rx == 0 else kernels[:, 0, top - rx : top + rx + 1]
    ky = None if ry == 0 else kernels[:, 1, top - ry : top + ry + 1]
    src = input
    band = padding != "reflection"  # zeros and border: filter a band around the image; reflection: in place
    if padding == "reflection":
        if rx:
            src = src.index_select(-1, _reflect_index(w, rx, align_corners, src.device))
        if ry:
            src = src.index_select(-2, _reflect_index(h, ry, align_corners, src.device))
    else:
        mode = "constant" if padding == "zeros" else "replicate"
        src = F.pad(src, (2 * rx, 2 * rx, 2 * ry, 2 * ry), mode=mode)
    src = _separable_filter(src, kx, ky, static)
    m = matrix
    if band:
        if align_corners:
            scale = ((w - 1) / max(w - 1 + 2 * rx, 1), (h - 1) / max(h - 1 + 2 * ry, 1))
        else:
            scale = (w / (w + 2 * rx), h / (h + 2 * ry))
        m = torch.stack((matrix[:, 0] * scale[0], matrix[:, 1] * scale[1]), 1)
    out = sample(src, m, padding)
    if band and any_still:  # the images that do not shrink: their plain sample (bit for bit)
        still = ((vx <= 0) & (vy <= 0)).view(-1, 1, 1, 1)
        out = torch.where(still, sample(input, matrix, padding), out)
    return out


def _radius(variance: float) -> int:
    """The kernel radius an axis needs for footprints up to ``variance`` (0: no filter along it), in Python."""
    if variance <= 0:
        return 0
    if not math.isfinite(variance):  # a footprint too wide for the dtype: wider than any input (the mip-map)
        return sys.maxsize
    n = math.floor((math.sqrt(1.0 + 12.0 * variance) - 1.0) / 2.0)
    s = n * (n + 1) * (2 * n + 1) / 6.0
    width = 2 * n + 1 + 2 * (variance * (2 * n + 1) - 2 * s) / (2 * ((n + 1) ** 2 - variance))
    return max(1, math.ceil((width - 1.0) / 2.0))


def static_radius(n: int, out: int) -> int:
    """The prefilter's radius along an axis of ``n`` source pixels sampled to ``out``, when it cannot depend on
    the parameters (a captured or compiled graph): room for footprints three times the size ratio wide."""
    return max(1, math.ceil(1.5 * n / max(out, 1)))


def _box_variance_of_width(width: int) -> float:
    """The variance of :func:`box_kernel` of an odd integer ``width`` (``2n + 1`` cells of equal weight)."""
    n = (width - 1) // 2
    return n * (n + 1) / 3.0
