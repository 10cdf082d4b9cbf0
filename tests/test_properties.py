"""Property tests (hypothesis) over random shapes and parameters for every transform family and the samplers.

Random tensors come from a ``torch.Generator`` seeded by a drawn integer, and hypothesis runs derandomized, so
every run sees the same examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchstn
from torchstn import Affine, Affine3D, Attention, Projective, Similarity, ThinPlateSpline, Transform, Translation
from torchstn.geometry import normalized_coords
from torchstn.sampling import Backend, Mode, Padding
from torchstn.transforms import MatrixTransform

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None, print_blob=False)

#: Family name -> factory (TPS control grids are drawn separately, see ``_make``).
FAMILIES: dict[str, Callable[[], Transform]] = {
    "affine": Affine,
    "attention": Attention,
    "similarity": Similarity,
    "translation": Translation,
    "projective": Projective,
    "tps": ThinPlateSpline,
    "affine3d": Affine3D,
}
MATRIX_FAMILIES = [name for name in FAMILIES if name != "tps"]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 9)


def _make(name: str, tps_grid: tuple[int, int] = (4, 4)) -> Transform:
    return ThinPlateSpline(tps_grid) if name == "tps" else FAMILIES[name]()


def _noise(gen: torch.Generator, *shape: int) -> Tensor:
    """Standard normal noise in float64, clipped to 2.5 sigma so that drawn parameters stay well conditioned."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).clamp(-2.5, 2.5)


