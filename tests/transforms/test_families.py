"""Transform families: identity, agreement with torch, exact invariants, gradcheck, compile."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchstn
from tests.helpers import assert_close
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.transforms import (
    Affine,
    Affine3D,
    Attention,
    MatrixTransform,
    Projective,
    Similarity,
    ThinPlateSpline,
    Transform,
    Translation,
)

# An irregular target layout: 7 points scattered over the image, two of them outside it.
SCATTERED = [(-0.8, -0.7), (0.3, -0.9), (0.9, -0.1), (0.5, 0.6), (-0.2, 0.8), (-0.6, 0.1), (1.1, 1.05)]

FAMILIES_2D: list[Transform] = [
    Affine(),
    Attention(),
    Similarity(),
    Translation(),
    Projective(),
    ThinPlateSpline((4, 4)),
    ThinPlateSpline((3, 5), regularization=0.0),
    ThinPlateSpline.fiducials(k=8, margin=0.05),
    ThinPlateSpline(control_points=SCATTERED),
]
IDS_2D = [repr(t) for t in FAMILIES_2D]


def _perturbed(t: Transform, b: int, gen: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    """Identity parameters plus a small random offset, in float64."""
    p = t.identity_params(b, dtype=torch.float64)
    noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
    if isinstance(t, Projective):
        noise[:, 6:] *= 0.3  # keep the homography well away from the horizon
    return p + noise


# --- identity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", FAMILIES_2D, ids=IDS_2D)
@pytest.mark.parametrize("size", [(6, 6), (5, 9), (9, 4)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_reproduce_the_input(t: Transform, size: tuple[int, int], align_corners: bool) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    out = torchstn.warp(x, t.identity_params(2), t, align_corners=align_corners)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_3d_reproduces_the_volume(align_corners: bool) -> None:
    t = Affine3D()
    x = torch.rand(2, 2, 4, 5, 6)
    out = torchstn.warp(x, t.identity_params(2), t, align_corners=align_corners)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [*FAMILIES_2D, Affine3D()], ids=[*IDS_2D, "Affine3D"])
def test_identity_params_shape_dtype_device(t: Transform, device: torch.device, dtype: torch.dtype) -> None:
    p = t.identity_params(3, device=device, dtype=dtype)
    assert p.shape == (3, t.num_params) and p.dtype == dtype and p.device.type == device.type
    p[0, 0] += 1  # rows are independent copies, not views of one
    assert not torch.equal(p[0], p[1])


# --- agreement with torch -------------------------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(7, 5), (1, 4), (3, 1)])
def test_affine_grid_matches_torch(gen: torch.Generator, align_corners: bool, size: tuple[int, int]) -> None:
    theta = torch.randn(4, 2, 3, generator=gen)
    ours = Affine().grid(theta.reshape(4, 6), size, align_corners=align_corners)
    with warnings.catch_warnings():  # torch warns about unit-size grids with align_corners=True
        warnings.simplefilter("ignore", UserWarning)
        theirs = F.affine_grid(theta, [4, 1, *size], align_corners=align_corners)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours.is_contiguous()


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine3d_grid_matches_torch(gen: torch.Generator, align_corners: bool) -> None:
    theta = torch.randn(3, 3, 4, generator=gen)
    ours = Affine3D().grid(theta.reshape(3, 12), (4, 5, 6), align_corners=align_corners)
    theirs = F.affine_grid(theta, [3, 1, 4, 5, 6], align_corners=align_corners)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_attention_translation_are_affine_special_cases(gen: torch.Generator) -> None:
    s, tx, ty = 0.6, 0.2, -0.3
    affine = Affine().grid(torch.tensor([[s, 0, tx, 0, s, ty]]), (5, 8))
    assert_close(Attention().grid(torch.tensor([[s, tx, ty]]), (5, 8)), affine)
    shift = Affine().grid(torch.tensor([[1.0, 0, tx, 0, 1, ty]]), (5, 8))
    assert_close(Translation().grid(torch.tensor([[tx, ty]]), (5, 8)), shift)


# --- Similarity: true rotations in pixel space ----------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_similarity_quarter_turns_equal_rot90(gen: torch.Generator, k: int) -> None:
    x = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    params = torch.tensor([[k * math.pi / 2, 0.0, 0.0, 0.0]], dtype=torch.float64).repeat(2, 1)
    expected = torch.rot90(x, k, dims=(-2, -1))
    nearest = torchstn.warp(x, params, Similarity(), mode="nearest")
    assert torch.equal(nearest, expected)
    assert_close(torchstn.warp(x, params, Similarity()), expected)
    assert_close(torchstn.warp(x.float(), params.float(), Similarity()), expected.float(), scale=0.1)


def test_similarity_positive_angle_turns_content_counter_clockwise() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # a dot right of the centre
    out = torchstn.warp(x, torch.tensor([[math.pi / 2, 0.0, 0.0, 0.0]]), Similarity(), mode="nearest")
    assert out[0, 0, 0, 2] == 1.0  # counter-clockwise as displayed (y down): now above the centre


@pytest.mark.parametrize("size", [(20, 50), (48, 16)])
def test_similarity_maps_a_pixel_circle_to_a_circle_on_non_square_images(size: tuple[int, int]) -> None:
    h, w = size
    params = torch.tensor([[0.7, math.log(0.8), 0.1, -0.2]], dtype=torch.float64)
    angle = torch.linspace(0, 2 * math.pi, 37, dtype=torch.float64)
    radius = 0.3 * min(h, w)
    # Target points on a circle in pixel units, centred on the image, expressed in normalised coordinates.
    pts = torch.stack((radius * torch.cos(angle) * 2 / w, radius * torch.sin(angle) * 2 / h), -1)[None]
    src = Similarity().map_points(params, pts, src_size=size)[0]
    src_px = src * torch.tensor([w / 2, h / 2], dtype=torch.float64)
    centre_px = params[0, 2:] * torch.tensor([w / 2, h / 2], dtype=torch.float64)
    dist = (src_px - centre_px).norm(dim=-1)
    torch.testing.assert_close(dist, torch.full_like(dist, radius * 0.8))
    # A plain normalised rotation would not: it shears non-square images.
    affine = Similarity().matrix(params)[:, :2].reshape(1, 6)
    sheared = Affine().map_points(affine, pts)[0] * torch.tensor([w / 2, h / 2], dtype=torch.float64)
    assert (sheared - centre_px).norm(dim=-1).std() > 0.1


def test_similarity_params_round_trip(gen: torch.Generator) -> None:
    t = Similarity()
    p = torch.tensor([[0.4, -0.3, 0.1, 0.2], [-2.0, 0.5, -0.3, 0.0]], dtype=torch.float64)
    assert_close(t.params_from_matrix(t.matrix(p, src_size=(10, 30)), src_size=(10, 30)), p)


# --- thin plate spline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_tps_moves_every_control_point_exactly(gen: torch.Generator, grid: tuple[int, int]) -> None:
    t = ThinPlateSpline(grid)
    p = _perturbed(t, 2, gen, 0.2)
    # With align_corners=True and one output pixel per control point, pixel centres *are* the control points.
    g = t.grid(p, grid, align_corners=True)
    assert_close(g.reshape(2, -1), p, scale=1e3)
    assert_close(t.map_points(p, t.control_points(dtype=torch.float64).expand(2, -1, -1)).reshape(2, -1), p, 1e3)


def test_tps_affine_displacement_equals_affine(gen: torch.Generator) -> None:
    t = ThinPlateSpline((4, 4))
    theta = torch.tensor([[0.9, 0.2, 0.1, -0.15, 1.1, -0.05]], dtype=torch.float64)
    ctrl = t.control_points(dtype=torch.float64)[None]
    params = Affine().map_points(theta, ctrl).reshape(1, -1)
    for align_corners in (False, True):
        ours = t.grid(params, (9, 7), align_corners=align_corners)
        assert_close(ours, Affine().grid(theta, (9, 7), align_corners=align_corners), scale=1e3)


def test_tps_regularization_smooths_towards_affine(gen: torch.Generator) -> None:
    p = _perturbed(ThinPlateSpline(), 1, gen, 0.2)
    exact = ThinPlateSpline().grid(p, (4, 4), align_corners=True).reshape(1, -1)
    smooth = ThinPlateSpline(regularization=10.0).grid(p, (4, 4), align_corners=True).reshape(1, -1)
    assert (smooth - p).abs().max() > 1e-3 and (exact - p).abs().max() < 1e-9


def test_tps_inverse_mapping(gen: torch.Generator) -> None:
    t = ThinPlateSpline()
    p = _perturbed(t, 3, gen, 0.05)
    pts = torch.rand(3, 20, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    back = t.map_points(p, t.map_points(p, pts), inverse=True)
    assert_close(back, pts, scale=1e3)


def test_tps_kernel_is_cached_per_size(gen: torch.Generator) -> None:
    t = ThinPlateSpline()
    a = t.weights((5, 6))
    assert t.weights((5, 6)) is a and t.weights((6, 5)) is not a


def _independent_tps_grid(
    targets: np.ndarray, sources: np.ndarray, size: tuple[int, int], align_corners: bool, lam: float
) -> np.ndarray:
    """A TPS solved from scratch in float64 numpy per sample: ``f(t_k) = s_k`` (with ``lambda``), on pixel centres.

    Returns ``(B, H, W, 2)``."""
    k = len(targets)
    d2 = ((targets[:, None] - targets[None]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(d2 > 0, d2 * np.log(d2), 0.0)
    p = np.concatenate((np.ones((k, 1)), targets), 1)  # (K, 3)
    lhs = np.block([[u + lam * np.eye(k), p], [p.T, np.zeros((3, 3))]])
    h, w = size
    axis = [np.linspace(-1, 1, n) if align_corners else (2 * np.arange(n) + 1) / n - 1 for n in (h, w)]
    if align_corners:
        axis = [a if len(a) > 1 else np.zeros(1) for a in axis]
    gy, gx = np.meshgrid(axis[0], axis[1], indexing="ij")
    pts = np.stack((gx, gy), -1).reshape(-1, 2)
    e2 = ((pts[:, None] - targets[None]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        basis = np.concatenate((np.where(e2 > 0, e2 * np.log(e2), 0.0), np.ones((len(pts), 1)), pts), 1)
    out = []
    for src in sources:  # (K, 2)
        coef = np.linalg.solve(lhs, np.concatenate((src, np.zeros((3, 2)))))  # (K + 3, 2)
        out.append((basis @ coef).reshape(h, w, 2))
    return np.stack(out)


@pytest.mark.parametrize(
    "t",
    [
        ThinPlateSpline((4, 4)),
        ThinPlateSpline.fiducials(),
        ThinPlateSpline.fiducials(k=10, margin=(0.1, 0.2), regularization=0.05),
        ThinPlateSpline(control_points=SCATTERED),
        ThinPlateSpline(control_points=SCATTERED, regularization=0.3),
    ],
    ids=repr,
)
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_grid_equals_an_independent_float64_solve(
    gen: torch.Generator, t: ThinPlateSpline, align_corners: bool
) -> None:
    p = _perturbed(t, 3, gen, 0.05)
    targets = t.control_points(dtype=torch.float64).numpy()
    expected = _independent_tps_grid(targets, p.reshape(3, -1, 2).numpy(), (9, 13), align_corners, t.regularization)
    ours = t.grid(p, (9, 13), align_corners=align_corners)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-10)
    single = t.grid(p.float(), (9, 13), align_corners=align_corners)  # the float32 path: the same GEMM
    np.testing.assert_allclose(single.numpy(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize(
    "t",
    [
        ThinPlateSpline.fiducials(),
        ThinPlateSpline.fiducials(k=4, margin=0.0),
        ThinPlateSpline(control_points=SCATTERED),
    ],
    ids=repr,
)
def test_tps_identity_is_exact_for_every_layout(t: ThinPlateSpline) -> None:
    for align_corners in (False, True):
        g = t.grid(t.identity_params(2, dtype=torch.float64), (7, 11), align_corners=align_corners)
        axes = [torchstn.geometry.normalized_coords(n, align_corners, dtype=torch.float64) for n in (7, 11)]
        centres = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1).expand(2, -1, -1, -1)
        torch.testing.assert_close(g, centres, rtol=0, atol=1e-12)
        single = t.grid(t.identity_params(2), (7, 11), align_corners=align_corners)  # float32: rounding only
        torch.testing.assert_close(single, centres.float(), rtol=0, atol=1e-6)
    x = torch.rand(2, 3, 32, 100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # a text strip
    torch.testing.assert_close(torchstn.warp(x, t.identity_params(2, dtype=torch.float64), t), x, rtol=0, atol=1e-10)


def test_tps_fiducials_are_the_aster_layout() -> None:
    ctrl = ThinPlateSpline.fiducials(k=20, margin=0.05).control_points(dtype=torch.float64)
    # ASTER: x = linspace(margin, 1 - margin, 10), y = margin (top) and 1 - margin (bottom), in [0, 1] units.
    xs01 = np.linspace(0.05, 0.95, 10)
    aster01 = np.concatenate([np.stack((xs01, np.full(10, y)), 1) for y in (0.05, 0.95)])
    np.testing.assert_allclose(ctrl.numpy(), 2 * aster01 - 1, rtol=0, atol=1e-15)
    pair = ThinPlateSpline.fiducials(k=6, margin=(0.0, 0.25)).control_points(dtype=torch.float64)
    assert pair[:, 0].tolist() == [-1.0, 0.0, 1.0] * 2 and pair[:, 1].tolist() == [-0.5] * 3 + [0.5] * 3


def test_tps_fiducials_without_margin_are_the_two_row_grid(gen: torch.Generator) -> None:
    fid, grid = ThinPlateSpline.fiducials(k=20, margin=0.0), ThinPlateSpline((2, 10))
    torch.testing.assert_close(fid.control_points(dtype=torch.float64), grid.control_points(dtype=torch.float64))
    p = _perturbed(grid, 2, gen, 0.05)
    torch.testing.assert_close(fid.grid(p, (8, 25)), grid.grid(p, (8, 25)), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "t", [ThinPlateSpline.fiducials(), ThinPlateSpline(control_points=SCATTERED, regularization=0.0)], ids=repr
)
def test_tps_any_layout_moves_its_control_points_and_inverts(gen: torch.Generator, t: ThinPlateSpline) -> None:
    p = _perturbed(t, 2, gen, 0.03)
    ctrl = t.control_points(dtype=torch.float64).expand(2, -1, -1)
    assert_close(t.map_points(p, ctrl).reshape(2, -1), p, scale=1e3)
    pts = torch.rand(2, 30, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    assert_close(t.map_points(p, t.map_points(p, pts), inverse=True), pts, scale=1e3)


def test_tps_layout_given_as_a_tensor_or_nested_lists_is_the_same() -> None:
    pts = torch.tensor(SCATTERED, dtype=torch.float64)
    a, b = ThinPlateSpline(control_points=pts), ThinPlateSpline(control_points=SCATTERED)
    pts.zero_()  # the transform holds its own copy
    torch.testing.assert_close(a.control_points(dtype=torch.float64), b.control_points(dtype=torch.float64))
    assert a.num_controls == 7 and a.num_params == 14 and a.roles == ("point",) * 14 and a.grid_shape is None
    assert torch.equal(a.weights((5, 6)), b.weights((5, 6)))
    assert "control_points" in repr(a) and repr(ThinPlateSpline.fiducials()).startswith("ThinPlateSpline.fiducials(")


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda: ThinPlateSpline(control_points=[(0.0, 0.0), (1.0, 0.0)]), ShapeError, "control_points"),
        (lambda: ThinPlateSpline(control_points=torch.zeros(4, 3)), ShapeError, "control_points"),
        (lambda: ThinPlateSpline(control_points=torch.zeros(8)), ShapeError, "control_points"),
        (lambda: ThinPlateSpline(control_points=[(-1, -1), (0, 0), (1, 1), (0.5, 0.5)]), OptionError, "one line"),
        (lambda: ThinPlateSpline(control_points=[(0, 0), (1, 0), (0, 1), (1, 0)]), OptionError, "coincide"),
        (lambda: ThinPlateSpline(control_points=[(0, 0), (1, 0), (0, float("nan"))]), OptionError, "finite"),
        (lambda: ThinPlateSpline(control_points=torch.ones(3, 2, dtype=torch.bool)), DTypeError, "control_points"),
        (lambda: ThinPlateSpline(control_points="aster"), DTypeError, "control_points"),  # type: ignore[arg-type]
        (lambda: ThinPlateSpline(control_points=[(0, 0), (1,), (0, 1)]), DTypeError, "control_points"),
        (lambda: ThinPlateSpline((4, 4), control_points=SCATTERED), OptionError, "grid, control_points"),
        (lambda: ThinPlateSpline.fiducials(k=7), OptionError, "k:"),
        (lambda: ThinPlateSpline.fiducials(k=2), OptionError, "k:"),
        (lambda: ThinPlateSpline.fiducials(margin=0.5), OptionError, "margin"),
        (lambda: ThinPlateSpline.fiducials(margin=-0.1), OptionError, "margin"),
        (lambda: ThinPlateSpline.fiducials(margin=(0.1, 0.1, 0.1)), OptionError, "margin"),  # type: ignore[arg-type]
        (lambda: ThinPlateSpline.fiducials(regularization=-1.0), OptionError, "regularization"),
    ],
)
def test_tps_layouts_are_checked(make: Callable[[], object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=re.escape(name)):
        make()


# --- projective -----------------------------------------------------------------------------------------------


def _homography_from_4_points(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Independent direct linear solve of the homography taking 4 ``dst`` points onto 4 ``src`` points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows), np.array(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def test_projective_maps_corners_onto_a_4_point_solve(gen: torch.Generator) -> None:
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])  # row-major, as the grid
    src = corners * 0.8 + np.random.default_rng(0).normal(0, 0.1, (4, 2))
    h = torch.from_numpy(_homography_from_4_points(corners, src))
    params = h.reshape(1, 9)[:, :8]
    g = Projective().grid(params, (2, 2), align_corners=True)  # pixel centres are the corners
    np.testing.assert_allclose(g.reshape(4, 2).numpy(), src, atol=1e-12)


def test_projective_with_zero_perspective_row_is_affine(gen: torch.Generator) -> None:
    theta = _perturbed(Affine(), 2, gen)
    params = torch.cat((theta, torch.zeros(2, 2, dtype=torch.float64)), -1)
    for align_corners in (False, True):
        assert_close(
            Projective().grid(params, (5, 7), align_corners=align_corners),
            Affine().grid(theta, (5, 7), align_corners=align_corners),
        )


def test_projective_never_produces_nonfinite_values() -> None:
    # The denominator 0 * x + 1 * y + 0 vanishes on the middle row (y = 0) of an odd-height grid.
    m = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
    g = torchstn.projective_grid(m, (5, 5), align_corners=True)
    assert torch.isfinite(g).all()
    x = torch.rand(1, 1, 5, 5, requires_grad=True)
    p = Projective().params_from_matrix(m + torch.tensor([[[0, 0, 0], [0, 0, 0], [0, 0, 1e-12]]]))
    out = torchstn.warp(x, p.requires_grad_(), Projective())
    out.sum().backward()
    assert torch.isfinite(out).all() and x.grad is not None and torch.isfinite(x.grad).all()


# --- inverse, composition, points ------------------------------------------------------------------------------

MATRIX_FAMILIES: list[MatrixTransform] = [Affine(), Attention(), Similarity(), Translation(), Projective(), Affine3D()]


@pytest.mark.parametrize("t", MATRIX_FAMILIES, ids=repr)
def test_inverse_then_compose_is_identity(gen: torch.Generator, t: MatrixTransform) -> None:
    p = _perturbed(t, 3, gen)
    m = torchstn.compose(t.matrix(t.inverse_params(p)), t.matrix(p))
    m = m / m[:, -1:, -1:]  # homographies are defined up to scale
    assert_close(m, torch.eye(t.ndim + 1, dtype=torch.float64).expand_as(m), scale=1e3)
    assert_close(t.params_from_matrix(t.matrix(p)), p, scale=1e3)


@pytest.mark.parametrize("t", [*FAMILIES_2D, Affine3D()], ids=[*IDS_2D, "Affine3D"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_map_points_agrees_with_where_the_grid_samples(gen: torch.Generator, t: Transform, align_corners: bool) -> None:
    size = (3, 4, 5) if t.ndim == 3 else (4, 5)
    p = _perturbed(t, 2, gen)
    g = t.grid(p, size, align_corners=align_corners, src_size=size)
    axes = [torchstn.geometry.normalized_coords(n, align_corners, dtype=torch.float64) for n in size]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1).reshape(1, -1, t.ndim).expand(2, -1, -1)
    assert_close(t.map_points(p, centres, src_size=size).reshape(g.shape), g, scale=1e3)
    back = t.map_points(p, t.map_points(p, centres, src_size=size), inverse=True, src_size=size)
    assert_close(back, centres, scale=1e3)


# --- gradients and compile ------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [*FAMILIES_2D, Affine3D()], ids=[*IDS_2D, "Affine3D"])
def test_gradcheck_grid_wrt_params(gen: torch.Generator, t: Transform) -> None:
    size = (2, 3, 4) if t.ndim == 3 else (3, 4)
    p = _perturbed(t, 2, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: t.grid(p, size, src_size=size[::-1] if t.ndim == 2 else None), (p,))


@pytest.mark.parametrize(
    "t",
    [
        Affine(),
        Similarity(),
        Projective(),
        ThinPlateSpline(),
        ThinPlateSpline.fiducials(k=6, margin=0.05),
        ThinPlateSpline(control_points=SCATTERED, regularization=0.1),
    ],
    ids=repr,
)
def test_gradcheck_warp_wrt_image_and_params(gen: torch.Generator, t: Transform) -> None:
    x = torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _perturbed(t, 1, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torchstn.warp(x, p, t, (4, 4)), (x, p))


@pytest.mark.parametrize("t", [Affine(), Projective(), ThinPlateSpline(), Attention()], ids=repr)
def test_compiled_grid_matches_eager(gen: torch.Generator, t: Transform) -> None:
    p = _perturbed(t, 2, gen).float()
    x = torch.rand(2, 1, 6, 6, generator=gen)
    fn = torch.compile(lambda x, p: torchstn.warp(x, p, t, (5, 5)), backend="eager")
    assert_close(fn(x, p), torchstn.warp(x, p, t, (5, 5)))


def test_output_size_other_than_the_input(gen: torch.Generator) -> None:
    x = torch.rand(2, 3, 8, 10, generator=gen)
    for t in FAMILIES_2D:
        assert torchstn.warp(x, t.identity_params(2), t, (4, 13)).shape == (2, 3, 4, 13)
    t3 = Affine3D()
    assert torchstn.warp(torch.rand(1, 2, 4, 4, 4), t3.identity_params(1), t3, (2, 3, 5)).shape == (1, 2, 2, 3, 5)


def test_tps_caches_made_in_inference_mode_serve_autograd_later() -> None:
    tps = ThinPlateSpline((3, 3))
    with torch.inference_mode():
        tps.grid(tps.identity_params(1), (5, 5))
        tps.coefficients(tps.identity_params(1))
    params = tps.identity_params(2).requires_grad_()
    (tps.grid(params, (5, 5)).sum() + tps.coefficients(params).sum()).backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


@pytest.mark.parametrize(
    "tps", [ThinPlateSpline((4, 4)), ThinPlateSpline.fiducials(), ThinPlateSpline(control_points=SCATTERED)], ids=repr
)
def test_tps_interleaved_and_plain_grid_paths_agree(monkeypatch: pytest.MonkeyPatch, tps: ThinPlateSpline) -> None:
    from torchstn.transforms import _tps

    n = tps.num_params
    params = tps.identity_params(3, dtype=torch.float64) + 0.1 * torch.randn(3, n, dtype=torch.float64)
    fast = tps.grid(params, (6, 7))
    assert len(tps._interleaved) == 1  # every layout takes the one-GEMM path
    monkeypatch.setattr(_tps, "_INTERLEAVED_MAX_POINTS", 0)
    plain = tps.grid(params, (6, 7))
    assert fast.is_contiguous() and fast.shape == plain.shape == (3, 6, 7, 2)
    torch.testing.assert_close(fast, plain, atol=1e-14, rtol=0)


@pytest.mark.parametrize("value", ["0.1", None, True, float("inf")])
def test_tps_regularization_is_checked(value: object) -> None:
    with pytest.raises(OptionError, match=r"^regularization"):
        ThinPlateSpline(regularization=value)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"^regularization"):
        ThinPlateSpline(control_points=SCATTERED, regularization=value)  # type: ignore[arg-type]


def test_the_overflow_message_reads_an_affine_matrix_and_a_projective_one() -> None:
    from torchstn.errors import NonFiniteError
    from torchstn.transforms import Affine, Projective

    inf = torch.full((1, 3, 3), float("inf"))
    with pytest.raises(NonFiniteError, match=r"give an Affine\(\) matrix holding inf"):
        Affine()._check_overflow(Affine().identity_params(1), inf)
    with pytest.raises(NonFiniteError, match=r"give a Projective\(.*\) matrix holding inf"):
        Projective()._check_overflow(Projective().identity_params(1), inf)
