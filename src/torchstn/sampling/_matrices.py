"""Matrices given to :func:`~torchstn.sampling.warp` in place of parameters: what ``F.affine_grid`` users have.

``warp(x, theta)`` with a ``(B, 2, 3)`` theta (``transform=None``: the family is read from the matrix's shape),
``warp(x, theta, Affine())``, ``warp(x, h, Projective())`` with a ``(B, 3, 3)`` homography (all nine entries: the
last need not be 1), ``warp(x, theta3d)`` with a ``(B, 3, 4)`` volume matrix. The matrix maps normalised target
coordinates to normalised source coordinates, as ``F.affine_grid``'s theta does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchstn.errors import OptionError, ShapeError
from torchstn.transforms import Affine, Affine3D, Projective, Transform

__all__ = ["MATRIX_SHAPES", "Homography", "params_of_matrix"]

#: The matrix shapes ``warp`` takes and the family each one means with ``transform=None``.
MATRIX_SHAPES: dict[tuple[int, int], str] = {
    (2, 3): "Affine (F.affine_grid's theta)",
    (3, 3): "Projective (a homography, all nine entries)",
    (3, 4): "Affine3D (F.affine_grid's theta for volumes)",
}


class Homography(Projective):
    """A homography given by all nine entries of its ``(3, 3)`` matrix, the last of which need not be 1 (a
    matrix handed to ``warp``, a composed chain's product), with a :class:`~torchstn.transforms.Projective`'s
    ``eps``. Its grid is the matrix's, entry for entry: no division by the last entry first."""

    num_params = 9
    roles = (*Projective.roles, "linear")

    def __repr__(self) -> str:
        return f"Homography(eps={self.eps:g})"

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return torch.eye(3, device=device, dtype=dtype).reshape(1, 9)

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        return params.reshape(-1, 3, 3)


def _expected() -> str:
    return ", ".join(f"(B, {r}, {c}) for {family}" for (r, c), family in MATRIX_SHAPES.items())


def params_of_matrix(params: Tensor, transform: Transform | None) -> tuple[Tensor, Transform]:
    """``warp``'s ``params`` and ``transform`` as parameters and a family.

    Args:
        params: ``(B, P)`` parameters of ``transform``, or a ``(B, 2, 3)``, ``(B, 3, 3)`` or ``(B, 3, 4)``
            matrix.
        transform: The family, or None to read it from the matrix's shape.

    Returns:
        ``(B, P')`` parameters and their family: a matrix's row-major entries for ``Affine``/``Affine3D``, all nine
        entries of a homography for :class:`Homography` (with ``Projective``'s ``eps`` when one is given).

    Raises:
        OptionError: ``transform=None`` with ``(B, P)`` parameters, which do not say their family.
        ShapeError: A matrix of another shape, or one that the given family does not take.
    """
    if not isinstance(params, Tensor) or params.ndim != 3:
        if transform is None:
            shape = tuple(params.shape) if isinstance(params, Tensor) else type(params).__name__
            raise OptionError(
                f"transform: None reads the family from a matrix ({_expected()}); params of shape {shape} "
                "need their transform (e.g. warp(x, params, Similarity()))"
            )
        return params, transform
    shape = (int(params.shape[1]), int(params.shape[2]))
    b = params.shape[0]
    if shape not in MATRIX_SHAPES:
        raise ShapeError(f"params: expected (B, P) parameters or a matrix ({_expected()}), got {tuple(params.shape)}")
    if transform is None:
        transform = {(2, 3): Affine(), (3, 3): Projective(), (3, 4): Affine3D()}[shape]
    if type(transform) is Affine and shape == (2, 3):
        return params.reshape(b, 6), transform
    if type(transform) is Affine3D and shape == (3, 4):
        return params.reshape(b, 12), transform
    if isinstance(transform, Projective) and shape == (3, 3):
        return params.reshape(b, 9), transform if isinstance(transform, Homography) else Homography(transform.eps)
    takes = {Affine: (2, 3), Affine3D: (3, 4), Projective: (3, 3)}
    own = next(
        (m for cls, m in takes.items() if type(transform) is cls or (cls is Projective and isinstance(transform, cls))),
        None,
    )
    what = f"a (B, {own[0]}, {own[1]}) matrix or " if own else ""
    raise ShapeError(
        f"params: {transform!r} takes {what}(B, {transform.num_params}) parameters, got a {tuple(params.shape)} "
        "matrix (pass transform=None to read the family from the matrix's shape)"
    )