def random_params(t: Transform, batch: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Well-conditioned random parameters of ``t``: ``(batch, t.num_params)``.

    Affine matrices stay diagonally dominant (determinant >= 0.5), projective denominators stay in [0.7, 1.3] on
    [-1.5, 1.5]^2, and TPS control points move by 0.05 (std) so the spline does not fold.
    """
    n = t.num_params
    eye = t.identity_params(batch, dtype=torch.float64)
    z = _noise(gen, batch, n)
    if isinstance(t, Attention):
        p = torch.stack((torch.exp(0.4 * z[:, 0]), 0.3 * z[:, 1], 0.3 * z[:, 2]), dim=-1)
    elif isinstance(t, Similarity):
        # |angle| <= 3 < pi: within one turn, so params_from_matrix gives the same angle back
        p = torch.stack((1.2 * z[:, 0], 0.3 * z[:, 1], 0.3 * z[:, 2], 0.3 * z[:, 3]), dim=-1)
    elif isinstance(t, Translation):
        p = 0.3 * z
    elif isinstance(t, Projective):
        p = eye + torch.cat((0.1 * z[:, :6], 0.04 * z[:, 6:]), dim=-1)
    elif isinstance(t, ThinPlateSpline):
        p = eye + 0.05 * z
    else:  # Affine, Affine3D
        p = eye + 0.1 * z
    return p.to(dtype)


def pixel_centres(size: tuple[int, ...], align_corners: bool, dtype: torch.dtype) -> Tensor:
    """Normalised ``(x, y[, z])`` centres of the output pixels of ``size`` in grid (row-major) order: ``(N, nd)``."""
    axes = [normalized_coords(n, align_corners, dtype=dtype) for n in size]  # (D,) H, W
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1).reshape(-1, len(size))  # (N, nd), x first


def sizes(nd: int, elements: st.SearchStrategy[int] = dims) -> st.SearchStrategy[tuple[int, ...]]:
    """Spatial sizes of ``nd`` axes, each drawn on its own (so mostly non-square)."""
    return st.tuples(*[elements] * nd)


# ---------------------------------------------------------------------------------------------- grid generators


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), batch=dims, dtype=st.sampled_from(DTYPES), align_corners=st.booleans(), seed=seeds)
def test_grid_shape_dtype_contiguous(
    family: str, data: st.DataObject, batch: int, dtype: torch.dtype, align_corners: bool, seed: int
) -> None:
    tps_grid = (data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5)))
    t = _make(family, tps_grid)
    size = data.draw(sizes(t.ndim))
    src_size = data.draw(sizes(t.ndim))
    params = random_params(t, batch, torch.Generator().manual_seed(seed), dtype)
    grid = t.grid(params, size, align_corners=align_corners, src_size=src_size)
    assert grid.shape == (batch, *size, t.ndim)
    assert grid.dtype == dtype
    assert grid.is_contiguous()
    assert torch.isfinite(grid).all()


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), batch=st.integers(1, 3), channels=st.integers(1, 3), align_corners=st.booleans(), seed=seeds)
def test_identity_params_reproduce_input(
    family: str, data: st.DataObject, batch: int, channels: int, align_corners: bool, seed: int
) -> None:
    t = _make(family, (data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))))
    size = data.draw(sizes(t.ndim))
    modes: list[Mode] = ["nearest", "bilinear", "bicubic"] if t.ndim == 2 else ["nearest", "trilinear"]
    mode = data.draw(st.sampled_from(modes))
    x = torch.rand(batch, channels, *size, generator=torch.Generator().manual_seed(seed))  # float32
    out = torchstn.warp(x, t.identity_params(batch), t, mode=mode, align_corners=align_corners)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ matrix algebra


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@SETTINGS
@given(data=st.data(), batch=st.integers(1, 5), seed=seeds)
def test_inverse_params_compose_to_identity(family: str, data: st.DataObject, batch: int, seed: int) -> None:
    t = _make(family)
    assert isinstance(t, MatrixTransform)
    src_size = data.draw(sizes(t.ndim))
    params = random_params(t, batch, torch.Generator().manual_seed(seed), torch.float64)
    inv = t.inverse_params(params, src_size=src_size)
    assert inv.shape == params.shape
    m, m_inv = t.matrix(params, src_size=src_size), t.matrix(inv, src_size=src_size)
    eye = torch.eye(t.ndim + 1, dtype=torch.float64).expand_as(m)
    for product in (torchstn.compose(m, m_inv), torchstn.compose(m_inv, m)):
        product = product / product[:, -1:, -1:]  # homographies are equal up to scale
        torch.testing.assert_close(product, eye, rtol=0, atol=1e-9)
    # the inverse's inverse gives the parameters back
    torch.testing.assert_close(t.inverse_params(inv, src_size=src_size), params, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------------- points


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), batch=st.integers(1, 4), num_points=st.integers(0, 12), seed=seeds)
def test_map_points_inverse_undoes_forward(
    family: str, data: st.DataObject, batch: int, num_points: int, seed: int
) -> None:
    t = _make(family, (data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))))
    src_size = data.draw(sizes(t.ndim))
    gen = torch.Generator().manual_seed(seed)
    params = random_params(t, batch, gen, torch.float64)
    pts = torch.rand(batch, num_points, t.ndim, generator=gen, dtype=torch.float64) * 2 - 1
    fwd = t.map_points(params, pts, src_size=src_size)
    assert fwd.shape == pts.shape
    atol = 1e-6 if family == "tps" else 1e-9  # TPS inverts by Newton's method down to a 1e-7 residual
    torch.testing.assert_close(t.map_points(params, fwd, inverse=True, src_size=src_size), pts, rtol=0, atol=atol)
    bwd = t.map_points(params, pts, inverse=True, src_size=src_size)
    torch.testing.assert_close(t.map_points(params, bwd, src_size=src_size), pts, rtol=0, atol=atol)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("family", FAMILIES)
def test_map_points_accepts_no_points(family: str, inverse: bool) -> None:
    """``points`` may be empty (``(B, 0, nd)``, an image without landmarks); the result is empty too."""
    t = _make(family)
    params = t.identity_params(2, dtype=torch.float64)
    out = t.map_points(params, torch.zeros(2, 0, t.ndim, dtype=torch.float64), inverse=inverse)
    assert out.shape == (2, 0, t.ndim)


@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data(), batch=st.integers(1, 4), dtype=st.sampled_from(DTYPES), align_corners=st.booleans(), seed=seeds)
def test_map_points_matches_grid(
    family: str, data: st.DataObject, batch: int, dtype: torch.dtype, align_corners: bool, seed: int
) -> None:
    """``map_points(params, p)`` is where the grid samples for the output pixel centred at ``p``."""
    t = _make(family, (data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))))
    size = data.draw(sizes(t.ndim))
    src_size = data.draw(sizes(t.ndim))
    params = random_params(t, batch, torch.Generator().manual_seed(seed), dtype)
    grid = t.grid(params, size, align_corners=align_corners, src_size=src_size)
    pts = pixel_centres(size, align_corners, dtype).expand(batch, -1, -1)
    mapped = t.map_points(params, pts, src_size=src_size)
    tol = TOL[dtype] * (10 if family == "tps" else 1)  # TPS: float32 kernel evaluated directly vs cached weights
    torch.testing.assert_close(mapped, grid.reshape(batch, -1, t.ndim), rtol=tol, atol=tol)


def test_projective_map_points_uses_the_transform_eps() -> None:
    """Regression: ``map_points`` once divided with ``geometry.DEFAULT_EPS`` whatever the transform's ``eps``."""
    t = Projective(eps=0.5)
    params = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.8, 0.0]], dtype=torch.float64)
    # the denominator 0.8 x + 1 is 0.36 at the leftmost pixel centre x = -0.8, below eps: the grid clamps it to 0.5
    grid = t.grid(params, (1, 5))
    pts = pixel_centres((1, 5), False, torch.float64)[None]
    torch.testing.assert_close(t.map_points(params, pts), grid.reshape(1, -1, 2))


