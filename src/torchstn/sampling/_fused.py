"""The ``"fused"`` backend: the compiled CPU kernel of :mod:`torchstn.ext`.

It samples a 2D affine or projective warp straight from its ``(B * N, 2, 3)`` or ``(B * N, 3, 3)`` matrix,
forward and backward, without building the grid (timed against the grid path in ``benchmarks/results/warp.md``,
section 6). Its gradients are first order only. It reads a NaN source point as lying outside the image (0
whatever the padding), so with ``nonfinite="raise"`` it runs only where the matrix proves the grid finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchstn.errors import UnsupportedError
from torchstn.geometry import normalized_coords
from torchstn.sampling._backend import SamplerBackend, SamplerCall
from torchstn.transforms import MatrixTransform

__all__ = ["FusedCPUBackend", "fused_warp"]

_FUSED_PADDING = {"zeros": 0, "border": 1, "reflection": 2}


class FusedCPUBackend(SamplerBackend):
    """The compiled CPU kernel: 2D matrix families, bilinear, float32/float64, once built."""

    name = "fused"
    reads_grid = False
    traceable = False  # a captured or compiled graph keeps to standard operators: the grid path

    def can_run(self, call: SamplerCall) -> str | None:
        """Cheapest tests first; the kernel's availability last but one, the matrix bound last."""
        transform, options, input = call.transform, call.options, call.input
        if transform is None:
            return "it samples a matrix warp straight from the matrix, and a ready-made grid has none (use warp)"
        if input.device.type != "cpu":
            return f"it runs on the CPU only, got {input.device}"
        if not isinstance(transform, MatrixTransform) or transform.ndim != 2 or call.matrix is None:
            return (
                "it takes 2D matrix transforms (Affine, Attention, Similarity, Translation, Projective), "
                f"got {transform!r}"
            )
        if options.mode != "bilinear":
            return f"it samples bilinearly only, got mode={options.mode!r}"
        if options.antialias:
            return "antialias=True takes the grid path (the footprints come from the grid)"
        if input.dtype not in (torch.float32, torch.float64):
            return f"it takes float32 or float64, got {input.dtype}"
        if call.matrix.dtype != input.dtype:
            return f"under autocast the matrix is {call.matrix.dtype} and the input {input.dtype}"
        if options.nonfinite == "propagate":
            return "nonfinite='propagate' needs the grid"
        if input.shape[-1] * input.shape[-2] >= 2**31:
            return "the image has 2**31 pixels or more"
        from torchstn import ext  # here, not at the top: `python -m torchstn.ext` must not find it imported already

        if not ext.available():
            return "the kernel is not built (run `python -m torchstn.ext build`) or TORCHSTN_EXT=0"
        if options.nonfinite == "raise" and not call.grid_finite:
            return "the matrix is too large to prove its grid finite; the grid path checks it"
        return None

    def run(self, call: SamplerCall, input: Tensor, padding: str) -> Tensor:
        assert isinstance(call.transform, MatrixTransform) and call.matrix is not None  # can_run checked both
        eps = call.transform.eps if call.transform.projective else 0.0
        out = fused_warp(input, call.matrix, call.size, padding, call.options.align_corners, eps)  # (B*N, C', ...)
        return out if call.heads == 1 else out.view(call.batch, call.heads, input.shape[1], *call.size)


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
        raise UnsupportedError(
            "the fused kernel (torchstn.ext) has first-order gradients only: "
            "pass backend='reference' for second-order ones"
        )


def fused_warp(
    input: Tensor, matrix: Tensor, size: tuple[int, ...], padding: str, align_corners: bool, eps: float
) -> Tensor:
    """Warp with the compiled kernel: ``matrix`` is the ``(B * N, 2, 3)`` affine or ``(B * N, 3, 3)`` projective
    source-from-target matrix (``eps``: the projective denominator's smallest magnitude)."""
    xs = _target_coords(size[1], align_corners, input.dtype)
    ys = _target_coords(size[0], align_corners, input.dtype)
    options = (_FUSED_PADDING[padding], align_corners, float(eps))
    out: Tensor = _FusedWarp.apply(input.contiguous(), matrix.contiguous(), xs, ys, options)  # type: ignore[no-untyped-call]
    return out
