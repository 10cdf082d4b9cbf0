"""Samplers: read an image or volume at the points of a grid, differentiably in both.

Two backends share one interface, :func:`sample`:

* ``"torch"`` (the default, also ``"auto"``): ``F.grid_sample``, fast on every device.
* ``"reference"``: the paper's general sampling equation (3), ``V_i = sum_nm U_nm k(x_i - m) k(y_i - n)``,
  written in plain tensor ops (gather and arithmetic) with the integer kernel (4), the bilinear kernel (5) and
  PyTorch's cubic-convolution kernel (``a = -0.75``). Autograd through these ops gives exactly the gradients
  of equations (6)-(7) away from integer coordinates; at an integer coordinate the bilinear kernel has a kink and
  both backends take the one-sided derivative from the cell ``[m, m + 1]``. Being plain ops it supports double
  backward and exports to ONNX without a ``GridSample`` operator. It reproduces ``grid_sample`` for every mode
  and padding mode, for both ``align_corners`` values.

:func:`warp` has a third, ``"fused"``: the compiled CPU kernel of :mod:`torchstn.ext`, which samples an affine or
projective warp straight from its matrix without building the grid (timed against the grid path in
``benchmarks/results/warp.md``, section 6). ``"auto"`` takes it whenever it applies and has been built; ``"fused"``
insists on it and raises :class:`~torchstn.errors.OptionError` saying why when it cannot run. Its gradients are
first order only.

Padding: ``"zeros"``, ``"border"``, ``"reflection"`` (PyTorch's), and ``"fill"``, a constant per channel that
PyTorch lacks. ``"fill"`` samples ``input - fill`` with zero padding and adds ``fill`` back: every kernel's
weights sum to one, so out-of-image taps contribute exactly ``fill`` (the in-image values may differ from the
input by one rounding step).

Non-finite grids: with border or reflection padding ``F.grid_sample`` silently reads a NaN coordinate as -1 (the
first pixel), and nearest sampling with zero padding returns 0: plausible but wrong values. By default
(``nonfinite="raise"``) a grid holding NaN or inf raises :class:`~torchstn.errors.NonFiniteError`;
``"propagate"`` instead makes the output NaN at exactly those output pixels (no host synchronisation, so a NaN
loss shows up downstream), and ``"ignore"`` skips the check and keeps the backend's behaviour (the fused kernel
reads a NaN source point as lying outside the image: 0 whatever the padding). :func:`warp` (and
so :class:`~torchstn.modules.SpatialTransformer`) checks a matrix family's ``(B, 3, 3)`` matrix instead of the grid,
which is much cheaper: a finite matrix whose entries are small enough that no grid point can overflow proves the
grid finite; NaN or inf in it raises naming ``params``; a finite matrix too large to vouch for falls back to the
grid check.

Export: a graph captured by ``torch.export``, ``torch.onnx.export`` or ``torch.jit.trace`` cannot raise on
values it has not seen, so there ``"raise"`` skips its check (as ``"ignore"``); pass ``nonfinite="propagate"`` to
have the exported graph give NaN outputs for non-finite grids instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstn._antialias import antialiased_sample
from torchstn._checks import capturing_graph, check_choice, check_size, check_tensor
from torchstn.errors import DTypeError, NonFiniteError, OptionError, ShapeError
from torchstn.geometry import normalized_coords
from torchstn.transforms import MatrixTransform, Transform

__all__ = ["Backend", "Mode", "NonFinite", "Padding", "sample", "warp"]

Mode = Literal["nearest", "bilinear", "bicubic", "trilinear"]
Padding = Literal["zeros", "border", "reflection", "fill"]
Backend = Literal["auto", "torch", "reference", "fused"]
NonFinite = Literal["raise", "propagate", "ignore"]
FillValue = float | Sequence[float] | Tensor

_MODES = ("nearest", "bilinear", "bicubic", "trilinear")
_PADDINGS = ("zeros", "border", "reflection", "fill")
_BACKENDS = ("auto", "torch", "reference", "fused")
_NONFINITE = ("raise", "propagate", "ignore")
_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


def _fill_tensor(fill: FillValue, input: Tensor) -> Tensor:
    """Fill value broadcastable to ``input``: ``(1 or B, C, 1, ...)``."""
    b, c = input.shape[:2]
    ones = (1,) * (input.ndim - 2)
    try:
        t = torch.as_tensor(fill, device=input.device, dtype=input.dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DTypeError(f"fill: expected a number, a sequence of numbers or a tensor, got {fill!r}") from err
    if t.ndim == 0:
        return t.reshape(1, 1, *ones)
    if t.ndim == 1 and t.shape[0] in (1, c):
        return t.reshape(1, -1, *ones)
    if t.ndim == 2 and t.shape[0] in (1, b) and t.shape[1] in (1, c):
        return t.reshape(t.shape[0], t.shape[1], *ones)
    raise ShapeError(f"fill: expected a scalar, C={c} values or a (B, C)=({b}, {c}) tensor, got shape {tuple(t.shape)}")


def _check_sample_args(
    input: Tensor, grid: Tensor, mode: str, padding: str, fill: FillValue | None, backend: str, nonfinite: str
) -> str:
    check_tensor(input, "input", "*,C,H,W")
    if input.ndim not in (4, 5):
        raise ShapeError(f"input: expected (B, C, H, W) or (B, C, D, H, W), got {tuple(input.shape)}")
    nd = input.ndim - 2
    spec = "B,H,W,2" if nd == 2 else "B,D,H,W,3"
    check_tensor(grid, "grid", spec, dims={"B": input.shape[0]})
    if grid.dtype != input.dtype:
        raise DTypeError(f"grid: expected the dtype of input ({input.dtype}), got {grid.dtype}")
    if grid.device != input.device:
        raise DTypeError(f"grid: expected the device of input ({input.device}), got {grid.device}")
    check_choice(mode, "mode", _MODES)
    check_choice(padding, "padding", _PADDINGS)
    check_choice(backend, "backend", _BACKENDS)
    check_choice(nonfinite, "nonfinite", _NONFINITE)
    if mode == "bicubic" and nd == 3:
        raise OptionError("mode: 'bicubic' needs a 4D input (B, C, H, W); use 'trilinear' or 'nearest' for volumes")
    if mode == "trilinear" and nd == 2:
        raise OptionError("mode: 'trilinear' needs a 5D input (B, C, D, H, W); use 'bilinear' for images")
    _check_fill(padding, fill)
    return "bilinear" if mode == "trilinear" else mode


def _check_fill(padding: str, fill: FillValue | None) -> None:
    if padding == "fill" and fill is None:
        raise OptionError("fill: a value is required when padding='fill'")
    if padding != "fill" and fill is not None:
        raise OptionError(f"fill: only used with padding='fill', got padding={padding!r}")


def sample(
    input: Tensor,
    grid: Tensor,
    mode: Mode = "bilinear",
    padding: Padding = "zeros",
    fill: FillValue | None = None,
    align_corners: bool = False,
    *,
    backend: Backend = "auto",
    nonfinite: NonFinite = "raise",
    antialias: bool = False,
) -> Tensor:
    """Sample ``input`` at the normalised source coordinates in ``grid``.

    Args:
        input: ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes (any number of channels).
        grid: ``(B, H', W', 2)`` or ``(B, D', H', W', 3)`` source coordinates ``(x, y[, z])`` in [-1, 1], same
            dtype and device as ``input``.
        mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (images only) or ``"trilinear"`` (volumes; ``"bilinear"``
            is accepted for volumes too).
        padding: What out-of-image taps read: ``"zeros"``, ``"border"``, ``"reflection"`` or ``"fill"``.
        fill: With ``padding="fill"``: a scalar, one value per channel, or a ``(B, C)`` tensor.
        align_corners: Coordinate convention; must match the one the grid was built with.
        backend: ``"auto"``/``"torch"`` (``F.grid_sample``) or ``"reference"`` (plain ops, double backward).
            ``"fused"`` only means something to :func:`warp`; a ready-made grid is sampled with ``F.grid_sample``.
        nonfinite: ``"raise"``, ``"propagate"`` or ``"ignore"`` (see the module docstring).
        antialias: Average each output pixel's source footprint where the grid shrinks (see :func:`warp`);
            images and bilinear only.

    Returns:
        ``(B, C, H', W')`` or ``(B, C, D', H', W')``.

    Convention:
        ``grid[b, i, j] = (x, y)`` means output pixel ``(i, j)`` reads the input at ``(x, y)``; ``x = -1`` is the
        left edge (``align_corners=False``) or the centre of the leftmost pixel (``True``).

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> g = torch.tensor([[[[0.0, 0.0], [-0.5, -0.5]]]])  # the image centre, then pixel (0, 0)'s centre
        >>> sample(x, g)
        tensor([[[[1.5000, 0.0000]]]])
        >>> sample(x, torch.tensor([[[[-2.0, 0.0]]]]), padding="fill", fill=9.0)
        tensor([[[[9.]]]])
    """
    if antialias:
        return _antialiased(input, grid, mode, padding, fill, align_corners, backend, nonfinite)
    kernel = _check_sample_args(input, grid, mode, padding, fill, backend, nonfinite)
    finite: Tensor | None = None
    if nonfinite == "raise" and not capturing_graph():
        # min and max propagate NaN and see inf: one cheap reduction (isfinite().all() costs more than the grid).
        if not _finite_range(grid)[0]:
            bad = int((~torch.isfinite(grid)).any(-1).sum())
            raise NonFiniteError(f"grid: {bad} grid point(s) hold NaN or inf (pass nonfinite='propagate' to get NaN)")
    elif nonfinite == "propagate":
        finite = torch.isfinite(grid).all(-1)  # (B, H', W')
    if backend == "reference":
        out = _filled(input, padding, fill, lambda src, pad: reference_sample(src, grid, kernel, pad, align_corners))
    else:
        out = _filled(
            input,
            padding,
            fill,
            lambda src, pad: F.grid_sample(src, grid, mode=kernel, padding_mode=pad, align_corners=align_corners),
        )
    if finite is not None:
        out = torch.where(finite.unsqueeze(1), out, torch.full_like(out, float("nan")))
    return out


def _filled(
    input: Tensor, padding: str, fill: FillValue | None, run: Callable[[Tensor, str], Tensor], heads: int = 1
) -> Tensor:
    """``run(input, padding)``, with ``padding="fill"`` built on zero padding: sample ``input - fill`` and add
    ``fill`` back (see the module docstring). ``run`` may return ``heads`` outputs per image, image-major."""
    if padding != "fill" or fill is None:
        return run(input, padding)
    shift = _fill_tensor(fill, input)  # (1 or B, C, 1, ...)
    out = run(input - shift, "zeros")
    return out + (shift.repeat_interleave(heads, dim=0) if heads > 1 and shift.shape[0] > 1 else shift)


def _unnormalize(coord: Tensor, n: int, align_corners: bool) -> Tensor:
    """Normalised coordinate -> pixel coordinate (pixel ``i``'s centre at ``i``)."""
    if align_corners:
        return (coord + 1.0) * (0.5 * (n - 1))
    return ((coord + 1.0) * n - 1.0) * 0.5


def _reflect(p: Tensor, twice_low: int, twice_high: int) -> Tensor:
    """Reflect ``p`` into ``[twice_low / 2, twice_high / 2]`` (PyTorch's ``reflect_coordinates``)."""
    if twice_low == twice_high:
        return torch.zeros_like(p)
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    p = (p - low).abs()
    extra = torch.fmod(p, span)
    flips = torch.floor(p / span)
    return torch.where(torch.remainder(flips, 2) == 0, extra + low, span - extra + low)


def _pad_coord(p: Tensor, n: int, padding: str, align_corners: bool) -> Tensor:
    """Apply ``border`` or ``reflection`` padding to pixel coordinates (identity for ``zeros``)."""
    if padding == "border":
        return p.clamp(0, n - 1)
    if padding == "reflection":
        p = _reflect(p, 0, 2 * (n - 1)) if align_corners else _reflect(p, -1, 2 * n - 1)
        return p.clamp(0, n - 1)
    return p


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """Cubic-convolution weights of the taps at offsets -1, 0, 1, 2 for fractional position ``t``."""
    a = _CUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def reference_sample(input: Tensor, grid: Tensor, mode: str, padding: str, align_corners: bool) -> Tensor:
    """The sampling equation (3) in plain tensor ops; see the module docstring.

    Args:
        input: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        grid: ``(B, H', W', 2)`` or ``(B, D', H', W', 3)``.
        mode: ``"nearest"``, ``"bilinear"`` (trilinear on volumes) or ``"bicubic"`` (images).
        padding: ``"zeros"``, ``"border"`` or ``"reflection"``.
        align_corners: Coordinate convention.

    Returns:
        ``(B, C, H', W')`` or ``(B, C, D', H', W')``, equal to ``F.grid_sample`` with the same arguments.
    """
    b, c = input.shape[:2]
    in_sizes = list(input.shape[2:])[::-1]  # (W, H[, D]) matching the grid's (x, y[, z])
    out_shape = grid.shape[1:-1]
    flat = input.reshape(b, c, -1)  # (B, C, N_in)
    coords = grid.reshape(b, -1, grid.shape[-1]).unbind(-1)  # each (B, P)
    pix = [_unnormalize(g, n, align_corners) for g, n in zip(coords, in_sizes, strict=True)]
    strides = [1]
    for n in in_sizes[:-1]:
        strides.append(strides[-1] * n)

    def tap(indices: Sequence[Tensor]) -> Tensor:
        """Values at integer (float-valued) tap indices, 0 outside the input: (B, C, P)."""
        valid = torch.ones_like(indices[0], dtype=torch.bool)
        lin = torch.zeros_like(indices[0], dtype=torch.long)
        for idx, n, s in zip(indices, in_sizes, strides, strict=True):
            valid = valid & (idx >= 0) & (idx <= n - 1)
            lin = lin + idx.clamp(0, n - 1).long() * s
        vals = torch.gather(flat, 2, lin.unsqueeze(1).expand(b, c, lin.shape[-1]))
        return vals * valid.unsqueeze(1).to(vals.dtype)

    if mode == "nearest":
        out = tap([torch.round(_pad_coord(p, n, padding, align_corners)) for p, n in zip(pix, in_sizes, strict=True)])
    elif mode == "bilinear":
        pix = [_pad_coord(p, n, padding, align_corners) for p, n in zip(pix, in_sizes, strict=True)]
        lows = [torch.floor(p) for p in pix]
        fracs = [p - lo for p, lo in zip(pix, lows, strict=True)]
        out = torch.zeros(b, c, pix[0].shape[-1], device=input.device, dtype=input.dtype)
        for corner in itertools.product((0, 1), repeat=len(pix)):
            weight = torch.ones_like(fracs[0])
            for bit, f in zip(corner, fracs, strict=True):
                weight = weight * (f if bit else 1.0 - f)  # bilinear kernel max(0, 1 - |d|), eq. (5)
            out = out + weight.unsqueeze(1) * tap([lo + bit for lo, bit in zip(lows, corner, strict=True)])
    else:  # bicubic, 2D: taps at floor - 1 .. floor + 2, each padded on its own (as PyTorch does)
        lows = [torch.floor(p) for p in pix]
        weights = [_cubic_weights(p - lo) for p, lo in zip(pix, lows, strict=True)]
        out = torch.zeros(b, c, pix[0].shape[-1], device=input.device, dtype=input.dtype)
        for i, j in itertools.product(range(4), repeat=2):
            tx = _pad_coord(lows[0] + (i - 1), in_sizes[0], padding, align_corners)
            ty = _pad_coord(lows[1] + (j - 1), in_sizes[1], padding, align_corners)
            out = out + (weights[0][i] * weights[1][j]).unsqueeze(1) * tap([tx, ty])
    return out.reshape(b, c, *out_shape)


def warp(
    input: Tensor,
    params: Tensor,
    transform: Transform,
    output_size: Sequence[int] | None = None,
    mode: Mode = "bilinear",
    padding: Padding = "zeros",
    fill: FillValue | None = None,
    align_corners: bool = False,
    *,
    backend: Backend = "auto",
    nonfinite: NonFinite = "raise",
    antialias: bool = False,
) -> Tensor:
    """Warp ``input`` with a transform: build the grid from ``params`` and sample.

    Args:
        input: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` with a 3D transform).
        params: ``(B, transform.num_params)``.
        transform: A :class:`~torchstn.transforms.Transform`.
        output_size: ``(H', W')`` (or ``(D', H', W')``); defaults to the input's spatial size.
        mode, padding, fill, align_corners, backend, nonfinite: As in :func:`sample`.
        antialias: Average each output pixel's source footprint where the warp shrinks (a mip-map with a
            per-pixel level, :mod:`torchstn._antialias`); exactly the plain warp where it does not. 2D bilinear
            only; it takes the grid path (never the fused kernel), and ``backend="reference"`` there reads level 0
            with the reference sampler.

    Returns:
        ``(B, C, H', W')`` (or ``(B, C, D', H', W')``).

    Example:
        >>> from torchstn.transforms import Affine
        >>> x = torch.rand(2, 3, 8, 8)
        >>> t = Affine()
        >>> torch.allclose(warp(x, t.identity_params(2), t), x, atol=1e-6)
        True
    """
    if not isinstance(transform, Transform):
        raise DTypeError(f"transform: expected a torchstn.transforms.Transform, got {type(transform).__name__}")
    check_tensor(input, "input", "*,C,H,W")
    if input.ndim != transform.ndim + 2:
        raise ShapeError(
            f"input: {transform!r} warps {transform.ndim}D data, expected {transform.ndim + 2} dimensions, "
            f"got {tuple(input.shape)}"
        )
    params = transform.check_params(params)
    check_tensor(params, "params", "B,P", dims={"B": input.shape[0]})
    if params.dtype != input.dtype or params.device != input.device:
        raise DTypeError(
            f"params: expected the dtype and device of input ({input.dtype}, {input.device}), "
            f"got ({params.dtype}, {params.device})"
        )
    src_size = tuple(input.shape[2:])
    size = src_size if output_size is None else check_size(output_size, "output_size", transform.ndim)
    if antialias:  # the grid path: the footprints come from the grid's finite differences
        _check_antialias(mode, transform.ndim, backend)
    else:
        out = _try_fused(input, params, transform, size, mode, padding, fill, align_corners, backend, nonfinite)
        if out is not None:
            return out
    grid, nonfinite = _transform_grid(transform, params, size, src_size, align_corners, nonfinite)
    if antialias:
        return _antialiased(input, grid, mode, padding, fill, align_corners, backend, nonfinite)
    return sample(input, grid, mode, padding, fill, align_corners, backend=backend, nonfinite=nonfinite)


def _check_antialias(mode: str, ndim: int, backend: str) -> None:
    """Raise :class:`~torchstn.errors.OptionError` unless ``antialias=True`` can run with these settings."""
    if mode != "bilinear":
        raise OptionError(f"antialias: needs mode='bilinear', got mode={mode!r}")
    if ndim != 2:
        raise OptionError(f"antialias: needs a 2D transform, got a {ndim}D one")
    if backend == "fused":
        raise OptionError("backend: 'fused' cannot run antialias=True (it takes the grid path); use 'auto'")


def _antialiased(
    input: Tensor,
    grid: Tensor,
    mode: str,
    padding: str,
    fill: FillValue | None,
    align_corners: bool,
    backend: str,
    nonfinite: str,
) -> Tensor:
    """``sample``'s checks and non-finite handling around :func:`~torchstn._antialias.antialiased_sample`."""
    _check_sample_args(input, grid, mode, padding, fill, backend, nonfinite)
    _check_antialias(mode, input.ndim - 2, backend)
    finite: Tensor | None = None
    if nonfinite == "raise" and not capturing_graph() and not _finite_range(grid)[0]:
        bad = int((~torch.isfinite(grid)).any(-1).sum())
        raise NonFiniteError(f"grid: {bad} grid point(s) hold NaN or inf (pass nonfinite='propagate' to get NaN)")
    if nonfinite == "propagate":  # sample at 0 there (the footprints stay finite), then NaN at those pixels
        finite = torch.isfinite(grid).all(-1)  # (B, H', W')
        grid = torch.where(finite.unsqueeze(-1), grid, torch.zeros_like(grid))
    ref = None if backend != "reference" else lambda s, g, pad, ac: reference_sample(s, g, "bilinear", pad, ac)
    out = _filled(input, padding, fill, lambda src, pad: antialiased_sample(src, grid, pad, align_corners, sampler=ref))
    return out if finite is None else torch.where(finite.unsqueeze(1), out, torch.full_like(out, float("nan")))


def _try_fused(
    input: Tensor,
    params: Tensor,
    transform: Transform,
    size: tuple[int, ...],
    mode: str,
    padding: str,
    fill: FillValue | None,
    align_corners: bool,
    backend: str,
    nonfinite: NonFinite,
) -> Tensor | None:
    """The warp through the fused kernel, or None where it does not apply (``backend="fused"`` raises instead).

    ``params`` may hold ``N >= 1`` rows per image, ``(B * N, P)`` (several heads reading one input); the output is
    then ``(B * N, C, H', W')``, row ``k`` warping image ``k // N``.
    """
    if backend not in ("auto", "fused") or capturing_graph() or torch.compiler.is_compiling():
        return None  # a captured graph keeps to standard operators: the grid path
    check_choice(mode, "mode", _MODES)
    check_choice(padding, "padding", _PADDINGS)
    check_choice(nonfinite, "nonfinite", _NONFINITE)
    why = _fused_unsupported(input, transform, mode, padding, nonfinite)
    if why is None:
        _check_fill(padding, fill)
        assert isinstance(transform, MatrixTransform)  # _fused_unsupported checked it
        matrix, left = _checked_matrix(transform, params, tuple(input.shape[2:]), nonfinite)
        if left == "ignore":  # the matrix proves every source point finite (or the caller waived the check)
            eps = transform.eps if transform.projective else 0.0
            heads = matrix.shape[0] // input.shape[0]
            return _filled(
                input, padding, fill, lambda src, pad: _fused_warp(src, matrix, size, pad, align_corners, eps), heads
            )
        why = "the matrix is too large to prove its grid finite; the grid path checks it"
    if backend == "fused":
        raise OptionError(f"backend: 'fused' cannot run this warp: {why}")
    return None


_FUSED_PADDING = {"zeros": 0, "border": 1, "reflection": 2}


def _fused_unsupported(input: Tensor, transform: Transform, mode: str, padding: str, nonfinite: str) -> str | None:
    """Why the fused kernel cannot run this warp, or None when it can (cheapest tests first)."""
    if input.device.type != "cpu":
        return f"it runs on the CPU only, got {input.device}"
    if not isinstance(transform, MatrixTransform) or transform.ndim != 2:
        return (
            f"it takes 2D matrix transforms (Affine, Attention, Similarity, Translation, Projective), got {transform!r}"
        )
    if mode != "bilinear":
        return f"it samples bilinearly only, got mode={mode!r}"
    if input.dtype not in (torch.float32, torch.float64):
        return f"it takes float32 or float64, got {input.dtype}"
    if nonfinite == "propagate":
        return "nonfinite='propagate' needs the grid"
    if input.shape[-1] * input.shape[-2] >= 2**31:
        return "the image has 2**31 pixels or more"
    from torchstn import ext  # here, not at the top: `python -m torchstn.ext` must not find it imported already

    if not ext.available():
        return "the kernel is not built (run `python -m torchstn.ext build`) or TORCHSTN_EXT=0"
    return None


_coords_cache: dict[tuple[int, bool, torch.dtype], Tensor] = {}


def _target_coords(n: int, align_corners: bool, dtype: torch.dtype) -> Tensor:
    """``normalized_coords`` on the CPU, cached (built outside inference mode so autograd can save them)."""
    key = (n, align_corners, dtype)
    t = _coords_cache.get(key)
    if t is None:
        if len(_coords_cache) > 256:
            _coords_cache.clear()
        with torch.inference_mode(False):
            t = normalized_coords(n, align_corners, dtype=dtype)
        _coords_cache[key] = t
    return t


_Options = tuple[int, bool, float]  # the kernel's padding code, align_corners and projective eps


class _FusedWarp(torch.autograd.Function):
    """The compiled kernel with its compiled backward (first order; the reference backend has second order)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, matrix: Tensor, xs: Tensor, ys: Tensor, options: _Options) -> Tensor:
        ctx.save_for_backward(input, matrix, xs, ys)
        ctx.options = options
        out: Tensor = torch.ops.torchstn.warp_bilinear(input, matrix, xs, ys, *options)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, matrix, xs, ys = ctx.saved_tensors
        need_input, need_matrix = ctx.needs_input_grad[:2]
        grad_input, grad_matrix = _FusedWarpBackward.apply(  # type: ignore[no-untyped-call]
            grad, input, matrix, xs, ys, ctx.options, need_input
        )
        return grad_input if need_input else None, grad_matrix if need_matrix else None, None, None, None


class _FusedWarpBackward(torch.autograd.Function):
    """The kernel's backward as a node of its own, so that differentiating it (``create_graph=True``, a gradient
    penalty) raises instead of silently giving the second-order terms no gradient."""

    @staticmethod
    def forward(
        ctx: Any, grad: Tensor, input: Tensor, matrix: Tensor, xs: Tensor, ys: Tensor, options: _Options, need: bool
    ) -> tuple[Tensor, Tensor]:
        grad_input, grad_matrix = torch.ops.torchstn.warp_bilinear_backward(
            grad.contiguous(), input, matrix, xs, ys, *options, need
        )
        return grad_input, grad_matrix

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
        raise RuntimeError(
            "the fused kernel (torchstn.ext) has first-order gradients only: "
            "pass backend='reference' for second-order ones"
        )


def _fused_warp(
    input: Tensor, matrix: Tensor, size: tuple[int, ...], padding: str, align_corners: bool, eps: float
) -> Tensor:
    """Warp with the compiled kernel: ``matrix`` is the ``(B * N, 2, 3)`` affine or ``(B * N, 3, 3)`` projective
    source-from-target matrix (``eps``: the projective denominator's smallest magnitude)."""
    xs = _target_coords(size[1], align_corners, input.dtype)
    ys = _target_coords(size[0], align_corners, input.dtype)
    options = (_FUSED_PADDING[padding], align_corners, float(eps))
    out: Tensor = _FusedWarp.apply(input.contiguous(), matrix.contiguous(), xs, ys, options)  # type: ignore[no-untyped-call]
    return out


def _finite_range(t: Tensor) -> tuple[bool, float]:
    """Whether ``t`` holds no NaN or inf, and its largest magnitude: one reduction and one read to the host
    (min and max propagate NaN and see inf, so they answer both; ``isfinite`` on the two scalars would cost
    several more small ops per call)."""
    lo, hi = torch.stack(torch.aminmax(t)).tolist()
    return math.isfinite(lo) and math.isfinite(hi), max(-lo, hi)


def _transform_grid(
    transform: Transform,
    params: Tensor,
    size: tuple[int, ...],
    src_size: tuple[int, ...],
    align_corners: bool,
    nonfinite: NonFinite,
    contiguous: bool = False,
) -> tuple[Tensor, NonFinite]:
    """``transform.grid(...)``, with ``nonfinite="raise"`` checked on the matrix instead of the grid.

    For a matrix family the check needs only the ``(B, 3, 3)`` matrix: if it is finite and small enough that no
    grid point can overflow (see ``MatrixTransform._grid_bound``), the grid is finite, and the returned mode
    tells :func:`sample` to skip its grid-wide check (which costs a pass over the grid). Otherwise (other
    families, or matrices too large to vouch for) the grid is built as usual and ``nonfinite`` is returned
    unchanged for :func:`sample` to check. Without ``contiguous`` an affine grid may come batch-strided (each
    image's grid contiguous; see ``geometry._affine_grid``): pass it when the caller reshapes across images.
    """
    if nonfinite != "raise" or not isinstance(transform, MatrixTransform) or capturing_graph():
        return transform.grid(params, size, align_corners=align_corners, src_size=src_size), nonfinite
    matrix, left = _checked_matrix(transform, params, src_size, nonfinite)
    return transform._grid_from_matrix(matrix, size, align_corners, contiguous=contiguous), left


def _checked_matrix(
    transform: MatrixTransform, params: Tensor, src_size: tuple[int, ...], nonfinite: NonFinite
) -> tuple[Tensor, NonFinite]:
    """The matrix the grid is built from, with ``nonfinite="raise"`` checked on it (see :func:`_transform_grid`):
    NaN or inf raises naming ``params``; the returned mode is ``"ignore"`` when the matrix proves every grid point
    finite, else ``nonfinite`` unchanged (the grid must still be checked)."""
    matrix = transform._grid_matrix(params, src_size)
    if nonfinite != "raise":
        return matrix, nonfinite
    finite, largest = _finite_range(matrix.detach())
    if not finite:
        bad = int((~torch.isfinite(matrix)).flatten(1).any(1).sum())
        raise NonFiniteError(
            f"params: {bad} sample(s) give a {transform!r} matrix holding NaN or inf "
            "(pass nonfinite='propagate' to get NaN outputs instead)"
        )
    return matrix, "ignore" if largest <= transform._grid_bound(matrix.dtype) else nonfinite
