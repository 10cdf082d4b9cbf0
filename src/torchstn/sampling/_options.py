"""The sampling options, validated once: what to read, how to pad, which backend, what to do with NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from torchstn._checks import capturing_graph, check_choice
from torchstn.errors import DTypeError, OptionError
from torchstn.sampling._backends import BACKEND_NAMES, Backend

__all__ = ["MODES", "NONFINITE", "PADDINGS", "Backend", "FillValue", "Mode", "NonFinite", "Padding", "SamplingOptions"]

Mode = Literal["nearest", "bilinear", "bicubic", "trilinear"]
Padding = Literal["zeros", "border", "reflection", "fill"]
NonFinite = Literal["raise", "propagate", "ignore"]
FillValue = float | Sequence[float] | Tensor

MODES: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "trilinear")
PADDINGS: tuple[str, ...] = ("zeros", "border", "reflection", "fill")
NONFINITE: tuple[str, ...] = ("raise", "propagate", "ignore")


@dataclass(frozen=True, eq=False)
class SamplingOptions:
    """How a sampler reads its input, validated when built (a module builds one in ``__init__``).

    Attributes:
        mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (images) or ``"trilinear"`` (volumes).
        padding: ``"zeros"``, ``"border"``, ``"reflection"`` or ``"fill"``.
        fill: With ``padding="fill"`` (and only then): a finite scalar, one value per channel, or a ``(B, C)``
            tensor; its shape is checked against the input at each call.
        align_corners: The coordinate convention, a bool.
        backend: ``"auto"`` or a registered backend's name: ``"fused"``, ``"torch"``, ``"reference"`` (see
            :mod:`torchstn.sampling`).
        nonfinite: ``"raise"``, ``"propagate"`` or ``"ignore"``.
        antialias: Average each output pixel's source footprint where the warp shrinks
            (:mod:`torchstn._antialias`: an exact separable prefilter for affine warps, a mip-map with a per-pixel
            level for the others): bilinear only; images only (checked against the input, or the transform when
            a module is built). ``backend="fused"`` cannot be asked for by name (``"auto"`` samples the affine
            prefilter's output with it).

    Raises:
        OptionError: An option is not one of its choices, ``fill`` is missing, superfluous or not finite, or
            ``antialias=True`` with another mode than bilinear or with ``backend="fused"``.
        DTypeError: ``align_corners`` or ``antialias`` is not a bool, or ``fill`` is not a number, numbers or a
            tensor.
    """

    mode: Mode = "bilinear"
    padding: Padding = "zeros"
    fill: FillValue | None = None
    align_corners: bool = False
    backend: Backend = "auto"
    nonfinite: NonFinite = "raise"
    antialias: bool = False

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        check_choice(self.padding, "padding", PADDINGS)
        check_choice(self.backend, "backend", BACKEND_NAMES)
        check_choice(self.nonfinite, "nonfinite", NONFINITE)
        if not isinstance(self.align_corners, bool):
            raise DTypeError(f"align_corners: expected a bool, got {self.align_corners!r}")
        if self.padding == "fill" and self.fill is None:
            raise OptionError("fill: a value is required when padding='fill'")
        if self.padding != "fill" and self.fill is not None:
            raise OptionError(f"fill: only used with padding='fill', got padding={self.padding!r}")
        if self.fill is not None:
            _check_fill_values(self.fill)
        if not isinstance(self.antialias, bool):
            raise DTypeError(f"antialias: expected a bool, got {self.antialias!r}")
        if self.antialias:
            if self.mode != "bilinear":
                raise OptionError(f"antialias: needs mode='bilinear', got mode={self.mode!r}")
            if self.backend == "fused":
                raise OptionError("backend: 'fused' cannot run antialias=True (it takes the grid path); use 'auto'")

    def check_antialias(self, ndim: int) -> None:
        """Raise :class:`OptionError` if ``antialias=True`` is asked of ``ndim``-D data (images only)."""
        if self.antialias and ndim != 2:
            raise OptionError(f"antialias: needs a 2D transform, got a {ndim}D one")

    def kernel(self, ndim: int) -> str:
        """The interpolation ``F.grid_sample`` calls ``mode`` for ``ndim`` spatial dimensions (trilinear is its
        bilinear on volumes); raises :class:`OptionError` for a mode that does not exist in ``ndim`` D."""
        if self.mode == "bicubic" and ndim == 3:
            raise OptionError("mode: 'bicubic' needs a 4D input (B, C, H, W); use 'trilinear' or 'nearest' for volumes")
        if self.mode == "trilinear" and ndim == 2:
            raise OptionError("mode: 'trilinear' needs a 5D input (B, C, D, H, W); use 'bilinear' for images")
        return "bilinear" if self.mode == "trilinear" else self.mode


def _check_fill_values(fill: object) -> None:
    """A fill must be a finite number, finite numbers or a floating tensor of finite values (its shape is
    checked against the input later). A tensor's values are not read while a graph is captured or compiled."""
    if isinstance(fill, Tensor):
        if not (fill.is_floating_point() or fill.dtype in (torch.int32, torch.int64)):
            raise DTypeError(f"fill: expected a floating-point tensor, got dtype {fill.dtype}")
        if capturing_graph() or torch.compiler.is_compiling() or fill.device.type == "meta":
            return
        if not bool(torch.isfinite(fill).all()):
            raise OptionError("fill: expected finite values, got NaN or inf (zeros padding is exact for 0)")
        return
    if isinstance(fill, int | float) and not isinstance(fill, bool):
        if not math.isfinite(fill):
            raise OptionError(f"fill: expected finite values, got {fill!r}")
        return
    try:
        values = torch.as_tensor(fill, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DTypeError(f"fill: expected a number, a sequence of numbers or a tensor, got {fill!r}") from err
    if isinstance(fill, bool | str) or values.dtype == torch.bool:
        raise DTypeError(f"fill: expected a number, a sequence of numbers or a tensor, got {fill!r}")
    if not all(math.isfinite(v) for v in values.flatten().tolist()):
        raise OptionError(f"fill: expected finite values, got {fill!r}")
