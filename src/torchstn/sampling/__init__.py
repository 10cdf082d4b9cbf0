"""Samplers: read an image or volume at the points of a grid, differentiably in both.

Backends (objects in a small registry, ``_backends.py``; each says whether it can run a call and why not):

* ``"torch"``: ``F.grid_sample``, fast on every device.
* ``"reference"``: the paper's general sampling equation (3), ``V_i = sum_nm U_nm k(x_i - m) k(y_i - n)``,
  written in plain tensor ops (``_reference.py``). It reproduces ``grid_sample`` for every mode and padding, has
  double backward and exports to ONNX without a ``GridSample`` operator.
* ``"fused"``: the compiled CPU kernel of :mod:`torchstn.ext` (``_fused.py``), which samples an affine or
  projective warp straight from its matrix without building the grid, so only :func:`warp` (and the modules) can
  use it; :func:`sample`, given a ready-made grid, raises :class:`~torchstn.errors.OptionError` for it. Its
  gradients are first order only.
* ``"auto"`` (the default) takes the first registered backend that can run the call: the fused kernel where it
  applies and has been built, else ``F.grid_sample``. A named backend that cannot run a call raises
  :class:`~torchstn.errors.OptionError` saying why. A graph being captured for export or compiled keeps to
  standard operators: the fused kernel is passed over there.

Padding: ``"zeros"``, ``"border"``, ``"reflection"`` (PyTorch's), and ``"fill"``, a constant per channel that
PyTorch lacks (``_fill.py``): the input sampled with zero padding plus ``fill`` times the kernel's weight outside
the image. Pixels that read only the image are exactly as with zero padding for any finite fill, pixels that read
only padding are exactly the fill, and pixels on the border carry the fill's share to within
``64 * eps * |fill|``. A fill holding NaN or inf raises :class:`~torchstn.errors.OptionError`.

Non-finite grids: with border or reflection padding ``F.grid_sample`` silently reads a NaN coordinate as -1 (the
first pixel), and nearest sampling with zero padding returns 0: plausible but wrong values. By default
(``nonfinite="raise"``) a grid holding NaN or inf raises :class:`~torchstn.errors.NonFiniteError`;
``"propagate"`` instead makes the output NaN at exactly those output pixels (no host synchronisation, so a NaN
loss shows up downstream), and ``"ignore"`` skips the check and keeps the backend's behaviour (the fused kernel
reads a NaN source point as lying outside the image: 0 whatever the padding). :func:`warp` (and so
:class:`~torchstn.modules.SpatialTransformer`) checks a matrix family's matrix instead of the grid, which is much
cheaper: a finite matrix whose entries are small enough that no grid point can overflow proves the grid finite;
NaN or inf in it raises naming ``params``; a finite matrix too large to vouch for falls back to the grid check.

Export: a graph captured by ``torch.export``, ``torch.onnx.export`` or ``torch.jit.trace`` cannot raise on
values it has not seen, so there ``"raise"`` skips its check (as ``"ignore"``); pass ``nonfinite="propagate"`` to
have the exported graph give NaN outputs for non-finite grids instead.

Mixed precision: under ``torch.autocast`` the parameters, matrix and grid are computed in float32 and the input is
sampled in the dtype autocast gives ``F.grid_sample`` for it and that grid (float32 on CPU and CUDA; ``_autocast.py``).

Anti-aliasing: ``antialias=True`` averages each output pixel's source footprint where the warp shrinks
(:mod:`torchstn._antialias`: a separable prefilter for affine warps, a mip-map for the others).

Layout: ``_options.py`` (:class:`SamplingOptions`, validated once), ``_dispatch.py`` (the one path from a call to
its output), ``_backend.py`` (what a backend is), ``_backends.py`` (the registry), ``_torch.py``,
``_reference.py``, ``_fused.py`` (the backends) and ``_fill.py`` (``padding="fill"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchstn.sampling._dispatch import sample_grid
from torchstn.sampling._dispatch import warp_params as warp_params  # explicit re-export (see below)
from torchstn.sampling._matrices import params_of_matrix
from torchstn.sampling._options import Backend, Mode, NonFinite, Padding, SamplingOptions
from torchstn.sampling._options import FillValue as FillValue
from torchstn.transforms import Transform

__all__ = ["Backend", "Mode", "NonFinite", "Padding", "SamplingOptions", "sample", "warp"]

# Also importable from here, not in __all__: FillValue (the type of ``fill``) and warp_params, the one internal
# path (``_dispatch.py``) that torchstn.modules calls with the options object a module holds.


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
        fill: With ``padding="fill"``: a finite scalar, one value per channel, or a ``(B, C)`` tensor.
        align_corners: Coordinate convention; must match the one the grid was built with.
        backend: ``"auto"``/``"torch"`` (``F.grid_sample``) or ``"reference"`` (plain ops, double backward).
            ``"fused"`` raises :class:`~torchstn.errors.OptionError`: the kernel samples from a matrix, which a
            ready-made grid does not have (use :func:`warp`).
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
    options = SamplingOptions(mode, padding, fill, align_corners, backend, nonfinite, antialias)
    return sample_grid(input, grid, options)


def warp(
    input: Tensor,
    params: Tensor,
    transform: Transform | None = None,
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
    """Warp ``input`` with a transform: build the grid from ``params`` (or not, on the fused kernel) and sample.

    Args:
        input: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` with a 3D transform).
        params: ``(B, transform.num_params)``, same dtype and device as ``input``; or a matrix mapping normalised
            target to source coordinates: a ``(B, 2, 3)`` theta (as ``F.affine_grid`` takes), a ``(B, 3, 3)``
            homography (all nine entries; the last need not be 1) or a ``(B, 3, 4)`` theta for volumes.
        transform: A :class:`~torchstn.transforms.Transform`; with a matrix, ``Affine()``, ``Projective()`` (its
            ``eps`` is kept) or ``Affine3D()``, or None (the default) to read the family from the matrix's shape.
        output_size: ``(H', W')`` (or ``(D', H', W')``); defaults to the input's spatial size.
        mode, padding, fill, align_corners, nonfinite: As in :func:`sample`.
        backend: As in :func:`sample`, and ``"fused"``: the compiled kernel, which raises
            :class:`~torchstn.errors.OptionError` saying why where it cannot run.
        antialias: Average each output pixel's source footprint where the warp shrinks
            (:mod:`torchstn._antialias`: an exact separable prefilter of the input for affine families, then the
            plain sample by the backend chosen without the option; a mip-map with a per-pixel level for projective
            and thin-plate-spline warps, read at level 0 by the grid path or, with ``backend="reference"``, the
            reference sampler); exactly the plain warp where it does not. 2D bilinear only; ``backend="fused"``
            cannot be named with it (``"auto"`` uses the fused kernel for the prefiltered image).

    Returns:
        ``(B, C, H', W')`` (or ``(B, C, D', H', W')``).

    Raises:
        OptionError: ``transform=None`` with ``(B, P)`` parameters (they do not say their family), or an option
            not among its choices.
        ShapeError: A matrix of another shape, or one the given family does not take (a ``(B, 2, 3)`` theta
            with ``Similarity()``).

    Example:
        >>> from torchstn.transforms import Affine
        >>> x = torch.rand(2, 3, 8, 8)
        >>> t = Affine()
        >>> torch.allclose(warp(x, t.identity_params(2), t), x, atol=1e-6)
        True
        >>> theta = torch.eye(2, 3).expand(2, 2, 3)  # what F.affine_grid takes: the family is read from it
        >>> torch.allclose(warp(x, theta), x, atol=1e-6)
        True
    """
    options = SamplingOptions(mode, padding, fill, align_corners, backend, nonfinite, antialias)
    params, family = params_of_matrix(params, transform)
    return warp_params(input, params, family, output_size, options)
