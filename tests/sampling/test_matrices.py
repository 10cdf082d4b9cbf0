"""warp takes what F.affine_grid users have: a (B, 2, 3) theta, a (B, 3, 3) homography, a (B, 3, 4) volume theta."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import torchstn
from tests.helpers import assert_close
from tests.sampling._common import random_input
from torchstn.errors import OptionError, ShapeError
from torchstn.sampling._matrices import Homography
from torchstn.transforms import Affine, Affine3D, Projective, Similarity, ThinPlateSpline


def _theta(gen: torch.Generator, b: int, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    eye = torch.eye(rows, cols, dtype=torch.float64)
    return (eye + 0.2 * torch.randn(b, rows, cols, generator=gen, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", [None, Affine()], ids=["inferred", "Affine"])
def test_theta_like_affine_grid(
    gen: torch.Generator, dtype: torch.dtype, align_corners: bool, transform: Affine | None
) -> None:
    x = random_input(gen, (3, 2, 9, 11), dtype)
    theta = _theta(gen, 3, 2, 3, dtype)
    for padding in ("zeros", "border", "reflection"):
        out = torchstn.warp(x, theta, transform, (7, 8), padding=padding, align_corners=align_corners)  # type: ignore[arg-type]
        grid = F.affine_grid(theta, [3, 2, 7, 8], align_corners=align_corners)
        expected = F.grid_sample(x, grid, padding_mode=padding, align_corners=align_corners)
        assert_close(out, expected)
        # The same as the theta's entries as Affine's parameters, bit for bit.
        params = theta.reshape(3, 6)
        assert torch.equal(
            out, torchstn.warp(x, params, Affine(), (7, 8), padding=padding, align_corners=align_corners)
        )  # type: ignore[arg-type]


def test_volume_theta_like_affine_grid(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 5, 6, 7), torch.float64)
    theta = _theta(gen, 2, 3, 4, torch.float64)
    for transform in (None, Affine3D()):
        out = torchstn.warp(x, theta, transform, mode="trilinear")
        expected = F.grid_sample(x, F.affine_grid(theta, [2, 1, 5, 6, 7], align_corners=False), align_corners=False)
        assert_close(out, expected)


def _homography_grid(h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An independent float64 grid of a homography: target pixel centres through all nine entries."""
    rows, cols = size
    ys = (2 * torch.arange(rows, dtype=torch.float64) + 1) / rows - 1
    xs = (2 * torch.arange(cols, dtype=torch.float64) + 1) / cols - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack((gx, gy, torch.ones_like(gx)), -1).reshape(-1, 3)  # (N, 3)
    src = pts @ h.transpose(1, 2)  # (B, N, 3)
    return (src[..., :2] / src[..., 2:]).reshape(h.shape[0], rows, cols, 2)


@pytest.mark.parametrize("transform", [None, Projective()], ids=["inferred", "Projective"])
def test_homography_with_any_last_entry(gen: torch.Generator, transform: Projective | None) -> None:
    x = random_input(gen, (2, 3, 10, 12), torch.float64)
    h = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    h = h * torch.tensor([2.0, 0.5], dtype=torch.float64).view(2, 1, 1)  # last entries far from 1
    out = torchstn.warp(x, h, transform, (8, 9), padding="border")
    expected = F.grid_sample(x, _homography_grid(h, (8, 9)), padding_mode="border", align_corners=False)
    assert_close(out, expected)
    # Scaling a homography does not change it: the same as Projective's 8 parameters (last entry divided out).
    params = (h / h[:, 2:, 2:]).reshape(2, 9)[:, :8]
    assert_close(out, torchstn.warp(x, params, Projective(), (8, 9), padding="border"))


def test_homography_keeps_the_given_eps() -> None:
    from torchstn.sampling._matrices import params_of_matrix

    h = torch.eye(3).expand(2, 3, 3)
    params, family = params_of_matrix(h, Projective(eps=1e-3))
    assert isinstance(family, Homography) and family.eps == 1e-3 and params.shape == (2, 9)
    assert params_of_matrix(h, None)[1].eps == Projective().eps


def test_identity_matrices_are_exact() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(torchstn.warp(x, torch.eye(2, 3).expand(2, 2, 3)), x, atol=1e-6)
    assert torch.allclose(torchstn.warp(x, torch.eye(3).expand(2, 3, 3)), x, atol=1e-6)


def test_matrix_errors_name_the_argument() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(OptionError, match=r"transform: None reads the family from a matrix .*\(2, 6\)"):
        torchstn.warp(x, torch.zeros(2, 6))
    with pytest.raises(ShapeError, match=r"params: expected \(B, P\) parameters or a matrix .* got \(2, 2, 2\)"):
        torchstn.warp(x, torch.zeros(2, 2, 2))
    with pytest.raises(ShapeError, match=r"params: Similarity\(\) takes \(B, 4\) parameters, got a \(2, 2, 3\)"):
        torchstn.warp(x, torch.eye(2, 3).expand(2, 2, 3), Similarity())
    with pytest.raises(ShapeError, match=r"params: Affine\(\) takes a \(B, 2, 3\) matrix or \(B, 6\) parameters"):
        torchstn.warp(x, torch.eye(3).expand(2, 3, 3), Affine())
    with pytest.raises(ShapeError, match=r"params: ThinPlateSpline"):
        torchstn.warp(x, torch.eye(2, 3).expand(2, 2, 3), ThinPlateSpline((2, 2)))


def test_matrix_gradients_flow(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 6, 6), torch.float64).requires_grad_()
    theta = _theta(gen, 2, 2, 3, torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda a, t: torchstn.warp(a, t, backend="torch"), (x, theta))
