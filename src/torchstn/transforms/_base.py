"""Base classes shared by every transform family."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn._checks import (
    capturing_graph,
    check_bool,
    check_device,
    check_dtype,
    check_like,
    check_size,
    check_tensor,
)
from torchstn.errors import DTypeError, NonFiniteError, ShapeError
from torchstn.geometry import DEFAULT_EPS, _affine_grid, invert, transform_points

__all__ = ["MatrixTransform", "Transform"]


class Transform:
    """A family of spatial transforms with a fixed number of parameters.

    A transform is stateless apart from its settings: it turns a batch of parameters ``(B, num_params)`` into a
    sampling grid. Coordinates follow the library convention (normalised to [-1, 1], ``(x, y[, z])`` order,
    target (output) to source (input)).

    What a family offers the sampler (:mod:`torchstn.sampling`) is a small protected API, for the sampler and for
    families defined outside torchstn, not for end users: :meth:`sampler_matrix` (the matrix the grid is built
    from, or None for a family without one), :meth:`grid_from_matrix` (that grid) and :meth:`grid_bound` (how large
    the matrix may be for its grid to be certainly finite). A family with a matrix lets the sampler check the
    matrix instead of the grid for non-finite values and lets a backend such as the fused kernel sample without
    building the grid. These methods trust their inputs: the sampler has checked them.

    Attributes:
        num_params: Number of parameters per sample.
        ndim: Number of spatial dimensions (2 for images, 3 for volumes).
        roles: What each parameter is, used by bounded parameterisations: ``"translation"``, ``"scale"``,
            ``"log_scale"``, ``"angle"``, ``"linear"`` (an entry of a linear part), ``"perspective"`` or ``"point"``
            (a control point's coordinate).
    """

    num_params: int
    ndim: int = 2
    roles: tuple[str, ...]

    def identity_params(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Parameters of the identity warp, ``(batch_size, num_params)``.

        Args:
            batch_size: Number of rows, at least 1.
            device: Device of the result.
            dtype: A floating-point dtype (default: torch's default dtype); an integer dtype would truncate the
                parameters (a thin-plate spline's control points) and is a :class:`~torchstn.errors.DTypeError`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise DTypeError(f"batch_size: expected a positive int, got {batch_size!r}")
        if batch_size < 1:
            raise ShapeError(f"batch_size: expected a positive int, got {batch_size!r}")
        device = check_device(device, "device")
        dtype = check_dtype(dtype, "dtype")
        one = self._identity(device=device, dtype=dtype or torch.get_default_dtype())
        return one.expand(batch_size, self.num_params).clone()

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def check_params(self, params: object, name: str = "params") -> Tensor:
        """Validate ``params``: a floating ``(B, num_params)`` tensor with ``B >= 1``; return it."""
        check_tensor(params, name, f"B,{self.num_params}")
        assert isinstance(params, Tensor)
        return params

    def _sizes(self, size: Sequence[int], src_size: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        out = check_size(size, "size", self.ndim)
        src = out if src_size is None else check_size(src_size, "src_size", self.ndim)
        return out, src

    def grid(
        self,
        params: Tensor,
        size: Sequence[int],
        *,
        align_corners: bool = False,
        src_size: Sequence[int] | None = None,
    ) -> Tensor:
        """Sampling grid for an output of ``size``.

        Args:
            params: ``(B, num_params)`` transform parameters.
            size: Output spatial size ``(H', W')`` (or ``(D', H', W')`` in 3D).
            align_corners: Coordinate convention; pass the same value to the sampler.
            src_size: Spatial size of the input that will be sampled; defaults to ``size``. Only families that
                work in pixel space (:class:`~torchstn.transforms.Similarity`) use it.

        Returns:
            Contiguous grid ``(B, H', W', 2)`` (or ``(B, D', H', W', 3)``) of normalised source coordinates.

        Raises:
            DTypeError: ``align_corners`` is not a bool (the string ``"False"`` is truthy), or ``params`` is not a
                floating tensor.
            NonFiniteError: Finite parameters of a matrix family give a matrix or grid holding inf or NaN (the
                entries overflow the dtype, e.g. a :class:`~torchstn.transforms.Similarity` ``log_scale`` above
                about 88 in float32). Non-finite parameters are not checked: they give a non-finite grid, as
                before (the sampler's ``nonfinite`` option decides what happens to it).
        """
        raise NotImplementedError

    def map_points(
        self,
        params: Tensor,
        points: Tensor,
        *,
        inverse: bool = False,
        src_size: Sequence[int] | None = None,
    ) -> Tensor:
        """Map normalised points from target to source (or from source to target with ``inverse=True``).

        ``map_points(params, p)`` is where the grid samples for an output pixel at ``p``: landmarks annotated on
        the output map to the input; ``inverse=True`` carries input landmarks into the output.

        Args:
            params: ``(B, num_params)``.
            points: ``(B, N, ndim)`` normalised points.
            inverse: Map source to target instead.
            src_size: Input spatial size, used only by pixel-space families; default: a square input (pass it
                for non-square inputs, as :meth:`grid` defaults it to the output size instead).

        Returns:
            ``(B, N, ndim)`` mapped points.

        Raises:
            DTypeError: ``points`` has another dtype or device than ``params`` (a meta tensor against a CPU one,
                say), or ``inverse`` is not a bool.
            NonFiniteError: As in :meth:`grid`, for the matrix of finite parameters.
        """
        raise NotImplementedError

    # --- protected: what the sampler uses ---------------------------------------------------------------------

    def sampler_matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor | None:
        """The matrix the sampling grid is built from, or None when the family has none (the default).

        Args:
            params: ``(B, num_params)``, already checked.
            src_size: The input's spatial size, for families that work in pixel space.

        Returns:
            ``(B, ndim, ndim + 1)`` affine rows, or the full ``(B, ndim + 1, ndim + 1)`` matrix of a projective
            family; None for families without a matrix (the sampler then builds the grid with :meth:`grid`).
        """
        return None

    def grid_from_matrix(
        self, matrix: Tensor, size: tuple[int, ...], align_corners: bool, *, contiguous: bool = True
    ) -> Tensor:
        """The sampling grid of a :meth:`sampler_matrix` result.

        Args:
            matrix: What :meth:`sampler_matrix` returned.
            size: Output spatial size, already checked.
            align_corners: Coordinate convention.
            contiguous: False allows a batch-strided grid (each image's grid contiguous), which some sizes write
                faster; pass True when the caller reshapes the grid across images.

        Returns:
            ``(B, *size, ndim)`` normalised source coordinates, as :meth:`grid`.
        """
        raise NotImplementedError(f"{self!r} has no sampler matrix")

    def grid_bound(self, dtype: torch.dtype) -> float:
        """Largest matrix entry (in magnitude) for which the grid of :meth:`grid_from_matrix` is certainly finite
        in ``dtype``; the sampler checks the grid itself for larger matrices."""
        raise NotImplementedError(f"{self!r} has no sampler matrix")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MatrixTransform(Transform):
    """A family whose members are ``(ndim+1, ndim+1)`` matrices (affine or projective).

    Subclasses implement :meth:`_matrix` (params to a ``src_from_dst`` matrix) and :meth:`_params` (the inverse
    for matrices of the family).
    """

    projective: bool = False
    eps: float = DEFAULT_EPS
    #: True for a family whose sampler matrix has ``A[0, 1] = A[1, 0] = 0`` for every parameter value (source x
    #: depends on output x alone, y on y): :class:`~torchstn.transforms.Attention` and
    #: :class:`~torchstn.transforms.Translation`. ``antialias=True`` then filters only the pixels it reads (a
    #: faster path, the same output). A subclass that adds a rotation or shear must set it back to False.
    axis_aligned: bool = False

    def _matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        raise NotImplementedError

    def _params(self, matrix: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        raise NotImplementedError

    def _rows(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        """The top ``ndim`` rows of the matrix, ``(B, ndim, ndim+1)``; overridden where cheaper."""
        return self._matrix(params, src_size)[:, : self.ndim]

    def matrix(self, params: Tensor, *, src_size: Sequence[int] | None = None) -> Tensor:
        """The ``src_from_dst`` matrix, ``(B, 3, 3)`` (``(B, 4, 4)`` in 3D), in normalised coordinates.

        Args:
            params: ``(B, num_params)``.
            src_size: Input spatial size, used only by families that work in pixel space
                (:class:`~torchstn.transforms.Similarity`); default: a square input. Unlike :meth:`grid`, which
                defaults it to the output size, a matrix has no size to fall back on: pass it for non-square inputs.

        Raises:
            NonFiniteError: Finite parameters give a matrix holding inf or NaN (see :meth:`Transform.grid`).
        """
        params = self.check_params(params)
        src = None if src_size is None else check_size(src_size, "src_size", self.ndim)
        m = self._matrix(params, src)
        self._check_overflow(params, m)
        return m

    def _check_overflow(self, params: Tensor, matrix: Tensor) -> bool:
        """Raise :class:`NonFiniteError` naming ``params`` when finite parameters give a non-finite matrix.

        Returns whether every entry is at most :meth:`grid_bound` in magnitude (the grid is then certainly finite).
        Costs one reduction over the small matrix and one read to the host; skipped (True) while a graph is captured
        or compiled and for meta tensors, which hold no values. Non-finite parameters pass (True): their matrix is
        non-finite by their own doing, and the sampler's ``nonfinite`` option handles it.
        """
        if capturing_graph() or torch.compiler.is_compiling() or matrix.device.type == "meta":
            return True
        lo, hi = (float(v) for v in torch.stack(torch.aminmax(matrix.detach())).tolist())
        if math.isfinite(lo) and math.isfinite(hi):
            return max(-lo, hi) <= self.grid_bound(matrix.dtype)
        _raise_if_finite(params, f"{_article(repr(self))} {self!r} matrix", matrix)
        return True

    def _check_grid_overflow(self, params: Tensor, grid: Tensor) -> None:
        """:meth:`_check_overflow` for a grid built from a matrix larger than :meth:`grid_bound`."""
        if not bool(torch.isfinite(grid.detach()).all()):
            _raise_if_finite(params, f"{_article(repr(self))} {self!r} grid", grid)

    def params_from_matrix(self, matrix: Tensor, *, src_size: Sequence[int] | None = None) -> Tensor:
        """Parameters of a matrix of this family (the inverse of :meth:`matrix`).

        Args:
            matrix: ``(B, n, n)`` matrix; for a restricted family (similarity, attention, translation) it must
                belong to the family, otherwise the result is a projection onto it.
            src_size: As in :meth:`matrix`.
        """
        n = self.ndim + 1
        check_tensor(matrix, "matrix", f"B,{n},{n}")
        src = None if src_size is None else check_size(src_size, "src_size", self.ndim)
        return self._params(matrix, src)

    def inverse_params(self, params: Tensor, *, src_size: Sequence[int] | None = None) -> Tensor:
        """Parameters of the inverse transform (every matrix family is closed under inversion)."""
        m = self.matrix(params, src_size=src_size)
        return self.params_from_matrix(invert(m), src_size=src_size)

    def grid(
        self,
        params: Tensor,
        size: Sequence[int],
        *,
        align_corners: bool = False,
        src_size: Sequence[int] | None = None,
    ) -> Tensor:
        out, src = self._sizes(size, src_size)
        check_bool(align_corners, "align_corners")
        params = self.check_params(params)
        m = self.sampler_matrix(params, src)
        small = self._check_overflow(params, m)
        grid = self.grid_from_matrix(m, out, align_corners)
        if not small:
            self._check_grid_overflow(params, grid)
        return grid

    def sampler_matrix(self, params: Tensor, src_size: tuple[int, ...] | None) -> Tensor:
        """The top ``ndim`` rows of the matrix, ``(B, ndim, ndim + 1)`` (the full matrix when projective)."""
        return self._rows(params, src_size)

    def grid_from_matrix(
        self, matrix: Tensor, size: tuple[int, ...], align_corners: bool, *, contiguous: bool = True
    ) -> Tensor:
        """The affine grid of ``matrix`` (see :meth:`Transform.grid_from_matrix`)."""
        return _affine_grid(matrix, size, align_corners, contiguous=contiguous)

    def grid_bound(self, dtype: torch.dtype) -> float:
        """Every normalised target coordinate lies in [-1, 1], so an affine grid component is a sum of ``ndim + 1``
        terms each at most the largest entry; a factor of two more covers rounding."""
        return torch.finfo(dtype).max / (2.0 * (self.ndim + 1))

    def map_points(
        self,
        params: Tensor,
        points: Tensor,
        *,
        inverse: bool = False,
        src_size: Sequence[int] | None = None,
    ) -> Tensor:
        m = self.matrix(params, src_size=src_size)
        check_tensor(points, "points", f"B,N,{self.ndim}", dims={"B": m.shape[0]}, nonempty=False)
        check_like(points, "points", params, "params")
        if check_bool(inverse, "inverse"):
            m = invert(m)
        if not self.projective:
            m = m[:, : self.ndim]
        return transform_points(m, points, self.eps)


def _article(word: str) -> str:
    """``"an"`` before a vowel (``an Affine() matrix``), else ``"a"`` (``a Projective() matrix``)."""
    return "an" if word[:1].lower() in "aeiou" and word else "a"


def _raise_if_finite(params: Tensor, what: str, result: Tensor) -> None:
    """Raise :class:`NonFiniteError` when ``params`` is finite although ``result`` (its matrix or grid) is not."""
    if bool(torch.isfinite(params.detach()).all()):
        bad = int((~torch.isfinite(result.detach())).flatten(1).any(1).sum())
        raise NonFiniteError(
            f"params: {bad} sample(s) of finite parameters give {what} holding inf or NaN (an entry overflows "
            f"{result.dtype}); keep the parameters in range, e.g. with torchstn.Bounds"
        )