# ------------------------------------------------------------------------------------------------------ sampling


def _pixel(g: Tensor, n: int, align_corners: bool) -> Tensor:
    """Normalised coordinate -> pixel coordinate (pixel ``i``'s centre at ``i``), as ``grid_sample`` computes it."""
    return (g + 1) * ((n - 1) / 2) if align_corners else ((g + 1) * n - 1) / 2


def random_grid(
    gen: torch.Generator,
    batch: int,
    out_size: tuple[int, ...],
    in_size: tuple[int, ...],
    align_corners: bool,
    snap: bool,
    avoid_ties: bool,
) -> Tensor:
    """Random float64 grid with values in [-1.5, 1.5]: ``(B, *out_size, nd)``.

    ``snap`` rounds half the points to multiples of 1/4, which lands many on pixel centres, pixel edges and the
    image border (where kinks and padding rules bite). ``avoid_ties`` moves points whose pixel coordinate is a
    ``.5`` tie (which nearest-neighbour rounding may break either way) by 1e-3.
    """
    nd = len(in_size)
    grid = torch.rand(batch, *out_size, nd, generator=gen, dtype=torch.float64) * 3 - 1.5
    if snap:
        keep = torch.rand(batch, *out_size, 1, generator=gen) < 0.5
        grid = torch.where(keep, grid, torch.round(grid * 4) / 4)
    if avoid_ties:
        for axis, n in enumerate(in_size[::-1]):  # x runs along the last (width) axis
            p = _pixel(grid[..., axis], n, align_corners)
            tie = (p - torch.floor(p) - 0.5).abs() < 1e-6
            grid[..., axis] = torch.where(tie, grid[..., axis] + 1e-3, grid[..., axis])
    return grid


@dataclass(frozen=True)
class SamplingCase:
    batch: int
    channels: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    mode: Mode
    align_corners: bool
    snap: bool
    seed: int


