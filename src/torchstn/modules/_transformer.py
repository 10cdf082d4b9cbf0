"""The ``nn.Module`` face of the library: spatial transformers alone, in parallel and in series."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import torch
from torch import Tensor, nn

from torchstn._checks import check_choice, check_instance, check_size, check_transform
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.modules._localisation import LocalisationHead
from torchstn.sampling import Backend, FillValue, Mode, NonFinite, Padding, SamplingOptions, warp_params
from torchstn.sampling._autocast import autocast_dtypes, to_work_dtype
from torchstn.sampling._matrices import Homography
from torchstn.transforms import Affine, Affine3D, MatrixTransform, Transform

__all__ = ["ParallelSpatialTransformer", "SerialSpatialTransformer", "SpatialTransformer"]

Combine = Literal["stack", "concat"]


_T = TypeVar("_T")


class _Option(Generic[_T]):
    """A :class:`SpatialTransformer` attribute that reads and sets one field of its :class:`SamplingOptions`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Option[_T]: ...

    @overload
    def __get__(self, obj: SpatialTransformer, objtype: type | None = None) -> _T: ...

    def __get__(self, obj: SpatialTransformer | None, objtype: type | None = None) -> _T | _Option[_T]:
        if obj is None:
            return self
        value: _T = getattr(obj.options, self.name)
        return value

    def __set__(self, obj: SpatialTransformer, value: _T) -> None:
        obj._replace_options(**{self.name: value})


def _remember(st: SpatialTransformer, params: Tensor) -> None:
    """Keep a forward pass's parameters on the module (``params``, ``last_params``), except while ``torch.export``
    traces it: an exported program has no module attributes to write, and torch warns about each one."""
    if not torch.compiler.is_exporting():
        st.params, st.last_params = params, params.detach()


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
            :func:`torchstn.warp`); 2D bilinear only; validated here, when the module is built.

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
        check_instance(localisation, "localisation", nn.Module, "a torch.nn.Module")
        check_transform(transform)
        _check_same_family(localisation, transform)
        self.localisation = localisation
        self.transform = transform
        self.output_size = None if output_size is None else check_size(output_size, "output_size", transform.ndim)
        self.options = SamplingOptions(mode, padding, fill, align_corners, backend, nonfinite, antialias)  # checked
        self.options.check_antialias(transform.ndim)
        self.combine: Combine = check_choice(combine, "combine", ("stack", "concat"))  # type: ignore[assignment]
        self.last_params: Tensor | None = None
        self.params: Tensor | None = None

    # The sampling options live in one validated object; the attributes read it, and setting one re-validates.
    mode: _Option[Mode] = _Option()
    padding: _Option[Padding] = _Option()
    fill: _Option[FillValue | None] = _Option()
    align_corners: _Option[bool] = _Option()
    backend: _Option[Backend] = _Option()
    nonfinite: _Option[NonFinite] = _Option()
    antialias: _Option[bool] = _Option()

    def _replace_options(self, **changes: Any) -> None:
        """Set sampling options by name: the new options object is validated before it replaces the old one."""
        options = dataclasses.replace(self.options, **changes)
        options.check_antialias(self.transform.ndim)
        self.options = options

    def sample_with(self, x: Tensor, params: Tensor) -> Tensor:
        """Warp ``x`` with given parameters using this module's settings.

        Args:
            x: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``).
            params: ``(B, P)``, or ``(B, N, P)`` for ``N`` heads (the same ``B`` as ``x``).

        Returns:
            ``(B, C, H', W')``; with heads ``(B, N, C, H', W')`` or ``(B, N*C, H', W')`` as ``combine`` says.
        """
        if isinstance(params, Tensor) and params.ndim not in (2, 3):
            raise ShapeError(f"params: expected (B, P) or (B, N, P), got {tuple(params.shape)}")
        if not isinstance(params, Tensor) or params.ndim == 2:
            return warp_params(x, params, self.transform, self.output_size, self.options)
        out = warp_params(x, params, self.transform, self.output_size, self.options, heads=True)  # (B, N, C, ...)
        return out.reshape(out.shape[0], -1, *out.shape[3:]) if self.combine == "concat" else out

    # Typed calls: ``st(x)`` is a Tensor and ``st(x, return_params=True)`` a pair (nn.Module types __call__ as Any).
    if TYPE_CHECKING:

        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: Literal[False] = False
        ) -> Tensor: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None, return_params: Literal[True]
        ) -> tuple[Tensor, Tensor]: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, *, return_params: Literal[True]
        ) -> tuple[Tensor, Tensor]: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
        ) -> Tensor | tuple[Tensor, Tensor]: ...
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
        ) -> Tensor | tuple[Tensor, Tensor]: ...

    @overload
    def forward(self, x: Tensor, loc_input: Tensor | None = None, return_params: Literal[False] = False) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, loc_input: Tensor | None, return_params: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward(
        self, x: Tensor, loc_input: Tensor | None = None, *, return_params: Literal[True]
    ) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward(
        self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]: ...
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
        _remember(self, params)
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
        _check_transformers(transformers)
        self.transformers = nn.ModuleList(transformers)
        self.combine: Combine = check_choice(combine, "combine", ("stack", "concat"))  # type: ignore[assignment]

    if TYPE_CHECKING:

        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: Literal[False] = False
        ) -> Tensor: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None, return_params: Literal[True]
        ) -> tuple[Tensor, list[Tensor]]: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, *, return_params: Literal[True]
        ) -> tuple[Tensor, list[Tensor]]: ...
        @overload
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
        ) -> Tensor | tuple[Tensor, list[Tensor]]: ...
        def __call__(
            self, x: Tensor, loc_input: Tensor | None = None, return_params: bool = False
        ) -> Tensor | tuple[Tensor, list[Tensor]]: ...

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
        _check_transformers(transformers)
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
        # What stage k samples with: the product of the matrices of stages 1..k, as the parameters of a family.
        self._composed: list[MatrixTransform] = _composed_families(transformers) if compose else []

    if TYPE_CHECKING:

        @overload
        def __call__(self, x: Tensor, return_params: Literal[False] = False) -> Tensor: ...
        @overload
        def __call__(self, x: Tensor, return_params: Literal[True]) -> tuple[Tensor, list[Tensor], Tensor | None]: ...
        @overload
        def __call__(
            self, x: Tensor, return_params: bool = False
        ) -> Tensor | tuple[Tensor, list[Tensor], Tensor | None]: ...
        def __call__(
            self, x: Tensor, return_params: bool = False
        ) -> Tensor | tuple[Tensor, list[Tensor], Tensor | None]: ...

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
        for st, family in zip(stages, self._composed, strict=True):
            transform: MatrixTransform = st.transform  # type: ignore[assignment]
            p = st.localisation(cur)
            _remember(st, p)
            params.append(p)
            amp = autocast_dtypes(x)
            if amp is None:
                m = transform.matrix(p, src_size=src_size)
                total = m if total is None else total @ m  # src_from_dst of the chain so far
            else:  # under autocast the product is formed in float32, as the grid is (see torchstn.sampling)
                with torch.autocast(amp.device_type, enabled=False):
                    m = transform.matrix(to_work_dtype(p, amp), src_size=src_size)
                    total = m if total is None else total @ m
            rows = total if family.projective else total[:, : family.ndim]
            cur = warp_params(x, rows.reshape(rows.shape[0], -1), family, st.output_size, st.options)
        return (cur, params, total) if return_params else cur


