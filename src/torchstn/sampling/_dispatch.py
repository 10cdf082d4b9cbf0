"""The one path from a call to its output, shared by :func:`~torchstn.sampling.sample`,
:func:`~torchstn.sampling.warp`, the multi-head :class:`~torchstn.modules.SpatialTransformer` and the composed
:class:`~torchstn.modules.SerialSpatialTransformer`.

1. Check the input, the parameters (``(B, P)``, or ``(B, N, P)`` for ``N`` heads) or the grid, and the sizes.
2. For a family with a matrix, check the matrix for NaN or inf (``nonfinite="raise"``): a finite matrix small
   enough proves every grid point finite, which saves the pass over the grid.
3. Choose the backend (:func:`~torchstn.sampling._backends.choose`).
4. For a backend that reads a grid: build the grid and check it where the matrix did not vouch for it.
5. Run it, with ``padding="fill"`` on zero padding (:mod:`~torchstn.sampling._fill`), and mark non-finite
   points NaN for ``nonfinite="propagate"``.

With ``antialias=True`` step 5 runs, for a 2D affine family, :func:`torchstn._antialias.prefiltered_affine_sample`
(each (image, head) pair's footprint filter, then the plain sample by the backend ``backend=`` chooses without
the option), and otherwise :func:`torchstn._antialias.antialiased_sample` on the grid (the mip-map; the grid
path reads its level 0), each head on its own grid, with the same padding, fill and non-finite handling
(``nonfinite="propagate"`` takes the mip-map, which has the grid).

Under ``torch.autocast`` the call first takes the dtypes of :mod:`~torchstn.sampling._autocast` (parameters,
matrix and grid in float32, the input in the dtype autocast gives ``F.grid_sample``) and runs with autocast off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn._antialias import antialiased_sample, prefiltered_affine_sample
from torchstn._checks import capturing_graph, check_size, check_tensor
from torchstn.errors import DTypeError, NonFiniteError, ShapeError
from torchstn.sampling._autocast import AutocastDtypes, autocast_dtypes, to_work_dtype
from torchstn.sampling._backend import GridBackend, SamplerCall
from torchstn.sampling._backends import choose
from torchstn.sampling._fill import fill_tensor, filled
from torchstn.sampling._options import SamplingOptions
from torchstn.transforms import MatrixTransform, Transform

__all__ = ["sample_grid", "warp_params"]


def sample_grid(input: Tensor, grid: Tensor, options: SamplingOptions) -> Tensor:
    """:func:`~torchstn.sampling.sample` with validated options: ``(B, C, *S)`` at ``(B, *S', nd)``."""
    amp = autocast_dtypes(input, grid.dtype) if isinstance(input, Tensor) and isinstance(grid, Tensor) else None
    if amp is not None:  # both in the dtype F.grid_sample under this autocast takes them to
        with torch.autocast(amp.device_type, enabled=False):
            return _sample_grid(input.to(amp.sample), grid.to(amp.sample), options)
    return _sample_grid(input, grid, options)


def _sample_grid(input: Tensor, grid: Tensor, options: SamplingOptions) -> Tensor:
    check_tensor(input, "input", "*,C,H,W")
    if input.ndim not in (4, 5):
        raise ShapeError(f"input: expected (B, C, H, W) or (B, C, D, H, W), got {tuple(input.shape)}")
    nd = input.ndim - 2
    try:
        check_tensor(grid, "grid", "B,H,W,2" if nd == 2 else "B,D,H,W,3", dims={"B": input.shape[0]})
    except ShapeError as err:  # the input's rank decided the grid's: say so
        raise ShapeError(f"{err} (for the {input.ndim}-dimensional input of shape {tuple(input.shape)})") from None
    if grid.dtype != input.dtype:
        raise DTypeError(f"grid: expected the dtype of input ({input.dtype}), got {grid.dtype}")
    if grid.device != input.device:
        raise DTypeError(f"grid: expected the device of input ({input.device}), got {grid.device}")
    options.check_antialias(nd)
    call = SamplerCall(input, options, options.kernel(nd), tuple(grid.shape[1:-1]), grid=grid)
    call.capturing = capturing_graph()
    return _run(call)


def warp_params(
    input: Tensor,
    params: Tensor,
    transform: Transform,
    output_size: Sequence[int] | None,
    options: SamplingOptions,
    *,
    heads: bool = False,
) -> Tensor:
    """Warp ``input`` with ``params`` of ``transform``: :func:`~torchstn.sampling.warp` and the modules.

    Args:
        input: ``(B, C, *S)``.
        params: ``(B, P)``; with ``heads``, ``(B, N, P)`` (``N`` transforms of each image).
        transform: The family.
        output_size: ``S'``; default ``S``.
        options: Validated options.
        heads: Whether ``params`` has a heads dimension.

    Returns:
        ``(B, C, *S')``; with ``heads``, ``(B, N, C, *S')``.
    """
    amp = autocast_dtypes(input) if isinstance(input, Tensor) else None
    if amp is not None:
        with torch.autocast(amp.device_type, enabled=False):
            return _warp_params(
                input.to(amp.sample), to_work_dtype(params, amp), transform, output_size, options, heads, amp
            )
    return _warp_params(input, params, transform, output_size, options, heads, None)


def _warp_params(
    input: Tensor,
    params: Tensor,
    transform: Transform,
    output_size: Sequence[int] | None,
    options: SamplingOptions,
    heads: bool,
    amp: AutocastDtypes | None,
) -> Tensor:
    if not isinstance(transform, Transform):
        raise DTypeError(f"transform: expected a torchstn.transforms.Transform, got {type(transform).__name__}")
    check_tensor(input, "input", "*,C,H,W")
    if input.ndim != transform.ndim + 2:
        raise ShapeError(
            f"input: {transform!r} warps {transform.ndim}D data, expected {transform.ndim + 2} dimensions, "
            f"got {tuple(input.shape)}"
        )
    options.check_antialias(transform.ndim)
    b = input.shape[0]
    if heads:
        check_tensor(params, "params", f"B,N,{transform.num_params}", dims={"B": b})
        n = params.shape[1]
        flat = params.reshape(b * n, transform.num_params)  # image-major: row k warps image k // N
    else:
        n = 1
        flat = transform.check_params(params)
        check_tensor(flat, "params", "B,P", dims={"B": b})
    dtype = input.dtype if amp is None else amp.work  # under autocast: float32 (float64 for a float64 input)
    if params.dtype != dtype or params.device != input.device:
        raise DTypeError(
            f"params: expected the dtype and device of input ({dtype}, {input.device}), "
            f"got ({params.dtype}, {params.device})"
        )
    src_size = tuple(input.shape[2:])
    size = src_size if output_size is None else check_size(output_size, "output_size", transform.ndim)
    call = SamplerCall(input, options, options.kernel(transform.ndim), size, heads=n, transform=transform, params=flat)
    call.capturing = capturing_graph()
    call.matrix = transform.sampler_matrix(flat, src_size)
    if call.matrix is not None and options.nonfinite == "raise" and not call.capturing:
        call.grid_finite = _matrix_proves_grid_finite(call.matrix, transform, src_size)
    out = _run(call)  # (B, C, *S'), or (B, N, C, *S') for heads
    return out.unsqueeze(1) if heads and n == 1 else out


def _run(call: SamplerCall) -> Tensor:
    """Steps 3-5 of the module docstring: ``(B, C, *S')`` for one head, ``(B, N, C, *S')`` for several."""
    backend = choose(call)
    options = call.options
    if options.antialias:
        assert isinstance(backend, GridBackend)  # the fused kernel's can_run refuses antialias
        return _run_antialiased(call, backend)
    finite: Tensor | None = None
    if backend.reads_grid:
        if call.grid is None:
            call.grid = _heads_grid(call)
        if options.nonfinite == "raise" and not call.grid_finite and not call.capturing:
            _check_grid(call.grid, call)
        elif options.nonfinite == "propagate":
            finite = torch.isfinite(call.grid).all(-1)  # (B, N*H', W')
    fill = None if options.fill is None else fill_tensor(options.fill, call.input)
    out = filled(call.input, options.padding, fill, lambda src, pad: backend.run(call, src, pad), call.heads)
    if finite is not None:  # (B, N*H', W') -> (B, 1, H', W') or (B, N, 1, H', W')
        finite = finite.unsqueeze(1) if call.heads == 1 else finite.view(call.batch, call.heads, 1, *call.size)
        out = torch.where(finite, out, torch.full_like(out, float("nan")))
    return out


def _run_antialiased(call: SamplerCall, backend: GridBackend) -> Tensor:
    """``antialias=True``: the footprint-averaged sample of every (image, head) pair's own grid, ``backend``
    reading level 0; padding, fill and non-finite grids as in :func:`_run`."""
    options, input, n = call.options, call.input, call.heads
    if _prefilter_applies(call):
        return _run_prefiltered(call, backend)
    grid = call.grid if call.grid is not None else _flat_grid(call, contiguous=True)  # (B * N, H', W', 2)
    if n > 1:
        input = input.repeat_interleave(n, dim=0)  # row k of the grid warps image k // N
    finite: Tensor | None = None
    if options.nonfinite == "raise" and not call.grid_finite and not call.capturing:
        _check_grid(grid, call)
    elif options.nonfinite == "propagate":  # sampled at 0 there (the footprints stay finite), then NaN
        finite = torch.isfinite(grid).all(-1)  # (B * N, H', W')
        grid = torch.where(finite.unsqueeze(-1), grid, torch.zeros_like(grid))
    fill = _pair_fill(call)

    def level0(src: Tensor, g: Tensor, padding: str, align_corners: bool) -> Tensor:
        return backend.sample(src, g, "bilinear", padding, align_corners)

    def run(src: Tensor, padding: str) -> Tensor:
        return antialiased_sample(src, grid, padding, options.align_corners, sampler=level0)

    out = filled(input, options.padding, fill, run)  # (B * N, C, H', W')
    if finite is not None:
        out = torch.where(finite.unsqueeze(1), out, torch.full_like(out, float("nan")))
    return out if n == 1 else out.view(call.batch, n, out.shape[1], *call.size)


def _pair_fill(call: SamplerCall) -> Tensor | None:
    """The fill of every (image, head) pair, ``(1 or B * N, C, 1, 1)``, or None without ``padding="fill"``."""
    options, n = call.options, call.heads
    fill = None if options.fill is None else fill_tensor(options.fill, call.input)  # (1 or B, C, 1, 1)
    if fill is not None and n > 1 and fill.shape[0] > 1:
        fill = fill.repeat_interleave(n, dim=0)
    return fill


def _prefilter_applies(call: SamplerCall) -> bool:
    """Whether ``antialias=True`` takes the affine prefilter (:func:`~torchstn._antialias.prefiltered_affine_sample`):
    a 2D affine matrix (the same footprint at every output pixel), real values, and non-finite points not
    propagated (that needs the grid)."""
    m = call.matrix
    return (
        m is not None
        and call.transform is not None
        and call.transform.ndim == 2
        and m.shape[-2] == 2
        and call.grid is None
        and call.options.nonfinite != "propagate"
        and m.device.type != "meta"
    )


def _run_prefiltered(call: SamplerCall, backend: GridBackend) -> Tensor:
    """``antialias=True`` for an affine family: the prefiltered input sampled by the backend the options choose
    without the option (the fused kernel under ``"auto"`` where it is built), every (image, head) pair with its
    own matrix; padding and fill as in :func:`_run`. A footprint wider than twice the input takes the mip-map on
    the matrices' grid instead, ``backend`` reading its level 0 (the prefilter's kernels would grow with it)."""
    options, input, n, matrix, transform = call.options, call.input, call.heads, call.matrix, call.transform
    assert matrix is not None and transform is not None  # _prefilter_applies checked both
    if options.nonfinite == "raise" and not call.grid_finite and not call.capturing:
        _check_grid(_flat_grid(call, contiguous=True), call)  # the matrix could not vouch for its grid
    if n > 1:
        input = input.repeat_interleave(n, dim=0)  # row k of the matrices warps image k // N
    plain = dataclasses.replace(options, antialias=False, padding="zeros", fill=None)

    def sample(src: Tensor, m: Tensor, padding: str) -> Tensor:
        sub = SamplerCall(
            src,
            plain,
            call.kernel,
            call.size,
            transform=transform,
            matrix=m,
            grid_finite=True,
            capturing=call.capturing,
        )
        backend = choose(sub)
        if backend.reads_grid:
            sub.grid = transform.grid_from_matrix(m, call.size, options.align_corners).to(src.dtype)
        return backend.run(sub, src, padding)

    static = call.capturing or torch.compiler.is_compiling()

    def run(src: Tensor, padding: str) -> Tensor:
        size = (call.size[0], call.size[1])
        aligned = isinstance(transform, MatrixTransform) and transform.axis_aligned
        return prefiltered_affine_sample(
            src, matrix, size, padding, options.align_corners, sample, static, axis_aligned=aligned, wide=wide
        )

    def wide(src: Tensor, padding: str) -> Tensor:
        grid = transform.grid_from_matrix(matrix, call.size, options.align_corners).to(src.dtype)

        def level0(s: Tensor, g: Tensor, pad: str, align_corners: bool) -> Tensor:
            return backend.sample(s, g, "bilinear", pad, align_corners)

        return antialiased_sample(src, grid, padding, options.align_corners, sampler=level0)

    fill = _pair_fill(call)
    out = filled(input, options.padding, fill, run)  # (B * N, C, H', W')
    return out if n == 1 else out.view(call.batch, n, out.shape[1], *call.size)


def _flat_grid(call: SamplerCall, contiguous: bool) -> Tensor:
    """Every (image, head) pair's grid: ``(B * N, *S', nd)``."""
    transform, params = call.transform, call.params
    assert transform is not None and params is not None  # a grid call has its grid already
    if call.matrix is not None:
        grid = transform.grid_from_matrix(call.matrix, call.size, call.options.align_corners, contiguous=contiguous)
    else:
        grid = transform.grid(
            params, call.size, align_corners=call.options.align_corners, src_size=tuple(call.input.shape[2:])
        )
    return grid if grid.dtype == call.input.dtype else grid.to(call.input.dtype)  # autocast sampling narrower


def _heads_grid(call: SamplerCall) -> Tensor:
    """The heads' grids stacked along the first spatial axis: ``(B, N * S'[0], *S'[1:], nd)``."""
    transform, params = call.transform, call.params
    assert transform is not None and params is not None  # a grid call has its grid already
    src_size = tuple(call.input.shape[2:])
    ac = call.options.align_corners
    if call.matrix is not None:  # an affine grid may come batch-strided, unless the heads are reshaped across images
        grid = transform.grid_from_matrix(call.matrix, call.size, ac, contiguous=call.heads > 1)
    else:
        grid = transform.grid(params, call.size, align_corners=ac, src_size=src_size)
    if grid.dtype != call.input.dtype:  # under an autocast that samples in less than the grid's float32
        grid = grid.to(call.input.dtype)
    if call.heads == 1:
        return grid
    return grid.view(call.batch, call.heads * call.size[0], *call.size[1:], transform.ndim)


def _finite_range(t: Tensor) -> tuple[bool, float]:
    """Whether ``t`` holds no NaN or inf, and its largest magnitude: one reduction and one read to the host
    (min and max propagate NaN and see inf, so they answer both; ``isfinite`` on the two scalars would cost
    several more small ops per call). A meta tensor has no values: it passes."""
    if t.device.type == "meta":
        return True, 0.0
    lo, hi = torch.stack(torch.aminmax(t)).tolist()
    return math.isfinite(lo) and math.isfinite(hi), max(-lo, hi)


def _pixel_bound(dtype: torch.dtype, src_size: Sequence[int]) -> float:
    """Largest normalised coordinate whose pixel coordinate stays finite in the sampler: unnormalising multiplies
    by the input's size (``((x + 1) * size - 1) / 2``), so beyond ``finfo.max / size`` it overflows to inf and the
    output to NaN; a factor of two more covers the ``+ 1`` and the padding's arithmetic."""
    return torch.finfo(dtype).max / (2.0 * (max(src_size) + 1))


def _check_grid(grid: Tensor, call: SamplerCall) -> None:
    """``nonfinite="raise"`` on a grid: NaN or inf, or coordinates so large that the sampler's pixel coordinates
    would overflow, raise; a warp's error names ``params`` (its grid came from them), a ready grid's ``grid``."""
    # min and max propagate NaN and see inf: one cheap reduction (isfinite().all() costs more than the grid).
    finite, largest = _finite_range(grid)
    what = "grid" if call.transform is None else f"params: the {call.transform!r} grid"
    if not finite:
        bad = int((~torch.isfinite(grid)).any(-1).sum())
        raise NonFiniteError(f"{what}: {bad} grid point(s) hold NaN or inf (pass nonfinite='propagate' to get NaN)")
    src_size = tuple(call.input.shape[2:])
    bound = _pixel_bound(grid.dtype, src_size)
    if largest > bound:
        raise NonFiniteError(
            f"{what}: coordinates reach {largest:.3g}, beyond {bound:.3g}, where the sampler's pixel coordinates "
            f"overflow {grid.dtype} for an input of size {src_size} (the output would be NaN)"
        )


def _matrix_proves_grid_finite(matrix: Tensor, transform: Transform, src_size: Sequence[int]) -> bool:
    """``nonfinite="raise"`` on the matrix: NaN or inf raises naming ``params``; True when the matrix is small
    enough that no grid point can overflow, nor its pixel coordinate in the sampler (the grid then needs no
    check), False when the grid must be checked."""
    finite, largest = _finite_range(matrix.detach())
    if not finite:
        bad = int((~torch.isfinite(matrix)).flatten(1).any(1).sum())
        raise NonFiniteError(
            f"params: {bad} sample(s) give {transform!r} matrices holding NaN or inf "
            "(pass nonfinite='propagate' to get NaN outputs instead)"
        )
    # grid_bound keeps the grid below finfo.max / 2; the sampler multiplies it by about the input's size
    return largest <= transform.grid_bound(matrix.dtype) / (max(src_size) + 1)
