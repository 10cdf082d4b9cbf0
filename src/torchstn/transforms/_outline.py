"""Outlines: where a transform's output border (or a mesh over the output) lands in its input, in pixels.

This is the geometry behind the pictures in :mod:`torchstn.viz`; it draws nothing.

Convention:
    Transforms map normalised target (output) points to normalised source (input) points, ``(x, y)`` order (see
    :mod:`torchstn.geometry`). :func:`grid_outline` returns **pixel** coordinates with pixel ``i``'s centre at
    ``i`` (as :func:`torchstn.geometry.pixel_from_normalized`), so the border of a 28x28 image runs from -0.5 to
    27.5. (:func:`torchstn.geometry.attention_boxes` uses the *edge* convention of the data sets' boxes instead.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchstn._checks import check_bool, check_int, check_size, check_tensor, check_transform
from torchstn.errors import OptionError
from torchstn.geometry import output_extent, pixel_from_normalized
from torchstn.transforms._base import MatrixTransform, Transform

__all__ = ["grid_outline"]


def grid_outline(
    transform: Transform,
    params: Tensor,
    src_size: Sequence[int],
    align_corners: bool = False,
    mesh: int | None = None,
    output_size: Sequence[int] | None = None,
    samples: int = 33,
) -> list[Tensor]:
    """Where the output image's border (or a mesh over it) lands in the input, in input pixel coordinates.

    The border of the output is its outer pixel edges: normalised ``±1`` with ``align_corners=False``,
    ``±n/(n-1)`` with ``align_corners=True`` (which needs the output size). Mapped through the transform it is the
    region the transformer samples: a quadrilateral for matrix families, a curved patch for a thin-plate spline. A
    mesh of ``k`` horizontal and ``k`` vertical lines of the output, evenly spaced from border to border, shows how
    a non-linear warp bends the plane.

    Convention:
        Points are ``(x, y)`` in source pixels with pixel ``i``'s centre at ``i``: the identity's outline of a
        28x28 input has corners ``(-0.5, -0.5)`` and ``(27.5, 27.5)``.

    Args:
        transform: A 2D transform family.
        params: ``(B, P)`` (or ``(..., P)``, e.g. ``(B, N, P)`` for several heads) parameters.
        src_size: Input size ``(H, W)``.
        align_corners: The convention the transformer samples with.
        mesh: Lines per direction. ``0``: the border only (one closed polyline); ``k >= 2``: ``k`` horizontal
            then ``k`` vertical lines, the outermost being the border; ``None``: ``0`` for matrix families and
            ``7`` for the others.
        output_size: Output size ``(H', W')``; default ``src_size``. Only used with ``align_corners=True``.
        samples: Points per line (per side of the border) for non-affine families, whose lines bend.

    Returns:
        A list of polylines, each ``(..., L, 2)`` with the leading dimensions of ``params``.

    Example:
        >>> from torchstn.transforms import Attention
        >>> [square] = grid_outline(Attention(), torch.tensor([[0.5, 0.0, 0.0]]), (28, 28))
        >>> square[0]
        tensor([[ 6.5000,  6.5000],
                [20.5000,  6.5000],
                [20.5000, 20.5000],
                [ 6.5000, 20.5000],
                [ 6.5000,  6.5000]])
    """
    check_transform(transform, "transform", ndim=2)
    check_bool(align_corners, "align_corners")
    check_tensor(params, "params", f"*,{transform.num_params}")
    src = check_size(src_size, "src_size", 2)
    out = src if output_size is None else check_size(output_size, "output_size", 2)
    if mesh is None:
        mesh = 0 if isinstance(transform, MatrixTransform) else 7
    if check_int(mesh, "mesh") == 1 or mesh < 0:
        raise OptionError(f"mesh: expected 0 (border only) or at least 2 lines, got {mesh!r}")
    check_int(samples, "samples", minimum=2)
    n = 2 if isinstance(transform, MatrixTransform) else samples  # lines stay lines under a matrix
    ex, ey = output_extent(out[1], align_corners), output_extent(out[0], align_corners)
    dev, dt = params.device, params.dtype
    lines: list[Tensor] = []
    if mesh == 0:
        corners = torch.tensor([[-ex, -ey], [ex, -ey], [ex, ey], [-ex, ey], [-ex, -ey]], device=dev, dtype=dt)
        if isinstance(transform, MatrixTransform):
            lines.append(corners)
        else:
            t = torch.linspace(0.0, 1.0, samples, device=dev, dtype=dt)[:-1, None]  # (S-1, 1)
            a, b = corners[:-1, None], corners[1:, None]  # (4, 1, 2)
            sides = (a + t * (b - a)).reshape(-1, 2)  # (4 (S-1), 2)
            lines.append(torch.cat((sides, corners[:1])))  # closed
    else:
        along_x = torch.linspace(-ex, ex, n, device=dev, dtype=dt)
        along_y = torch.linspace(-ey, ey, n, device=dev, dtype=dt)
        for v in torch.linspace(-ey, ey, mesh, device=dev, dtype=dt):
            lines.append(torch.stack((along_x, v.expand(n)), dim=-1))  # horizontal, (n, 2)
        for u in torch.linspace(-ex, ex, mesh, device=dev, dtype=dt):
            lines.append(torch.stack((u.expand(n), along_y), dim=-1))  # vertical, (n, 2)
    lead = params.shape[:-1]
    flat = params.reshape(-1, transform.num_params)  # (B', P)
    pts = torch.cat(lines)[None].expand(flat.shape[0], -1, -1)  # (B', L_total, 2)
    src_pts = transform.map_points(flat, pts, src_size=src)  # normalised source points
    px_from_norm = pixel_from_normalized(src, align_corners, device=params.device, dtype=params.dtype)
    px = src_pts @ px_from_norm[:2, :2].T + px_from_norm[:2, 2]  # (B', L_total, 2)
    polylines, start = [], 0
    for line in lines:
        polylines.append(px[:, start : start + len(line)].reshape(*lead, len(line), 2))
        start += len(line)
    return polylines
