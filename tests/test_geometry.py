"""Geometry helpers: coordinates, composition, inversion, points and the OpenCV pixel convention."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import torchstn
from tests.helpers import assert_close
from torchstn.geometry import (
    compose,
    invert,
    normalized_coords,
    normalized_to_pixel,
    pixel_from_normalized,
    pixel_to_normalized,
    transform_points,
)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_normalized_coords_are_pixel_centres(n: int) -> None:
    c = normalized_coords(n, dtype=torch.float64)
    # align_corners=False: the n pixels tile [-1, 1] evenly, centres in the middle of each tile.
    edges = torch.linspace(-1, 1, n + 1, dtype=torch.float64)
    assert_close(c, (edges[1:] + edges[:-1]) / 2)
    if n > 1:
        assert_close(normalized_coords(n, True, dtype=torch.float64), torch.linspace(-1, 1, n, dtype=torch.float64))


def test_pixel_from_normalized_maps_centres_to_indices() -> None:
    for align_corners in (False, True):
        m = pixel_from_normalized((4, 6), align_corners, dtype=torch.float64)
        xs = normalized_coords(6, align_corners, dtype=torch.float64)
        ys = normalized_coords(4, align_corners, dtype=torch.float64)
        pts = torch.stack((xs[[0, 5, 2]], ys[[0, 3, 1]]), -1)
        expected = torch.tensor([[0.0, 0.0], [5.0, 3.0], [2.0, 1.0]], dtype=torch.float64)
        assert_close(transform_points(m[:2], pts), expected)


def test_compose_and_invert(gen: torch.Generator) -> None:
    a = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    assert_close(compose(a, b), a @ b)
    assert_close(compose(a, b, invert(b)), a, scale=1e3)
    rows = a[:, :2]
    assert invert(rows).shape == (2, 2, 3)
    assert_close(compose(rows, invert(rows))[:, :2], torch.eye(3, dtype=torch.float64)[:2].expand(2, 2, 3), 1e3)


def test_transform_points_projective_division() -> None:
    h = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 1.0, 2.0]]])
    p = torch.tensor([[[1.0, 2.0]]])
    # (2*1 + 1, 2*2) / (1*2 + 2) = (3, 4) / 4
    torch.testing.assert_close(transform_points(h, p), torch.tensor([[[0.75, 1.0]]]))


def _numpy_warp(img: np.ndarray, dst_from_src: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """Independent pixel-space warp (OpenCV's convention): dst(x, y) = src(M^-1 (x, y)), bilinear, zero border."""
    h, w = img.shape
    src_from_dst = np.linalg.inv(dst_from_src)
    out = np.zeros(dsize)
    for i in range(dsize[0]):
        for j in range(dsize[1]):
            u, v, s = src_from_dst @ np.array([j, i, 1.0])
            u, v = u / s, v / s
            x0, y0 = math.floor(u), math.floor(v)
            for dx in (0, 1):
                for dy in (0, 1):
                    xi, yi = x0 + dx, y0 + dy
                    if 0 <= xi < w and 0 <= yi < h:
                        out[i, j] += img[yi, xi] * (1 - abs(u - xi)) * (1 - abs(v - yi))
    return out


@pytest.mark.parametrize("dsize", [(7, 9), (5, 6)])
@pytest.mark.parametrize("projective", [False, True])
def test_pixel_matrix_conversion_matches_an_independent_pixel_warp(
    gen: torch.Generator, dsize: tuple[int, int], projective: bool
) -> None:
    src_size = (6, 8)
    img = torch.rand(1, 1, *src_size, generator=gen, dtype=torch.float64)
    # An OpenCV-style dst_from_src: rotate 20 degrees about the source centre, scale 0.9, shift.
    a, s = math.radians(20), 0.9
    m = np.array([[s * math.cos(a), s * math.sin(a), 0.5], [-s * math.sin(a), s * math.cos(a), 1.0], [0, 0, 1]])
    if projective:
        m[2, :2] = [0.01, -0.02]
    src_from_dst = pixel_to_normalized(torch.from_numpy(m)[None], src_size, dsize)
    params = src_from_dst.reshape(1, 9)[:, :8] / src_from_dst[:, 2, 2:]
    out = torchstn.warp(img, params, torchstn.Projective(), dsize)
    expected = _numpy_warp(img[0, 0].numpy(), m, dsize)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-10)
    back = normalized_to_pixel(src_from_dst, src_size, dsize)
    np.testing.assert_allclose(back[0].numpy() / back[0, 2, 2].item(), m, atol=1e-12)


