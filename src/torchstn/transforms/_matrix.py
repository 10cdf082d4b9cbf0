"""Matrix transform families: affine, attention, similarity, translation, projective and 3D affine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn._checks import check_number
from torchstn.errors import OptionError
from torchstn.geometry import DEFAULT_EPS, projective_grid
from torchstn.transforms._base import MatrixTransform

__all__ = ["Affine", "Affine3D", "Attention", "Projective", "Similarity", "Translation"]


def _from_rows(rows: Tensor) -> Tensor:
    """(B, n, n+1) affine rows -> (B, n+1, n+1) with a last row [0, ..., 0, 1]."""
    b, n, _ = rows.shape
    last = torch.zeros(b, 1, n + 1, device=rows.device, dtype=rows.dtype)
    last[:, 0, n] = 1.0
    return torch.cat((rows, last), dim=1)


def _tensor(values: Sequence[float], device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    return torch.tensor([list(values)], device=device, dtype=dtype)


class Affine(MatrixTransform):
    """General 2D affine transform: the paper's ``A_theta``, 6 parameters, row-major ``[[a, b, c], [d, e, f]]``.

    Works in normalised coordinates exactly as ``F.affine_grid`` (its grid matches ``F.affine_grid`` for both
    ``align_corners`` values), so on a non-square image a rotation matrix written in normalised units shears; use
    :class:`Similarity` for rotations that are true in pixel space.

    Example:
        >>> t = Affine()
        >>> t.identity_params(1)
        tensor([[1., 0., 0., 0., 1., 0.]])
        >>> t.grid(t.identity_params(2), (5, 7)).shape
        torch.Size([2, 5, 7, 2])
    """

    num_params = 6
    roles = ("linear", "linear", "translation", "linear", "linear", "translation")

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([1, 0, 0, 0, 1, 0], device, dtype)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return _from_rows(params.reshape(-1, 2, 3))

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return matrix[:, :2].reshape(-1, 6)

    def _rows(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return params.reshape(-1, 2, 3)


class Attention(MatrixTransform):
    """Crop, translate and isotropically scale: 3 parameters ``(s, tx, ty)``, ``A = [[s, 0, tx], [0, s, ty]]``.

    ``s < 1`` zooms in (the output shows a window ``s`` times the input's extent); ``(tx, ty)`` is the window's
    centre in normalised input coordinates. An isotropic scale of normalised coordinates is isotropic in pixels
    too, so the window keeps the input's aspect ratio on any image.

    Example:
        >>> Attention().matrix(torch.tensor([[0.5, 0.1, -0.2]]))
        tensor([[[ 0.5000,  0.0000,  0.1000],
                 [ 0.0000,  0.5000, -0.2000],
                 [ 0.0000,  0.0000,  1.0000]]])
    """

    num_params = 3
    roles = ("scale", "translation", "translation")
    axis_aligned = True

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([1, 0, 0], device, dtype)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        s, tx, ty = params.unbind(-1)
        zero = torch.zeros_like(s)
        rows = torch.stack((s, zero, tx, zero, s, ty), dim=-1).view(-1, 2, 3)
        return _from_rows(rows)

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        s = 0.5 * (matrix[:, 0, 0] + matrix[:, 1, 1])
        return torch.stack((s, matrix[:, 0, 2], matrix[:, 1, 2]), dim=-1)


class Translation(MatrixTransform):
    """Pure translation: 2 parameters ``(tx, ty)`` in normalised source units (1.0 is half the width/height).

    Example:
        >>> Translation().matrix(torch.tensor([[0.5, 0.0]]))[0, :2]
        tensor([[1.0000, 0.0000, 0.5000],
                [0.0000, 1.0000, 0.0000]])
    """

    num_params = 2
    roles = ("translation", "translation")
    axis_aligned = True

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([0, 0], device, dtype)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        tx, ty = params.unbind(-1)
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        return _from_rows(torch.stack((one, zero, tx, zero, one, ty), dim=-1).view(-1, 2, 3))

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return matrix[:, :2, 2].clone()


class Similarity(MatrixTransform):
    """Rotation, isotropic scale and translation, true in **pixel** space: 4 parameters.

    Parameters are ``(angle, log_scale, tx, ty)``:

    * ``angle`` in radians. Positive angles turn the *content* counter-clockwise as displayed (y down), so
      ``angle = pi/2`` on a square image equals ``torch.rot90(x, 1, dims=(-2, -1))``.
    * ``log_scale``: the source window is ``exp(log_scale)`` times the output's extent, so negative values zoom
      in. Log-scale keeps the scale positive and puts the identity at 0.
    * ``(tx, ty)``: translation in normalised source units.

    The rotation is applied in the source's pixel metric: with ``D = diag(W, H)`` of the source,
    ``A = exp(log_scale) * D^-1 R(angle) D``, so a circle in pixels stays a circle on non-square images (a plain
    normalised rotation would shear). Pass the input size as ``src_size`` (``grid`` defaults it to the output
    size; ``matrix`` to a square image).

    Example:
        >>> t = Similarity()
        >>> t.identity_params(1)
        tensor([[0., 0., 0., 0.]])
    """

    num_params = 4
    roles = ("angle", "log_scale", "translation", "translation")

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([0, 0, 0, 0], device, dtype)

    @staticmethod
    def _aspect(src_size: tuple[int, ...] | None) -> float:
        """Height over width of the source pixels' extent."""
        return 1.0 if src_size is None else src_size[0] / src_size[1]

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        angle, log_scale, tx, ty = params.unbind(-1)
        r = self._aspect(src_size)  # H / W
        s = torch.exp(log_scale)
        c, sn = s * torch.cos(angle), s * torch.sin(angle)
        rows = torch.stack((c, -sn * r, tx, sn / r, c, ty), dim=-1).view(-1, 2, 3)
        return _from_rows(rows)

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        r = self._aspect(src_size)
        c = 0.5 * (matrix[:, 0, 0] + matrix[:, 1, 1])
        sn = 0.5 * (matrix[:, 1, 0] * r - matrix[:, 0, 1] / r)
        angle = torch.atan2(sn, c)
        log_scale = 0.5 * torch.log(c * c + sn * sn)
        return torch.stack((angle, log_scale, matrix[:, 0, 2], matrix[:, 1, 2]), dim=-1)


class Projective(MatrixTransform):
    """Homography: 8 parameters, the row-major 3x3 matrix with its last entry fixed to 1.

    The perspective division never yields inf or NaN: a denominator within ``eps`` of zero is clamped to ``eps``
    with its sign kept (see :func:`torchstn.geometry.safe_denominator`), so points at the horizon sample padding.

    Args:
        eps: Smallest magnitude of the denominator.

    Example:
        >>> Projective().identity_params(1)
        tensor([[1., 0., 0., 0., 1., 0., 0., 0.]])
    """

    num_params = 8
    roles: tuple[str, ...] = (
        "linear",
        "linear",
        "translation",
        "linear",
        "linear",
        "translation",
        "perspective",
        "perspective",
    )
    projective = True

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        if check_number(eps, "eps") <= 0:
            raise OptionError(f"eps: expected a positive float, got {eps!r}")
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"Projective(eps={self.eps:g})"

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([1, 0, 0, 0, 1, 0, 0, 0], device, dtype)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        one = torch.ones_like(params[:, :1])
        return torch.cat((params, one), dim=-1).view(-1, 3, 3)

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        m = matrix / matrix[:, 2:, 2:]
        return m.reshape(-1, 9)[:, :8]

    def sampler_matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        """The full ``(B, 3, 3)`` homography (the grid needs its last row)."""
        return self._matrix(params, None)

    def grid_from_matrix(
        self, matrix: Tensor, size: tuple[int, ...], align_corners: bool, *, contiguous: bool = True
    ) -> Tensor:
        """:func:`~torchstn.geometry.projective_grid` with this family's ``eps`` (always contiguous)."""
        return projective_grid(matrix, size, align_corners, self.eps)

    def grid_bound(self, dtype: torch.dtype) -> float:
        """Numerators are at most 3 max|m| and the denominator at least ``eps`` in magnitude."""
        return torch.finfo(dtype).max * self.eps / 6.0


class Affine3D(MatrixTransform):
    """3D affine transform for volumes ``(B, C, D, H, W)``: 12 parameters, the row-major 3x4 matrix.

    Coordinates are ``(x, y, z)`` with x along W, y along H and z along D; the grid matches ``F.affine_grid``.

    Example:
        >>> t = Affine3D()
        >>> t.grid(t.identity_params(1), (4, 5, 6)).shape
        torch.Size([1, 4, 5, 6, 3])
    """

    num_params = 12
    roles = ("linear",) * 3 + ("translation",) + ("linear",) * 3 + ("translation",) + ("linear",) * 3 + ("translation",)
    ndim = 3

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return _tensor([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], device, dtype)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return _from_rows(params.reshape(-1, 3, 4))

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return matrix[:, :3].reshape(-1, 12)

    def _rows(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return params.reshape(-1, 3, 4)
