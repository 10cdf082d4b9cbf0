"""Coordinates, grid generators and matrix helpers.

Convention (library-wide, see the README):
    * Coordinates are normalised to [-1, 1] over the image, in (x, y) order (or (x, y, z) for volumes): x runs
      along the width (last dimension), y along the height, z along the depth.
    * A transform maps **target (output) points to source (input) points** (inverse warping, as in the paper), so
      matrices are named ``src_from_dst``.
    * ``align_corners=False`` (PyTorch's default): -1 and 1 are the outer *edges* of the corner pixels and pixel
      ``i`` of ``n`` has its centre at ``(2 i + 1) / n - 1``. With ``align_corners=True`` -1 and 1 are the corner
      pixels' *centres* and pixel ``i`` sits at ``2 i / (n - 1) - 1`` (0 when ``n == 1``, as in PyTorch).
    * Pixel coordinates (``pixel_*`` helpers) put pixel ``i``'s centre at ``i`` (OpenCV's convention).

Every grid generator writes a contiguous grid (``F.grid_sample`` is about three times slower on a non-contiguous
one). :func:`affine_grid` is one GEMM of the ``(B, 6)`` matrix entries against a cached basis that already has the
grid's interleaved ``(x, y)`` layout, several times faster than ``F.affine_grid`` on CPU (which builds a base grid
per sample and runs B tiny matrix products); see benchmarks/results/warp.md.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn._checks import capturing_graph, check_bool, check_like, check_number, check_size, check_tensor
from torchstn.errors import OptionError, ShapeError

__all__ = [
    "DEFAULT_EPS",
    "affine_grid",
    "attention_boxes",
    "compose",
    "invert",
    "normalized_coords",
    "normalized_to_pixel",
    "output_extent",
    "pixel_from_normalized",
    "pixel_to_normalized",
    "projective_grid",
    "safe_denominator",
    "transform_points",
]

#: Smallest magnitude a projective denominator may take (see :func:`safe_denominator`).
DEFAULT_EPS = 1e-6


def normalized_coords(
    n: int, align_corners: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Normalised coordinates of the ``n`` pixel centres along one axis.

    Args:
        n: Number of pixels along the axis.
        align_corners: The library-wide coordinate convention (see the module docstring).
        device: Device of the result.
        dtype: Floating dtype of the result (default: torch's default dtype).

    Returns:
        ``(n,)`` coordinates, identical to the ones ``F.affine_grid`` uses.

    Example:
        >>> normalized_coords(4)
        tensor([-0.7500, -0.2500,  0.2500,  0.7500])
        >>> normalized_coords(3, align_corners=True)
        tensor([-1.,  0.,  1.])
    """
    check_bool(align_corners, "align_corners")
    dtype = dtype or torch.get_default_dtype()
    i = torch.arange(n, device=device, dtype=dtype)
    if align_corners:
        return i * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.zeros_like(i)
    return (2.0 * i + 1.0) / n - 1.0


def _rows(src_from_dst: Tensor, name: str, nd: int) -> Tensor:
    """Accept (B, nd, nd+1) or (B, nd+1, nd+1); return the first nd rows."""
    check_tensor(src_from_dst, name, "B,R,C")
    rows, cols = src_from_dst.shape[-2:]
    if cols != nd + 1 or rows not in (nd, nd + 1):
        raise ShapeError(
            f"{name}: expected shape (B, {nd}, {nd + 1}) or (B, {nd + 1}, {nd + 1}) for a {nd}D size, "
            f"got {tuple(src_from_dst.shape)}"
        )
    return src_from_dst[:, :nd]


# Cached affine bases, keyed by (size, align_corners, device, dtype, row padding); least recently used first.
_BASES: OrderedDict[tuple[tuple[int, ...], bool, torch.device, torch.dtype, int], Tensor] = OrderedDict()
# A basis is (nd * (nd + 1)) times the size of one grid: use it only for grids up to this many points, and keep
# at most _BASES_MAX_BYTES of them; larger grids take the broadcast path.
_BASIS_MAX_POINTS = 1 << 19
_BASES_MAX_BYTES = 256 << 20
# On the CPU a GEMM whose output rows are a multiple of 4 KiB long runs about twice as slow as one a few columns
# longer (the rows alias in the cache; e.g. 64x64 grids, 128 of them: 0.60 ms against 0.32 ms on one thread). The
# padded basis has _ROW_PAD zero columns more, so the product's rows are that much longer, and the grid is a view
# of its first columns: batch-strided, but every image's grid is contiguous, which is all grid_sample needs.
_ROW_PAD = 64
_ALIASING_ROW_BYTES = 4096