def sampling_cases(nd: int) -> st.SearchStrategy[SamplingCase]:
    modes: list[Mode] = ["nearest", "bilinear", "bicubic"] if nd == 2 else ["nearest", "bilinear", "trilinear"]
    elements = dims if nd == 2 else st.integers(1, 5)
    return st.builds(
        SamplingCase,
        batch=st.integers(1, 3),
        channels=st.integers(1, 3),
        in_size=sizes(nd, elements),
        out_size=sizes(nd, elements),
        mode=st.sampled_from(modes),
        align_corners=st.booleans(),
        snap=st.booleans(),
        seed=seeds,
    )


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection", "fill"])
@settings(SETTINGS, max_examples=60)
@given(data=st.data())
def test_reference_backend_matches_torch(nd: int, padding: Padding, data: st.DataObject) -> None:
    c = data.draw(sampling_cases(nd))
    gen = torch.Generator().manual_seed(c.seed)
    x = torch.randn(c.batch, c.channels, *c.in_size, generator=gen, dtype=torch.float64)
    grid = random_grid(gen, c.batch, c.out_size, c.in_size, c.align_corners, c.snap, c.mode == "nearest")
    fill = None
    if padding == "fill":  # one value per channel, or per sample and channel
        shape = (c.channels,) if data.draw(st.booleans()) else (c.batch, c.channels)
        fill = torch.randn(*shape, generator=gen, dtype=torch.float64)
    outs = [
        torchstn.sample(x, grid, c.mode, padding, fill, c.align_corners, backend=backend)
        for backend in ("torch", "reference")
    ]
    expected, actual = outs
    assert actual.shape == (c.batch, c.channels, *c.out_size)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@settings(SETTINGS, max_examples=40)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), per_sample=st.booleans())
def test_fill_outside_equals_fill(
    nd: int, backend: Backend, data: st.DataObject, dtype: torch.dtype, per_sample: bool
) -> None:
    """Output pixels whose every kernel tap is outside the input read exactly the fill value of their channel."""
    c = data.draw(sampling_cases(nd))
    batch, channels, in_size, out_size = c.batch, c.channels, c.in_size, c.out_size
    gen = torch.Generator().manual_seed(c.seed)
    x = torch.randn(batch, channels, *in_size, generator=gen, dtype=dtype)
    fill = torch.randn(batch if per_sample else 1, channels, generator=gen, dtype=dtype)
    grid = random_grid(gen, batch, out_size, in_size, c.align_corners, False, False).to(dtype)
    # Move some points 6 to 10 units out along one axis: at least 2.5 pixels past the border for every size and
    # convention (an axis of one pixel with align_corners=True maps every coordinate to that pixel, so skip those).
    axis = torch.randint(nd, (batch, *out_size), generator=gen)
    far = torch.rand(batch, *out_size, generator=gen) < 0.5
    movable = torch.tensor([not (c.align_corners and n == 1) for n in in_size[::-1]])[axis]
    far &= movable
    sign = torch.where(torch.rand(batch, *out_size, generator=gen) < 0.5, -1.0, 1.0)
    offset = (6 + 4 * torch.rand(batch, *out_size, generator=gen)) * sign
    moved = grid.clone()
    moved.scatter_(-1, axis.unsqueeze(-1), offset.unsqueeze(-1).to(dtype))
    grid = torch.where(far.unsqueeze(-1), moved, grid)
    out = torchstn.sample(x, grid, c.mode, "fill", fill if per_sample else fill[0], c.align_corners, backend=backend)
    expected = fill.reshape(fill.shape[0], channels, *([1] * nd)).expand_as(out)
    mask = far.unsqueeze(1).expand_as(out)
    assert torch.isfinite(out).all()
    assert torch.equal(out[mask], expected[mask])


@SETTINGS
@given(value=st.floats(-5, 5), channels=st.integers(1, 4), align_corners=st.booleans(), seed=seeds)
def test_constant_image_with_equal_fill_is_constant(
    value: float, channels: int, align_corners: bool, seed: int
) -> None:
    """An image equal to its fill value everywhere samples to that value everywhere, in and out of the image."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((2, channels, 5, 4), value, dtype=torch.float64)
    grid = torch.rand(2, 6, 3, 2, generator=gen, dtype=torch.float64) * 6 - 3
    modes: list[Mode] = ["nearest", "bilinear", "bicubic"]
    for mode in modes:
        out = torchstn.sample(x, grid, mode=mode, padding="fill", fill=value, align_corners=align_corners)
        torch.testing.assert_close(out, torch.full_like(out, value), rtol=0, atol=1e-12)
