"""The ``nn.Module`` face of the library: spatial transformers alone, in parallel and in series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchstn._checks import check_choice, check_size
from torchstn.errors import OptionError, ShapeError
from torchstn.geometry import _affine_grid, projective_grid
from torchstn.sampling import (
    Backend,
    FillValue,
    Mode,
    NonFinite,
    Padding,
    _check_antialias,
    _transform_grid,
    _try_fused,
    sample,
    warp,
)
from torchstn.transforms import Affine, MatrixTransform, Transform

_AFFINE = Affine()  # a composed chain's (B, 2, 3) matrix, read as Affine parameters by the fused kernel

__all__ = ["ParallelSpatialTransformer", "SerialSpatialTransformer", "SpatialTransformer"]

Combine = Literal["stack", "concat"]


class SpatialTransformer(nn.Module):
    """A spatial transformer: localisation network -> parameters -> grid -> sampled output.

    The localisation network runs on the input, or on a separate ``loc_input`` the caller passes (a downsampled
    copy, another feature map). Works on any number of channels, and on volumes ``(B, C, D, H, W)`` with
    :class:`~torchstn.transforms.Affine3D`. The forward pass is one call into :func:`torchstn.warp`.

    When the localisation network returns ``(B, N, num_params)`` (a head with ``num_heads=N``), ``N`` transformers
    share it and sample the same input in one call; the outputs are stacked ``(B, N, C, H', W')`` or concatenated
    on channels ``(B, N*C, H', W')`` according to ``combine``.

    Args:
        localisation: Module mapping the localisation input to ``(B, num_params)`` (or ``(B, N, num_params)``).
        transform: The transform family.
        output_size: Output spatial size; default: the input's. May be smaller (down-sampling; note that bilinear
            sampling aliases when it down-samples much, as the paper warns) or larger.
        mode, padding, fill, align_corners, backend, nonfinite: As in :func:`torchstn.sample`.
        combine: How the outputs of several heads are joined: ``"stack"`` or ``"concat"``.
        antialias: Average each output pixel's source footprint where the warp shrinks (as
            :func:`torchstn.warp`); 2D bilinear only, on the grid path.

    Attributes:
        last_params: The parameters of the latest forward pass (detached), for inspection and pictures.
        params: The same with their graph, for losses on the parameters within the same step (e.g.
            :func:`~torchstn.modules.identity_penalty`); replaced at every forward pass.

    Example:
        >>> from torchstn.transforms import Affine
        >>> from torchstn.modules import conv_localisation
        >>> st = SpatialTransformer(conv_localisation((1, 42, 42), Affine(), downsample=2), Affine())
        >>> x = torch.rand(4, 1, 42, 42)
        >>> torch.allclose(st(x), x, atol=1e-5)  # identity at initialisation
        True
        >>> out, theta = st(x, return_params=True)
        >>> theta.shape
        torch.Size([4, 6])
    """

    def __init__(
        self,
        localisation: nn.Module,
        transform: Transform,
        output_size: Sequence[int] | None = None,
        mode: Mode = "bilinear",
        padding: Padding = "zeros",
        fill: FillValue | None = None,
        align_corners: bool = False,
        backend: Backend = "auto",
        nonfinite: NonFinite = "raise",
        combine: Combine = "stack",
        antialias: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            raise OptionError(f"transform: expected a torchstn.transforms.Transform, got {type(transform).__name__}")
        if antialias:
            _check_antialias(mode, transform.ndim, backend)
        self.antialias = antialias
        self.localisation = localisation
        self.transform = transform
        self.output_size = None if output_size is None else check_size(output_size, "output_size", transform.ndim)
        self.mode: Mode = mode
        self.padding: Padding = padding
        self.fill = fill
        self.align_corners = align_corners
        self.backend: Backend = backend
        self.nonfinite: NonFinite = nonfinite
        self.combine: Combine = check_choice(combine, "combine", ("stack", "concat"))  # type: ignore[assignment]
        self.last_params: Tensor | None = None
        self.params: Tensor | None = None

    def sample_with(self, x: Tensor, params: Tensor) -> Tensor:
        """Warp ``x`` with given parameters ``(B, P)`` or ``(B, N, P)`` using this module's settings."""
        if params.ndim == 2:
            return warp(
                x,
                params,
                self.transform,
                self.output_size,
                self.mode,
                self.padding,
                self.fill,
                self.align_corners,
                backend=self.backend,
                nonfinite=self.nonfinite,
                antialias=self.antialias,
            )
        if params.ndim != 3:
            raise ShapeError(f"params: expected (B, P) or (B, N, P), got {tuple(params.shape)}")
        b, n, p = params.shape
        src_size = tuple(x.shape[2:])
        size = src_size if self.output_size is None else self.output_size
        if self.antialias:  # each head's grid needs footprints of its own: warp every (image, head) pair
            fill = self.fill
            if isinstance(fill, Tensor) and fill.ndim == 2 and fill.shape[0] == b > 1:
                fill = fill.repeat_interleave(n, dim=0)  # a (B, C) fill, one row per (image, head)
            heads = warp(
                x.repeat_interleave(n, dim=0),
                params.reshape(b * n, p),
                self.transform,
                self.output_size,
                self.mode,
                self.padding,
                fill,
                self.align_corners,
                backend=self.backend,
                nonfinite=self.nonfinite,
                antialias=True,
            ).view(b, n, x.shape[1], *size)
            return heads.reshape(b, n * x.shape[1], *size) if self.combine == "concat" else heads
        fused = _try_fused(
            x,
            params.reshape(b * n, p),
            self.transform,
            size,
            self.mode,
            self.padding,
            self.fill,
            self.align_corners,
            self.backend,
            self.nonfinite,
        )
        if fused is not None:  # (B * N, C, H', W'), the heads of each image together
            out = fused.view(b, n, x.shape[1], *size)
            return out.reshape(b, n * x.shape[1], *size) if self.combine == "concat" else out
        grid, nonfinite = _transform_grid(
            self.transform,
            params.reshape(b * n, p),
            size,
            src_size,
            self.align_corners,
            self.nonfinite,
            contiguous=True,
        )
        # N heads read the same input: stack their grids along the first spatial axis and sample once.
        grid = grid.view(b, n * size[0], *size[1:], self.transform.ndim)  # (B, N*H', W', 2)
        out = sample(
            x,
            grid,
            self.mode,
            self.padding,
            self.fill,
            self.align_corners,
            backend=self.backend,
            nonfinite=nonfinite,
        )
        out = out.view(b, x.shape[1], n, *size).transpose(1, 2)  # (B, N, C, H', W')
        return out.reshape(b, n * x.shape[1], *size) if self.combine == "concat" else out

    def forward(
        self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Transform ``x``.

        Args:
            x: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``).
            loc_input: What the localisation network sees; default ``x``.
            return_params: Also return the parameters (with their graph, so later layers can use them).

        Returns:
            The output ``(B, C, H', W')`` (or the combined heads' outputs), and the parameters when asked.
        """
        params = self.localisation(x if loc_input is None else loc_input)
        out = self.sample_with(x, params)
        self.params, self.last_params = params, params.detach()
        return (out, params) if return_params else out

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, output_size={self.output_size}, mode={self.mode!r}, "
            f"padding={self.padding!r}, align_corners={self.align_corners}"
            + (", antialias=True" if self.antialias else "")
        )


class ParallelSpatialTransformer(nn.Module):
    """Several independent spatial transformers on the same input; outputs stacked or concatenated on channels.

    This is the paper's 2xST-FCN for MNIST addition and its 2x/4x ST-CNN for birds when each transformer has its
    own localisation network; for transformers sharing one network, give a :class:`SpatialTransformer` a head
    with ``num_heads=N`` instead. Each transformer may start from its own placement (the ``init`` of its head).

    Args:
        transformers: The transformers (same output size when stacking).
        combine: ``"concat"`` on channels ``(B, sum C, H', W')`` or ``"stack"`` ``(B, N, C, H', W')``.
    """

    def __init__(self, transformers: Sequence[SpatialTransformer], combine: Combine = "concat") -> None:
        super().__init__()
        if len(transformers) == 0:
            raise OptionError("transformers: expected at least one SpatialTransformer")
        self.transformers = nn.ModuleList(transformers)
        self.combine: Combine = check_choice(combine, "combine", ("stack", "concat"))  # type: ignore[assignment]

    def forward(
        self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        outs, params = [], []
        for st in self.transformers:
            out, p = st(x, loc_input, return_params=True)
            outs.append(out)
            params.append(p)
        joined = torch.cat(outs, dim=1) if self.combine == "concat" else torch.stack(outs, dim=1)
        return (joined, params) if return_params else joined


class SerialSpatialTransformer(nn.Module):
    """Transformers in series, each refining the previous ones.

    With ``compose=False`` each stage warps the previous stage's output (the plain chain; any families). With
    ``compose=True`` (matrix families only) the stages' matrices are multiplied and the **original** input is
    resampled once per stage with the product, as the inverse-compositional STN does: no blur accumulates from
    repeated resampling and nothing that a stage cropped out is lost to later stages. Stage ``k`` sees
    ``sample(x, M_1 ... M_{k-1})`` and predicts ``M_k``; the output is ``sample(x, M_1 ... M_K)``. This is exact
    for matrix families because the composition of ``src_from_dst`` maps is their product; a thin-plate spline
    has no such closed form, so it needs ``compose=False``.

    Args:
        transformers: The stages, in order.
        compose: Compose matrices and resample the input once per stage (see above).
    """

    def __init__(self, transformers: Sequence[SpatialTransformer], compose: bool = True) -> None:
        super().__init__()
        if len(transformers) == 0:
            raise OptionError("transformers: expected at least one SpatialTransformer")
        if compose:
            for i, st in enumerate(transformers):
                if not isinstance(st.transform, MatrixTransform):
                    raise OptionError(
                        f"transformers[{i}]: compose=True needs matrix transforms, got {st.transform!r}; "
                        "use compose=False"
                    )
            if len({st.transform.ndim for st in transformers}) != 1:
                raise OptionError("transformers: every stage must have the same number of spatial dimensions")
        self.stages = nn.ModuleList(transformers)
        self.compose = compose

    def forward(self, x: Tensor, return_params: bool = False) -> Tensor | tuple[Tensor, list[Tensor], Tensor | None]:
        """Run the chain; with ``return_params`` also return each stage's params and the composed matrix."""
        stages: list[SpatialTransformer] = list(self.stages)  # type: ignore[arg-type]
        params: list[Tensor] = []
        if not self.compose:
            cur = x
            for st in stages:
                cur, p = st(cur, return_params=True)
                params.append(p)
            return (cur, params, None) if return_params else cur
        src_size = tuple(x.shape[2:])
        total: Tensor | None = None
        cur = x
        projective = False
        for st in stages:
            transform: MatrixTransform = st.transform  # type: ignore[assignment]
            p = st.localisation(cur)
            st.params, st.last_params = p, p.detach()
            params.append(p)
            m = transform.matrix(p, src_size=src_size)
            total = m if total is None else total @ m  # src_from_dst of the chain so far
            projective = projective or transform.projective
            size = src_size if st.output_size is None else st.output_size
            if not projective and transform.ndim == 2 and not st.antialias:  # the composed matrix, fused kernel
                rows = total[:, :2].reshape(-1, 6)
                out = _try_fused(
                    x, rows, _AFFINE, size, st.mode, st.padding, st.fill, st.align_corners, st.backend, st.nonfinite
                )
                if out is not None:
                    cur = out
                    continue
            if projective:
                grid = projective_grid(total, size, st.align_corners, transform.eps)
            else:
                grid = _affine_grid(total[:, : transform.ndim], size, st.align_corners, contiguous=False)
            cur = sample(
                x,
                grid,
                st.mode,
                st.padding,
                st.fill,
                st.align_corners,
                backend=st.backend,
                nonfinite=st.nonfinite,
                antialias=st.antialias,
            )
        return (cur, params, total) if return_params else cur