def test_affine_rows_accepted_by_pixel_conversion() -> None:
    theta = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]], dtype=torch.float64)
    m = normalized_to_pixel(theta, (10, 10))
    # Zooming in 2x about the centre (4.5, 4.5): dst = 2 * (src - c) + c.
    expected = torch.tensor([[[2.0, 0.0, -4.5], [0.0, 2.0, -4.5], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    assert_close(m, expected)


# --- the affine grid generator: cached-basis GEMM and its broadcast fallback ------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (1, 4), (3, 4, 6)])
def test_affine_grid_gemm_and_broadcast_paths_agree_with_torch(
    size: tuple[int, ...], align_corners: bool, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    from torchstn import geometry

    nd = len(size)
    theta = torch.randn(3, nd, nd + 1, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():  # torch warns about unit-size grids with align_corners=True
        warnings.simplefilter("ignore")
        theirs = F.affine_grid(theta, [3, 1, *size], align_corners=align_corners)
    gemm = geometry.affine_grid(theta, size, align_corners)
    monkeypatch.setattr(geometry, "_BASIS_MAX_POINTS", 0)
    broadcast = geometry.affine_grid(theta, size, align_corners)
    for grid in (gemm, broadcast):
        assert grid.is_contiguous() and grid.shape == theirs.shape
        torch.testing.assert_close(grid, theirs, atol=1e-14, rtol=0)


@pytest.mark.parametrize("size", [(32, 32), (16, 32), (8, 8, 16)])
def test_affine_grid_padded_layout_equals_the_contiguous_grid(size: tuple[int, ...], gen: torch.Generator) -> None:
    """Rows of 4 KiB multiples are written batch-strided (each image's grid contiguous), with the same values."""
    import torch.nn.functional as F

    from torchstn import geometry

    nd = len(size)
    theta = torch.randn(3, nd, nd + 1, generator=gen)
    assert geometry._row_pad(math.prod(size), nd, theta.device, theta.dtype) > 0
    padded = geometry._affine_grid(theta, size, False, contiguous=False)
    plain = geometry.affine_grid(theta, size)
    assert not padded.is_contiguous() and plain.is_contiguous()
    assert padded[0].is_contiguous() and padded.stride(0) > padded[0].numel()
    assert torch.equal(padded, plain)
    x = torch.randn(3, 2, *size, generator=gen)
    assert torch.equal(F.grid_sample(x, padded, align_corners=False), F.grid_sample(x, plain, align_corners=False))
    # A matrix that needs a gradient gets the contiguous layout (the slice's backward would cost what it saves).
    grad_grid = geometry._affine_grid(theta.requires_grad_(), size, False, contiguous=False)
    assert grad_grid.is_contiguous()
    # Other row lengths, and float64 rows that are no 4 KiB multiple, are never padded.
    assert geometry._row_pad(42 * 42, 2, theta.device, torch.float32) == 0
    assert geometry._row_pad(16 * 16, 2, theta.device, torch.float64) > 0  # 4 KiB exactly in float64


def test_warp_on_a_padded_grid_matches_torch_for_every_padding_and_backend(gen: torch.Generator) -> None:
    import torch.nn.functional as F

    from torchstn.transforms import Affine

    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    theta = torch.eye(2, 3, dtype=torch.float64) + 0.2 * torch.randn(2, 2, 3, generator=gen, dtype=torch.float64)
    ref_grid = F.affine_grid(theta, [2, 3, 32, 32], align_corners=False)
    for backend in ("torch", "reference"):
        for padding in ("zeros", "border", "reflection"):
            ours = torchstn.warp(x, theta.reshape(2, 6), Affine(), padding=padding, backend=backend)
            theirs = F.grid_sample(x, ref_grid, padding_mode=padding, align_corners=False)
            torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


def test_affine_grid_identity_is_exact_and_gradient_is_a_sum_over_points() -> None:
    from torchstn.geometry import affine_grid

    theta = torch.eye(2, 3).expand(2, 2, 3).clone().requires_grad_()
    grid = affine_grid(theta, (4, 6))
    xs, ys = normalized_coords(6), normalized_coords(4)
    assert torch.equal(grid[0, :, :, 0], xs.expand(4, 6)) and torch.equal(grid[0, :, :, 1], ys[:, None].expand(4, 6))
    grid.sum().backward()
    # d(sum of x over the grid)/d theta[0] = (sum x, sum y, N): the sums of centred coordinates vanish.
    assert theta.grad is not None
    expected = torch.tensor([[0.0, 0.0, 24.0], [0.0, 0.0, 24.0]]).expand(2, 2, 3)
    torch.testing.assert_close(theta.grad, expected, atol=1e-5, rtol=0)


def test_affine_grid_basis_made_in_inference_mode_serves_autograd_later() -> None:
    from torchstn import geometry

    geometry._BASES.clear()
    with torch.inference_mode():
        geometry.affine_grid(torch.eye(2, 3)[None], (3, 3))
    theta = torch.eye(2, 3)[None].requires_grad_()
    geometry.affine_grid(theta, (3, 3)).sum().backward()  # would fail if the cached basis were an inference tensor
    assert theta.grad is not None


def test_affine_grid_basis_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchstn import geometry

    geometry._BASES.clear()
    one = 6 * (8 * 8 * 2) * 4  # bytes of one float32 8x8 basis
    monkeypatch.setattr(geometry, "_BASES_MAX_BYTES", 2 * one)
    for k in range(4):
        geometry.affine_grid(torch.eye(2, 3)[None], (8, 8), align_corners=bool(k % 2))
        geometry.affine_grid(torch.eye(2, 3)[None], (8, 8 + k))
    assert sum(b.numel() * b.element_size() for b in geometry._BASES.values()) <= 2 * one + 6 * 8 * 11 * 2 * 4
    assert len(geometry._BASES) <= 2
    geometry._BASES.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_denominator_clamps_to_eps_in_the_input_dtype(dtype: torch.dtype) -> None:
    """The clamp value is eps itself in the tensor's dtype (in float64 not eps rounded through float32), with the
    sign of the denominator (-0 counts as negative, as signbit says), and no gradient through clamped entries."""
    from torchstn.geometry import safe_denominator

    w = torch.tensor([0.0, -0.0, 3e-7, -3e-7, 2.0, -2.0], dtype=dtype, requires_grad=True)
    eps = 1e-6
    out = safe_denominator(w, eps)
    e = torch.tensor(eps, dtype=dtype)
    assert torch.equal(out.detach(), torch.stack([e, -e, e, -e, w[4].detach(), w[5].detach()]))
    (g,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(g, torch.tensor([0, 0, 0, 0, 1, 1], dtype=dtype))