class _ComposedHomography(Homography):
    """A composed chain's product (whose last entry need not be 1), with the chain's ``eps``."""

    def __repr__(self) -> str:
        return f"ComposedHomography(eps={self.eps:g})"


def _check_transformers(transformers: object) -> None:
    """A composite's ``transformers``: a non-empty sequence (list, tuple, ``nn.ModuleList``) of
    :class:`SpatialTransformer` modules."""
    if not isinstance(transformers, list | tuple | nn.ModuleList):
        raise DTypeError(
            f"transformers: expected a list or tuple of SpatialTransformer modules, got {type(transformers).__name__}"
        )
    if len(transformers) == 0:
        raise OptionError("transformers: expected at least one SpatialTransformer")
    for i, st in enumerate(transformers):
        check_instance(st, f"transformers[{i}]", SpatialTransformer, "a SpatialTransformer")


def _check_same_family(localisation: nn.Module, transform: Transform) -> None:
    """The transform given to a :class:`SpatialTransformer` must be the family its localisation network regresses
    (when that network holds one :class:`~torchstn.modules.LocalisationHead`): the same class, the same number of
    parameters and the same identity (a thin-plate spline's control points), else the first forward would fail on
    the parameters' shape, or silently read them as another family's."""
    heads = [(name, m) for name, m in localisation.named_modules() if isinstance(m, LocalisationHead)]
    if len(heads) != 1:
        return
    name, head = heads[0]
    regressed = head.transform
    same = type(regressed) is type(transform) and regressed.num_params == transform.num_params
    if same:
        cpu = torch.device("cpu")  # on the CPU whatever the default device (a model may be built on "meta")
        same = torch.equal(
            regressed.identity_params(1, cpu, torch.float64), transform.identity_params(1, cpu, torch.float64)
        )
    if not same:
        where = "localisation" + (f".{name}" if name else "")
        raise OptionError(
            f"transform: SpatialTransformer was given {transform!r} ({transform.num_params} parameters) but its "
            f"localisation network regresses {regressed!r} ({regressed.num_params} parameters, {where}.transform); "
            "pass the same transform to both"
        )


def _composed_families(stages: Sequence[SpatialTransformer]) -> list[MatrixTransform]:
    """The family each stage's composed matrix is read as: affine rows until a projective stage, then the full
    homography, whose ``eps`` is the largest of the projective stages composed so far (each stage's own clamp
    holds for the product too; the chain never clamps less than any of its stages asked)."""
    families: list[MatrixTransform] = []
    eps: float | None = None
    for st in stages:
        t: MatrixTransform = st.transform  # type: ignore[assignment]
        if t.projective:
            eps = t.eps if eps is None else max(eps, t.eps)
        if eps is not None:
            families.append(_ComposedHomography(eps))
        else:
            families.append(Affine() if t.ndim == 2 else Affine3D())
    return families