def _row_pad(points: int, nd: int, device: torch.device, dtype: torch.dtype) -> int:
    """Zero columns to add to the basis of a grid of ``points`` points (0: none)."""
    row_bytes = points * nd * dtype.itemsize
    return _ROW_PAD if device.type == "cpu" and row_bytes % _ALIASING_ROW_BYTES == 0 else 0


def _affine_basis(
    size: tuple[int, ...], align_corners: bool, device: torch.device, dtype: torch.dtype, pad: int = 0
) -> Tensor:
    """``(nd * (nd + 1), N * nd + pad)`` matrix ``M`` such that ``rows.reshape(B, -1) @ M`` is the flattened
    grid (followed by ``pad`` zero columns).

    Row ``r * (nd + 1) + j`` holds target coordinate ``j`` (x, y[, z], then 1) in output channel ``r`` of every
    point and zeros elsewhere, so one GEMM writes the interleaved ``(..., nd)`` grid directly.
    """
    key = (size, align_corners, device, dtype, pad)
    basis = _BASES.get(key)
    if basis is not None:
        with contextlib.suppress(KeyError):  # another thread may have just evicted it; we hold a reference
            _BASES.move_to_end(key)
        return basis
    nd = len(size)
    # Built outside inference mode and autograd so that a basis first made under either works everywhere.
    with torch.inference_mode(False), torch.no_grad():
        axes = [normalized_coords(n, align_corners, device=device, dtype=dtype) for n in size]  # z, y, x order
        mesh = torch.meshgrid(*axes, indexing="ij")
        coords = [m.reshape(-1) for m in reversed(mesh)]  # x, y[, z]
        coords.append(torch.ones_like(coords[0]))
        n = coords[0].numel()
        basis = torch.zeros(nd, nd + 1, n, nd, device=device, dtype=dtype)
        for r in range(nd):
            for j, c in enumerate(coords):
                basis[r, j, :, r] = c
        basis = basis.reshape(nd * (nd + 1), n * nd)
        if pad:
            basis = torch.cat((basis, basis.new_zeros(nd * (nd + 1), pad)), dim=1)
    _BASES[key] = basis
    total = sum(b.numel() * b.element_size() for b in list(_BASES.values()))
    while total > _BASES_MAX_BYTES and len(_BASES) > 1:
        try:
            _, dropped = _BASES.popitem(last=False)
        except KeyError:  # emptied by another thread
            break
        total -= dropped.numel() * dropped.element_size()
    return basis


