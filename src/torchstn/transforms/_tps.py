"""Thin-plate-spline transform with a kernel precomputed for its fixed target control points."""

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
    check_int,
    check_like,
    check_size,
    check_tensor,
)
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.geometry import normalized_coords
from torchstn.transforms._base import Transform

__all__ = ["ThinPlateSpline"]

_Key = tuple[tuple[int, ...], bool, torch.device, torch.dtype]
# Grids up to this many points use the interleaved weights (4x the memory of M, one GEMM with no copy after it).
_INTERLEAVED_MAX_POINTS = 1 << 19
# Relative tolerances below which target control points count as coincident, or as lying on one line.
_COINCIDENT_TOL = 1e-9
_COLLINEAR_TOL = 1e-9


def _radial(d2: Tensor) -> Tensor:
    """TPS radial basis U = r^2 log r^2, with U(0) = 0."""
    return d2 * torch.log(d2.clamp_min(1e-30))


def _check_layout(points: object) -> Tensor:
    """Validate a target layout given as ``control_points=``; return it as a CPU float64 ``(K, 2)`` tensor."""
    name = "control_points"
    if isinstance(points, Tensor):
        if points.dtype == torch.bool or points.is_complex():
            raise DTypeError(f"{name}: expected a real tensor of (x, y) points, got dtype {points.dtype}")
        if points.device.type == "meta":
            raise DTypeError(f"{name}: a meta tensor holds no values; give the layout on a real device (the CPU)")
        pts = points.detach().to(device="cpu", dtype=torch.float64, copy=True)
    else:
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
            raise DTypeError(f"{name}: expected a (K, 2) tensor or a sequence of (x, y) pairs, got {points!r}")
        try:
            pts = torch.tensor(points, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise DTypeError(f"{name}: expected a (K, 2) tensor or a sequence of (x, y) pairs, got {points!r}") from err
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ShapeError(f"{name}: expected shape (K, 2) with K >= 3 (x, y) points, got {tuple(pts.shape)}")
    if not bool(torch.isfinite(pts).all()):
        raise OptionError(f"{name}: every coordinate must be finite, got {pts.tolist()}")
    centred = pts - pts.mean(0)  # (K, 2)
    extent = float(centred.abs().max())
    d2 = (pts[:, None] - pts[None]).square().sum(-1)  # (K, K)
    d2.fill_diagonal_(math.inf)
    i, j = divmod(int(d2.argmin()), len(pts))
    if math.sqrt(float(d2[i, j])) <= _COINCIDENT_TOL * max(extent, 1.0):
        raise OptionError(
            f"{name}: points {i} and {j} coincide at {pts[i].tolist()}; the spline needs distinct control points"
        )
    sv = torch.linalg.svdvals(centred)  # (2,): the layout's extent along its principal axes
    if float(sv[1]) <= _COLLINEAR_TOL * float(sv[0]):
        raise OptionError(
            f"{name}: all {len(pts)} points lie on one line, which leaves the spline's affine part undetermined; "
            "give at least 3 points not on one line"
        )
    return pts


class ThinPlateSpline(Transform):
    """Thin-plate spline through ``K`` control points at fixed positions of the target (output).

    The parameters are the **source** positions of the control points, flattened as ``(x0, y0, x1, y1, ...)`` in
    the order of :meth:`control_points`, so ``num_params = 2K``. The identity parameters are the target positions
    themselves, and the spline through them is the identity map (its affine part is exact, its kernel part zero).

    Three target layouts:

    * a regular grid ``ThinPlateSpline((rows, cols))`` spanning ``[-1, 1]`` on both axes, row-major (rows along
      the height, x varying fastest); the paper uses ``(4, 4)``;
    * the RARE/ASTER fiducials, :meth:`fiducials`: ``K / 2`` points evenly spaced along the top edge, then
      ``K / 2`` along the bottom edge, both left to right, inset by a margin (ASTER: ``k=20, margin=0.05``);
    * any layout, ``ThinPlateSpline(control_points=points)`` with ``points`` a ``(K, 2)`` tensor or a sequence of
      ``(x, y)`` pairs in normalised coordinates: ``K >= 3`` distinct points, not all on one line (otherwise
      the spline's system is singular).

    The targets never change, so the spline's system ``L = [[U + lambda I, P], [P^T, 0]]`` is solved once (in
    float64) and, for each output size, the matrix ``M (N, K)`` that maps control-point positions to the ``N``
    grid points is cached: building a grid is one matrix product, ``grid = M @ params``, whatever the layout.
    (For grids up to 2**19 points the product runs against an interleaved ``(2K, 2N)`` copy of ``M``, so the
    GEMM writes the ``(B, H, W, 2)`` grid directly, with no transpose copy after it.)

    Args:
        grid: Control grid ``(rows, cols)``, each at least 2; default ``(4, 4)``. Not with ``control_points``.
        regularization: ``lambda >= 0``; 0 interpolates the control points exactly, larger values smooth the
            warp towards an affine one.
        control_points: Target layout ``(K, 2)`` in normalised ``(x, y)``; not with ``grid``.

    Example:
        >>> tps = ThinPlateSpline((4, 4))
        >>> tps.num_params
        32
        >>> g = tps.grid(tps.identity_params(2), (6, 5))
        >>> g.shape
        torch.Size([2, 6, 5, 2])
        >>> ThinPlateSpline(control_points=[(-1.0, -1.0), (1.0, -1.0), (0.0, 1.0)]).num_params
        6
    """

    def __init__(
        self,
        grid: Sequence[int] | None = None,
        regularization: float = 0.0,
        *,
        control_points: Tensor | Sequence[Sequence[float]] | None = None,
    ) -> None:
        if grid is not None and control_points is not None:
            raise OptionError("grid, control_points: give one target layout, not both")
        if (
            isinstance(regularization, bool)
            or not isinstance(regularization, (int, float))
            or not (regularization >= 0 and math.isfinite(regularization))
        ):
            raise OptionError(f"regularization: expected a finite non-negative float, got {regularization!r}")
        self.grid_shape: tuple[int, int] | None = None
        self._targets: Tensor | None = None  # (K, 2) float64 on the CPU, for layouts other than a grid
        if control_points is None:
            grid = (4, 4) if grid is None else grid
            if (
                not isinstance(grid, Sequence)
                or len(grid) != 2
                or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 2 for g in grid)
            ):
                raise OptionError(f"grid: expected (rows, cols) with each at least 2, got {grid!r}")
            self.grid_shape = (int(grid[0]), int(grid[1]))
            self.num_controls = self.grid_shape[0] * self.grid_shape[1]
        else:
            self._targets = _check_layout(control_points)
            self.num_controls = int(self._targets.shape[0])
        self.regularization = float(regularization)
        self.num_params = 2 * self.num_controls
        self.roles = ("point",) * self.num_params
        # How __repr__ names the layout: the constructor, then its layout argument.
        self._layout = (
            "ThinPlateSpline",
            f"grid={self.grid_shape}" if self.grid_shape else f"control_points=<K={self.num_controls}>",
        )
        self._solution: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._weights: dict[_Key, Tensor] = {}
        self._interleaved: dict[_Key, Tensor] = {}

    @classmethod
    def fiducials(
        cls, k: int = 20, margin: float | tuple[float, float] = 0.05, regularization: float = 0.0
    ) -> ThinPlateSpline:
        """The RARE/ASTER fiducial layout: ``k / 2`` points along the top edge, ``k / 2`` along the bottom.

        Each row runs left to right, evenly spaced; the top row comes first. ``margin`` insets the points from the
        image border as ASTER's ``margins`` do, as a fraction of the image's width (x) and height (y), so the
        points span ``x, y in [-(1 - 2 * margin), 1 - 2 * margin]`` in normalised coordinates. ASTER uses
        ``k=20, margin=0.05`` (the default); RARE puts its 20 fiducials on the borders themselves, as does the TPS
        of the common scene-text benchmark code: ``k=20, margin=0``, the layout of ``ThinPlateSpline((2, 10))``.

        The inset matters for bounded parameters: with ``margin > 0`` every fiducial lies strictly inside the
        image, so ``Bounds(point=1.0)`` starts at the identity in either of its modes.

        Args:
            k: Number of control points, even and at least 4.
            margin: ``m`` or ``(m_x, m_y)``, each in ``[0, 0.5)``.
            regularization: As in the constructor.

        Returns:
            The transform; :meth:`control_points` gives the layout ``(k, 2)``.

        Example:
            >>> tps = ThinPlateSpline.fiducials(k=6, margin=0.05)
            >>> tps.control_points(dtype=torch.float64)
            tensor([[-0.9000, -0.9000],
                    [ 0.0000, -0.9000],
                    [ 0.9000, -0.9000],
                    [-0.9000,  0.9000],
                    [ 0.0000,  0.9000],
                    [ 0.9000,  0.9000]], dtype=torch.float64)
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 4 or k % 2:
            raise OptionError(f"k: expected an even number of control points, at least 4, got {k!r}")
        pair = (margin, margin) if isinstance(margin, (int, float)) else margin
        if (
            isinstance(pair, (str, bytes))
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 <= m < 0.5 for m in pair)
        ):
            raise OptionError(f"margin: expected m or (m_x, m_y) with each in [0, 0.5), got {margin!r}")
        ex, ey = 1.0 - 2.0 * float(pair[0]), 1.0 - 2.0 * float(pair[1])  # normalised half-extents
        xs = torch.linspace(-ex, ex, k // 2, dtype=torch.float64)
        top = torch.stack((xs, torch.full_like(xs, -ey)), -1)
        bottom = torch.stack((xs, torch.full_like(xs, ey)), -1)
        tps = cls(regularization=regularization, control_points=torch.cat((top, bottom)))
        tps._layout = ("ThinPlateSpline.fiducials", f"k={k}, margin={margin!r}")
        return tps

    def __repr__(self) -> str:
        return f"{self._layout[0]}({self._layout[1]}, regularization={self.regularization:g})"

    def control_points(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """The fixed target control points, ``(K, 2)`` in ``(x, y)`` order (row-major for a grid).

        Raises:
            DTypeError: ``dtype`` is not a floating-point dtype (integers would truncate the points).
        """
        device = check_device(device, "device")
        dtype = check_dtype(dtype, "dtype") or torch.get_default_dtype()
        if self._targets is not None:
            return self._targets.to(device=device, dtype=dtype)
        assert self.grid_shape is not None
        ys = torch.linspace(-1.0, 1.0, self.grid_shape[0], device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, self.grid_shape[1], device=device, dtype=dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((gx, gy), dim=-1).reshape(-1, 2)

    def _identity(self, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        return self.control_points(device, dtype).reshape(1, -1)

    def _basis(self, points: Tensor) -> Tensor:
        """Rows ``[U(|p - c_k|^2) for k, 1, x, y]`` for points ``(..., N, 2)``: ``(..., N, K + 3)``."""
        ctrl = self.control_points(points.device, points.dtype)  # (K, 2)
        d2 = (points[..., :, None, :] - ctrl).square().sum(-1)  # (..., N, K)
        one = torch.ones_like(points[..., :1])
        return torch.cat((_radial(d2), one, points), dim=-1)

    def _solve(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """First ``K`` columns of ``L^-1``: ``(K + 3, K)``; maps control positions to spline coefficients."""
        key = (device, dtype)
        sol = self._solution.get(key)
        if sol is None:
            with torch.inference_mode(False), torch.no_grad():  # usable with autograd later
                k = self.num_controls
                ctrl = self.control_points(device, torch.float64)
                lhs = torch.zeros(k + 3, k + 3, device=device, dtype=torch.float64)
                lhs[:k] = self._basis(ctrl)
                lhs[:k, :k] += self.regularization * torch.eye(k, device=device, dtype=torch.float64)
                lhs[k:, :k] = lhs[:k, k:].T
                rhs = torch.zeros(k + 3, k, device=device, dtype=torch.float64)
                rhs[:k] = torch.eye(k, device=device, dtype=torch.float64)
                sol = torch.linalg.solve(lhs, rhs).to(dtype)
            self._solution[key] = sol
        return sol

    def weights(
        self,
        size: Sequence[int],
        align_corners: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The cached ``(H * W, K)`` matrix taking control-point positions to grid points for an output ``size``."""
        h, w = check_size(size, "size", 2)
        check_bool(align_corners, "align_corners")
        dtype = check_dtype(dtype, "dtype") or torch.get_default_dtype()
        device = check_device(device, "device") or torch.device("cpu")
        key: _Key = ((h, w), bool(align_corners), device, dtype)
        m = self._weights.get(key)
        if m is None:
            if capturing_graph():
                raise OptionError(
                    f"size: the thin-plate-spline weights for an output of {(h, w)} are solved once in float64 and "
                    "cannot be built inside an exported graph (the solve has no ONNX operator); run the model once "
                    "on an input of the export size first (torchstn.export.export_onnx does)"
                )
            with torch.inference_mode(False), torch.no_grad():  # usable later with autograd, whatever the mode now
                m = self._make_weights(h, w, bool(align_corners), device, dtype)
            self._weights[key] = m
        return m

    def _make_weights(self, h: int, w: int, align_corners: bool, device: torch.device, dtype: torch.dtype) -> Tensor:
        xs = normalized_coords(w, align_corners, device=device, dtype=torch.float64)
        ys = normalized_coords(h, align_corners, device=device, dtype=torch.float64)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack((gx, gy), dim=-1).reshape(-1, 2)  # (N, 2)
        return (self._basis(pts) @ self._solve(device, torch.float64)).to(dtype).contiguous()  # (N, K)

    def _interleaved_weights(
        self, size: tuple[int, int], align_corners: bool, device: torch.device, dtype: torch.dtype
    ) -> Tensor | None:
        """``(2K, 2N)``: row ``2k + d`` holds ``M[:, k]`` in output channel ``d`` of every point, zeros elsewhere.

        ``None`` while a graph is captured and none is cached (the caller then uses the plain weights)."""
        key: _Key = (size, bool(align_corners), device, dtype)
        big = self._interleaved.get(key)
        if big is None:
            if capturing_graph():
                return None
            m = self.weights(size, align_corners, device, dtype)  # (N, K)
            n, k = m.shape
            with torch.inference_mode(False), torch.no_grad():
                big = torch.zeros(k, 2, n, 2, device=device, dtype=dtype)
                big[:, 0, :, 0] = m.T
                big[:, 1, :, 1] = m.T
                big = big.reshape(2 * k, 2 * n)
            self._interleaved[key] = big
        return big

    def grid(
        self,
        params: Tensor,
        size: Sequence[int],
        *,
        align_corners: bool = False,
        src_size: Sequence[int] | None = None,
    ) -> Tensor:
        out, _ = self._sizes(size, src_size)
        check_bool(align_corners, "align_corners")
        params = self.check_params(params)
        if out[0] * out[1] <= _INTERLEAVED_MAX_POINTS:
            big = self._interleaved_weights((out[0], out[1]), align_corners, params.device, params.dtype)
            if big is not None:
                return (params @ big).view(-1, out[0], out[1], 2)  # one GEMM writes the grid in place
        m = self.weights(out, align_corners, params.device, params.dtype)  # (N, K)
        # einsum contracts K in one GEMM; a broadcast matmul would run B tiny GEMMs (about 40x slower).
        grid = torch.einsum("nk,bkd->bnd", m, params.reshape(-1, self.num_controls, 2)).contiguous()  # (B, N, 2)
        return grid.view(-1, out[0], out[1], 2)

    def coefficients(self, params: Tensor) -> Tensor:
        """Spline coefficients ``(B, K + 3, 2)``: ``K`` kernel weights, then the affine part ``(1, x, y)``."""
        params = self.check_params(params)
        return self._solve(params.device, params.dtype) @ params.reshape(-1, self.num_controls, 2)

    def map_points(
        self,
        params: Tensor,
        points: Tensor,
        *,
        inverse: bool = False,
        src_size: Sequence[int] | None = None,
        iterations: int = 20,
    ) -> Tensor:
        """Map points with the spline; ``inverse=True`` solves ``f(t) = s`` by Newton's method.

        The inverse has no closed form: it starts from ``t = s`` and runs up to ``iterations`` Newton steps with
        the spline's analytic Jacobian (a few steps suffice for warps of moderate size). A warp that folds over
        itself has no unique inverse; the result is then one of the preimages.
        """
        coef = self.coefficients(params)  # (B, K + 3, 2)
        check_tensor(points, "points", "B,N,2", dims={"B": coef.shape[0]}, nonempty=False)
        check_like(points, "points", params, "params")
        check_bool(inverse, "inverse")
        check_int(iterations, "iterations", minimum=0)
        if not inverse or points.shape[1] == 0:
            return self._basis(points) @ coef
        ctrl = self.control_points(points.device, points.dtype)
        w, a = coef[:, : self.num_controls], coef[:, self.num_controls + 1 :]  # (B, K, 2), (B, 2, 2)
        t = points
        for _ in range(iterations):
            resid = self._basis(t) @ coef - points  # (B, N, 2)
            d = t[..., :, None, :] - ctrl  # (B, N, K, 2)
            d2 = d.square().sum(-1, keepdim=True)
            grad_u = 2.0 * d * (torch.log(d2.clamp_min(1e-30)) + 1.0) * (d2 > 0)  # (B, N, K, 2)
            # jac[b, n, i, j] = d f_i / d t_j
            jac = torch.einsum("bki,bnkj->bnij", w, grad_u) + a.transpose(-1, -2)[:, None]
            t = t - torch.linalg.solve(jac, resid.unsqueeze(-1)).squeeze(-1)
            if bool(resid.abs().max() < 1e-7 if t.dtype == torch.float64 else resid.abs().max() < 1e-6):
                break
        return t
