"""``padding="fill"``: a constant per channel outside the image, built on zero padding for every backend.

The output is ``sample(input) + fill * outside``: the input sampled with zero padding, plus the fill times the
share of the kernel's weight that falls outside the image, ``outside = 1 - sample(ones)``. Pixels whose kernel
reads only the image (``outside`` within rounding of 0, snapped to exactly 0) come out bit for bit as with zero
padding, whatever the (finite) fill; pixels whose kernel lies wholly outside read exactly ``fill``; pixels whose
kernel straddles the border carry ``fill * outside`` to within ``2 * _SNAP_ULPS * eps * |fill|`` (the snap, plus the
rounding of ``outside``; ``eps`` of the dtype).
(Sampling ``input - fill`` and adding ``fill`` back, as torchstn did before, loses the image to rounding once the
fill is large: at 1e8 a float32 image came back all zeros.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchstn.errors import DTypeError, ShapeError
from torchstn.sampling._options import FillValue

__all__ = ["fill_tensor", "filled"]

# The weights of a kernel that reads only the image sum to one within a few units in the last place (bilinear:
# half a unit; the 16 bicubic weights, some negative: up to 15 units). Below this many units the outside share
# is rounding, not padding, and is taken as 0.
_SNAP_ULPS = 32


def fill_tensor(fill: FillValue, input: Tensor) -> Tensor:
    """Fill value broadcastable to ``input``: ``(1 or B, C, 1, ...)``, in the input's dtype and device."""
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


def filled(
    input: Tensor, padding: str, fill: Tensor | None, run: Callable[[Tensor, str], Tensor], heads: int = 1
) -> Tensor:
    """``run(input, padding)``, with ``padding="fill"`` built on zero padding (see the module docstring).

    Args:
        input: ``(B, C, *S)``.
        padding: The requested padding.
        fill: With ``padding="fill"``, :func:`fill_tensor`'s ``(1 or B, C, 1, ...)``; else None.
        run: Samples an input with a padding other than ``"fill"``; returns ``(B, C, *S')``, or
            ``(B, N, C, *S')`` for ``heads=N > 1``.
        heads: ``N``.

    Returns:
        What ``run`` returns.
    """
    if padding != "fill" or fill is None:
        return run(input, padding)
    out = run(input, "zeros")  # (B, N, C, *S')
    ones = torch.ones((), device=input.device, dtype=input.dtype).expand(input.shape[0], 1, *input.shape[2:])
    outside = 1.0 - run(ones, "zeros")  # (B, [N,] 1, *S'): the kernel's weight outside the image
    tiny = _SNAP_ULPS * torch.finfo(input.dtype).eps
    outside = torch.where(outside.abs() <= tiny, torch.zeros_like(outside), outside)
    return out + (fill if heads == 1 else fill.unsqueeze(1)) * outside