def affine_grid(src_from_dst: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Sampling grid of an affine transform, a faster drop-in for ``F.affine_grid``.

    Args:
        src_from_dst: ``(B, 2, 3)`` or ``(B, 3, 3)`` for a 2D ``size``; ``(B, 3, 4)`` or ``(B, 4, 4)`` for 3D.
            Maps normalised target coordinates to normalised source coordinates.
        size: Output spatial size ``(H, W)`` or ``(D, H, W)``.
        align_corners: Coordinate convention; pass the same value to the sampler.

    Returns:
        Contiguous grid ``(B, H, W, 2)`` or ``(B, D, H, W, 3)`` of source ``(x, y[, z])`` coordinates.

    The grid is one matrix product of the ``B x nd(nd+1)`` matrix entries with a cached basis (its backward is
    one more), so it costs about as much as writing the grid once. The basis is kept per size, convention, device
    and dtype (up to 256 MiB in all); grids of more than 2**19 points are built from broadcast multiply-adds.

    Example:
        >>> theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> g = affine_grid(theta, (2, 3))
        >>> torch.allclose(g, torch.nn.functional.affine_grid(theta, [1, 1, 2, 3], align_corners=False))
        True

    Raises:
        DTypeError: ``align_corners`` is not a bool (the string ``"False"`` is truthy), or the matrix is not a
            floating tensor.
    """
    check_bool(align_corners, "align_corners")
    return _affine_grid(src_from_dst, size, align_corners, contiguous=True)


def _affine_grid(src_from_dst: Tensor, size: Sequence[int], align_corners: bool, *, contiguous: bool) -> Tensor:
    """:func:`affine_grid`; with ``contiguous=False`` the grid may be batch-strided (each image's grid contiguous),
    which is faster to write for sizes whose rows alias in the CPU cache (see ``_ROW_PAD``). That layout is taken
    only when the matrix needs no gradient: the backward of the slice would copy the gradient into a padded
    buffer, which costs what the forward saved."""
    nd = 3 if isinstance(size, Sequence) and len(size) == 3 else 2
    shape = check_size(size, "size", nd)
    t = _rows(src_from_dst, "src_from_dst", nd)
    b = t.shape[0]
    points = math.prod(shape)
    # While compiling or capturing a graph for export the basis would be a traced (fake) tensor: never cache one
    # there; the broadcast multiply-adds export as plain elementwise ops (and a compiler fuses them).
    if points <= _BASIS_MAX_POINTS and not (capturing_graph() or torch.compiler.is_compiling()):
        pad = 0
        if not contiguous and not (t.requires_grad and torch.is_grad_enabled()):
            pad = _row_pad(points, nd, t.device, t.dtype)
        basis = _affine_basis(shape, bool(align_corners), t.device, t.dtype, pad)
        flat = t.reshape(b, nd * (nd + 1)) @ basis
        return (flat[:, : points * nd] if pad else flat).view(b, *shape, nd)
    axes = [normalized_coords(n, align_corners, device=t.device, dtype=t.dtype) for n in shape]  # z, y, x order
    # Broadcastable coordinate arrays: x over the last dimension, y over the one before, z before that.
    coords = [a.view(-1, *([1] * i)) for i, a in enumerate(reversed(axes))]
    c = t.reshape(b, nd, nd + 1, *([1] * nd))
    comps = []
    for r in range(nd):
        comp = c[:, r, 0] * coords[0]
        for j in range(1, nd):
            comp = comp + c[:, r, j] * coords[j]
        comps.append(comp + c[:, r, nd])
    return torch.stack(comps, dim=-1)


def safe_denominator(w: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Clamp a projective denominator away from zero, keeping its sign (0 counts as positive).

    A point whose homogeneous coordinate is within ``eps`` of zero lies (near) the horizon; its image is pushed
    far outside [-1, 1] (so it samples padding) instead of becoming inf or NaN. Gradients through the clamped
    entries are zero.

    Example:
        >>> safe_denominator(torch.tensor([0.0, -1e-9, 2.0]))
        tensor([ 1.0000e-06, -1.0000e-06,  2.0000e+00])
    """
    small = w.abs() < eps
    pos = w.new_full((), eps)  # in w's dtype: a Python float would pass through float32 and round eps
    return torch.where(small, torch.where(torch.signbit(w), -pos, pos), w)


def projective_grid(
    src_from_dst: Tensor, size: Sequence[int], align_corners: bool = False, eps: float = DEFAULT_EPS
) -> Tensor:
    """Sampling grid of a homography.

    Args:
        src_from_dst: ``(B, 3, 3)`` homography from normalised target to normalised source coordinates.
        size: Output size ``(H, W)``.
        align_corners: Coordinate convention; pass the same value to the sampler.
        eps: Smallest magnitude of the denominator (see :func:`safe_denominator`).

    Returns:
        Contiguous grid ``(B, H, W, 2)``; always finite for finite input.

    Example:
        >>> h = torch.eye(3)[None]
        >>> torch.allclose(projective_grid(h, (4, 5)), affine_grid(h, (4, 5)))
        True
    """
    h, w = check_size(size, "size", 2)
    check_tensor(src_from_dst, "src_from_dst", "B,3,3")
    check_bool(align_corners, "align_corners")
    _check_eps(eps)
    xs = normalized_coords(w, align_corners, device=src_from_dst.device, dtype=src_from_dst.dtype)  # (W,)
    ys = normalized_coords(h, align_corners, device=src_from_dst.device, dtype=src_from_dst.dtype)[:, None]
    c = src_from_dst[:, :, :, None, None]  # (B, 3, 3, 1, 1)
    den = safe_denominator(c[:, 2, 0] * xs + c[:, 2, 1] * ys + c[:, 2, 2], eps)  # (B, H, W)
    gx = (c[:, 0, 0] * xs + c[:, 0, 1] * ys + c[:, 0, 2]) / den
    gy = (c[:, 1, 0] * xs + c[:, 1, 1] * ys + c[:, 1, 2]) / den
    return torch.stack((gx, gy), dim=-1)  # (B, H, W, 2)


def _square(m: Tensor, name: str) -> Tensor:
    """(..., n, n+1) -> (..., n+1, n+1) by appending [0, ..., 0, 1]; square matrices pass through."""
    check_tensor(m, name, "*,R,C")
    rows, cols = m.shape[-2:]
    if rows == cols:
        return m
    if cols != rows + 1:
        raise ShapeError(f"{name}: expected (..., n, n+1) or (..., n, n) matrices, got {tuple(m.shape)}")
    last = torch.zeros(*m.shape[:-2], 1, cols, device=m.device, dtype=m.dtype)
    last[..., 0, -1] = 1.0
    return torch.cat((m, last), dim=-2)


def _square_2d(m: Tensor, name: str) -> Tensor:
    """:func:`_square` for a 2D transform: ``(..., 2, 3)`` or ``(..., 3, 3)`` only."""
    check_tensor(m, name, "*,R,C")
    if m.shape[-2:] not in ((2, 3), (3, 3)):
        raise ShapeError(
            f"{name}: expected (..., 2, 3) or (..., 3, 3) matrices of a 2D transform, got {tuple(m.shape)}"
        )
    return _square(m, name)


def _check_eps(eps: object) -> None:
    if check_number(eps, "eps") <= 0:
        raise OptionError(f"eps: expected a positive float, got {eps!r}")


def _check_broadcast(x: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    """Check that the leading (batch) dimensions of ``x`` and ``ref`` (all but the last two) broadcast."""
    try:
        torch.broadcast_shapes(x.shape[:-2], ref.shape[:-2])  # type: ignore[no-untyped-call]
    except RuntimeError as err:
        raise ShapeError(
            f"{name}: leading dimensions {tuple(x.shape[:-2])} do not broadcast with {ref_name}'s "
            f"{tuple(ref.shape[:-2])}"
        ) from err


#: Dtypes ``torch.linalg.inv`` has no kernel for; :func:`invert` works on them in float32.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _inv(m: Tensor) -> Tensor:
    """``torch.linalg.inv``, in float32 for half and bfloat16 (cast back), which it does not support."""
    if m.dtype in _LOW_PRECISION:
        low: Tensor = torch.linalg.inv(m.float())
        return low.to(m.dtype)
    inv: Tensor = torch.linalg.inv(m)
    return inv


def compose(*matrices: Tensor) -> Tensor:
    """Product of transforms, left to right: ``compose(a_from_b, b_from_c) == a_from_c``.

    Args:
        *matrices: Each ``(..., n, n)`` or the top rows ``(..., n-1, n)`` of an affine matrix; leading dimensions
            broadcast.

    Returns:
        The ``(..., n, n)`` product.

    Example:
        >>> shift = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
        >>> compose(shift, shift)[:2]
        tensor([[1., 0., 1.],
                [0., 1., 0.]])
    """
    if not matrices:
        raise ShapeError("matrices: expected at least one matrix")
    out = _square(matrices[0], "matrices[0]")
    for i, m in enumerate(matrices[1:], start=1):
        m = _square(m, f"matrices[{i}]")
        if m.shape[-1] != out.shape[-1]:
            raise ShapeError(
                f"matrices[{i}]: expected {out.shape[-1]}x{out.shape[-1]} matrices like matrices[0] "
                f"{tuple(matrices[0].shape)}, got {tuple(m.shape)}"
            )
        check_like(m, f"matrices[{i}]", out, "matrices[0]")
        _check_broadcast(m, f"matrices[{i}]", out, "the product so far")
        out = out @ m
    return out


def invert(matrix: Tensor) -> Tensor:
    """Inverse of a transform matrix: ``invert(src_from_dst) == dst_from_src``.

    Args:
        matrix: ``(..., n, n)``, or affine top rows ``(..., n-1, n)`` (the result then has the same shape).

    Returns:
        The inverse, shaped like ``matrix``. Half and bfloat16 matrices (which ``torch.linalg.inv`` does not
        support) are inverted in float32 and the inverse cast back to their dtype.

    Raises:
        torch.linalg.LinAlgError: A matrix is singular.

    Example:
        >>> a = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
        >>> invert(a)
        tensor([[ 0.5000,  0.0000, -0.5000],
                [ 0.0000,  0.5000,  0.0000]])
    """
    sq = _square(matrix, "matrix")
    inv: Tensor = _inv(sq)
    return inv if matrix.shape[-2] == matrix.shape[-1] else inv[..., :-1, :]


def transform_points(matrix: Tensor, points: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Apply a transform matrix to points, with a safe projective division.

    Args:
        matrix: ``(B, n, n)`` or ``(B, n-1, n)`` (or unbatched), mapping the points' frame to the result's frame.
        points: ``(B, N, n-1)`` points (``(N, n-1)`` when ``matrix`` is unbatched).
        eps: Smallest magnitude of the homogeneous denominator (see :func:`safe_denominator`).

    Returns:
        ``(B, N, n-1)`` transformed points.

    Example:
        >>> transform_points(torch.tensor([[0.5, 0.0, 0.1], [0.0, 0.5, 0.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([[0.6000, 0.5000]])
    """
    m = _square(matrix, "matrix")
    n = m.shape[-1]
    check_tensor(points, "points", "*,N,D", nonempty=False)
    if points.shape[-1] != n - 1:
        raise ShapeError(
            f"points: expected {n - 1} coordinates per point for a matrix of shape {tuple(matrix.shape)}, "
            f"got shape {tuple(points.shape)}"
        )
    check_like(points, "points", matrix, "matrix")
    _check_broadcast(points[..., :1], "points", m, "matrix")
    _check_eps(eps)
    lin = m[..., : n - 1, : n - 1]
    out = points @ lin.transpose(-1, -2) + m[..., None, : n - 1, n - 1]
    if matrix.shape[-2] == matrix.shape[-1]:  # projective: divide by the homogeneous coordinate
        den = points @ m[..., n - 1, : n - 1, None] + m[..., None, n - 1, n - 1 :]
        out = out / safe_denominator(den, eps)
    return out


def pixel_from_normalized(
    size: Sequence[int],
    align_corners: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Matrix taking normalised coordinates to pixel coordinates (pixel ``i``'s centre at ``i``).

    Args:
        size: ``(H, W)`` or ``(D, H, W)``.
        align_corners: Coordinate convention of the normalised side.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        ``(3, 3)`` or ``(4, 4)`` ``pixel_from_norm``. With ``align_corners=True`` an axis of one pixel is degenerate
        (every normalised coordinate is that pixel); its scale is set to 1 so the matrix stays invertible.

    Example:
        >>> pixel_from_normalized((4, 8))
        tensor([[4.0000, 0.0000, 3.5000],
                [0.0000, 2.0000, 1.5000],
                [0.0000, 0.0000, 1.0000]])
    """
    sizes = check_size(size, "size", len(size) if isinstance(size, Sequence) and len(size) == 3 else 2)[::-1]
    check_bool(align_corners, "align_corners")
    n = len(sizes)
    m = torch.eye(n + 1, device=device, dtype=dtype or torch.get_default_dtype())
    for i, s in enumerate(sizes):  # x (width) first
        scale = (s - 1) / 2 if align_corners else s / 2
        m[i, i] = scale if scale > 0 else 1.0
        m[i, n] = (s - 1) / 2
    return m


def normalized_to_pixel(
    src_from_dst: Tensor, src_size: Sequence[int], dst_size: Sequence[int] | None = None, align_corners: bool = False
) -> Tensor:
    """Convert a normalised ``src_from_dst`` matrix to OpenCV's pixel-space ``dst_from_src`` matrix.

    The result is the ``M`` that ``cv2.warpAffine`` (first two rows) or ``cv2.warpPerspective`` expects without
    ``WARP_INVERSE_MAP``; its inverse is the pixel ``src_from_dst`` map.

    Args:
        src_from_dst: ``(B, 2, 3)`` or ``(B, 3, 3)`` normalised matrix, as used by the grid generators.
        src_size: Source (input) image size ``(H, W)``.
        dst_size: Destination (output) size ``(H', W')``; defaults to ``src_size``.
        align_corners: Convention the normalised matrix was written in.

    Returns:
        ``(B, 3, 3)`` ``dst_from_src`` in pixels.
    """
    check_size(src_size, "src_size", 2)
    dst_size = src_size if dst_size is None else check_size(dst_size, "dst_size", 2)
    check_bool(align_corners, "align_corners")
    m = _square_2d(src_from_dst, "src_from_dst")
    px_src = pixel_from_normalized(src_size, align_corners, device=m.device, dtype=m.dtype)
    px_dst = pixel_from_normalized(dst_size, align_corners, device=m.device, dtype=m.dtype)
    src_from_dst_px = px_src @ m @ _inv(px_dst)
    dst_from_src_px: Tensor = _inv(src_from_dst_px)
    return dst_from_src_px


def pixel_to_normalized(
    dst_from_src_px: Tensor,
    src_size: Sequence[int],
    dst_size: Sequence[int] | None = None,
    align_corners: bool = False,
) -> Tensor:
    """Convert OpenCV's pixel-space ``dst_from_src`` matrix to the normalised ``src_from_dst`` the grids use.

    Inverse of :func:`normalized_to_pixel`.

    Args:
        dst_from_src_px: ``(B, 2, 3)`` or ``(B, 3, 3)`` pixel matrix (``cv2.getRotationMatrix2D`` output, say).
        src_size: Source (input) image size ``(H, W)``.
        dst_size: Destination (output) size ``(H', W')``; defaults to ``src_size``.
        align_corners: Convention of the normalised result.

    Returns:
        ``(B, 3, 3)`` normalised ``src_from_dst``.
    """
    check_size(src_size, "src_size", 2)
    dst_size = src_size if dst_size is None else check_size(dst_size, "dst_size", 2)
    check_bool(align_corners, "align_corners")
    m = _square_2d(dst_from_src_px, "dst_from_src_px")
    px_src = pixel_from_normalized(src_size, align_corners, device=m.device, dtype=m.dtype)
    px_dst = pixel_from_normalized(dst_size, align_corners, device=m.device, dtype=m.dtype)
    src_from_dst: Tensor = _inv(px_src) @ _inv(m) @ px_dst
    return src_from_dst


def output_extent(n: int, align_corners: bool = False) -> float:
    """Normalised coordinate of the outer edge of an axis of ``n`` output pixels.

    With ``align_corners=False`` the outer pixel edges are at ``±1``; with ``align_corners=True`` ``±1`` are the
    corner pixels' centres, so the edges lie half a pixel further out, at ``±n / (n - 1)`` (``±1`` when ``n == 1``).

    Example:
        >>> output_extent(28), output_extent(5, align_corners=True)
        (1.0, 1.25)
    """
    check_bool(align_corners, "align_corners")
    return n / (n - 1) if align_corners and n > 1 else 1.0


def attention_boxes(
    params: Tensor,
    image_size: Sequence[int],
    align_corners: bool = False,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """The boxes that attention transforms ``(s, tx, ty)`` crop, in pixels.

    The output's outer edges, normalised ``±1`` with ``align_corners=False``, land on
    ``[tx - s, tx + s] x [ty - s, ty + s]`` of the input: the box is what the output shows, the same region as
    :func:`torchstn.viz.grid_outline`'s square.

    Convention:
        Boxes are ``(x0, y0, x1, y1)`` in the *edge* convention of the data sets' ``meta["boxes"]``: pixel ``i``
        covers ``[i, i + 1)`` and the whole image is ``(0, 0, W, H)``, so a box compares directly (IoU) with the
        true box and :func:`torchstn.viz.sheet` draws it. (:func:`torchstn.viz.grid_outline`'s pixel-centre
        coordinates are half a pixel lower.)

    Args:
        params: ``(B, 3)`` (or ``(..., 3)``) attention parameters.
        image_size: Input size ``(H, W)``.
        align_corners: The convention the transformer samples with.
        output_size: Output size ``(H', W')``; default ``image_size``. Only used with ``align_corners=True``,
            where the output's edges lie half an output pixel beyond ``±1``.

    Returns:
        ``(B, 4)`` (or ``(..., 4)``) boxes.

    Example:
        >>> attention_boxes(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.5, -0.5]]), (84, 84))
        tensor([[ 0.,  0., 84., 84.],
                [21., 21., 63., 63.],
                [42.,  0., 84., 42.]])
    """
    check_tensor(params, "params", "*,3")
    check_bool(align_corners, "align_corners")
    h, w = check_size(image_size, "image_size", 2)
    ho, wo = (h, w) if output_size is None else check_size(output_size, "output_size", 2)
    s, tx, ty = params.unbind(-1)

    def edge(u: Tensor, n: int) -> Tensor:
        """Normalised source coordinate -> pixel-edge coordinate along an axis of ``n`` pixels."""
        return (u + 1.0) * (n - 1) / 2 + 0.5 if align_corners else (u + 1.0) * n / 2

    sx, sy = s * output_extent(wo, align_corners), s * output_extent(ho, align_corners)  # half-extents of the window
    return torch.stack((edge(tx - sx, w), edge(ty - sy, h), edge(tx + sx, w), edge(ty + sy, h)), dim=-1)
