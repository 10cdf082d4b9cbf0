"""Localisation networks: a regression head that starts at the identity, bounds, and ready-made backbones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from torchstn._checks import check_choice, check_tensor
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.transforms import Transform

__all__ = ["Bounds", "LocalisationHead", "LocalisationNet", "conv_localisation", "mlp_localisation"]


PointMode = Literal["reflect", "tanh"]


def _reflect(raw: Tensor, bound: float) -> Tensor:
    """``raw`` itself inside ``[-bound, bound]``, reflected back into it (as off two mirrors) outside."""
    v = torch.remainder(raw + bound, 4.0 * bound)  # in [0, 4 bound): one period of the fold
    folded = torch.where(v <= 2.0 * bound, v - bound, 3.0 * bound - v)
    return torch.where(raw.abs() <= bound, raw, folded)


@dataclass(frozen=True)
class Bounds:
    """Bounded parameterisation of a transform's parameters, by role (see ``Transform.roles``).

    Users of spatial transformers report transformers that zoom out until the object vanishes, drift off the image
    or collapse; bounding the parameters rules those states out. Unbounded roles pass through unchanged.

    Control points (thin-plate spline) are bounded in the **closed** box ``[-b, b]``, because the common layouts
    put them on the image border: a ``ThinPlateSpline((4, 4))`` grid has its outer points at exactly ``+-1``, so
    ``Bounds(point=1.0)`` ("keep the control points inside the image") must start there. A squashing function
    such as ``b * tanh(raw)`` never reaches ``+-b``, and no smooth function reaches its bound with a non-zero
    slope, so the default ``point_mode="reflect"`` folds instead: a coordinate is ``raw`` itself inside
    ``[-b, b]`` and is reflected back off the bound outside it (a triangle wave of period ``4b``). The identity
    is then exact (the head's bias is the start itself), every value in ``[-b, b]`` is reached, and the slope is
    ``+-1`` everywhere, so a point on the edge is never stuck there. ``point_mode="tanh"`` keeps the smooth
    open map ``b * tanh(raw)`` (the parameterisation before the reflecting one, with the same numbers); its start
    must then lie strictly inside, as it does for layouts inset from the border
    (``ThinPlateSpline.fiducials(margin=0.05)`` with ``b = 1``).

    Attributes:
        translation: ``b``: translations become ``b * tanh(raw)``, in ``(-b, b)``.
        scale: ``(lo, hi)``: ``"scale"`` parameters become ``lo + (hi - lo) * sigmoid(raw)``, ``"log_scale"``
            parameters the same in log space. ``lo < 1 < hi`` so that the identity is reachable.
        point: ``b``: control-point coordinates stay in ``[-b, b]`` (see ``point_mode``).
        point_mode: ``"reflect"`` (default; closed, reaches the bound) or ``"tanh"`` (``b * tanh(raw)``, open).

    Example:
        >>> b = Bounds(translation=0.5, scale=(0.3, 1.2))
        >>> roles = ("scale", "translation", "translation")
        >>> p = torch.tensor([[1.0, 0.2, -0.1]])
        >>> torch.allclose(b.apply(b.invert(p, roles), roles), p)
        True
        >>> edge = Bounds(point=1.0)  # a control point on the border, then pushed past it
        >>> edge.apply(torch.tensor([1.0, 1.25, -1.5]), ("point",) * 3)
        tensor([ 1.0000,  0.7500, -0.5000])
    """

    translation: float | None = None
    scale: tuple[float, float] | None = None
    point: float | None = None
    point_mode: PointMode = "reflect"

    def __post_init__(self) -> None:
        for name in ("translation", "point"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                raise OptionError(f"{name}: expected a positive bound, got {v!r}")
            if v is not None and not math.isfinite(v):
                raise OptionError(f"{name}: expected a finite bound, got {v!r}")
        if self.scale is not None:
            if isinstance(self.scale, (str, bytes)) or not isinstance(self.scale, Sequence) or len(self.scale) != 2:
                raise OptionError(f"scale: expected (lo, hi) with 0 < lo < 1 < hi, got {self.scale!r}")
            lo, hi = self.scale
            if not 0 < lo < 1 < hi:
                raise OptionError(f"scale: expected (lo, hi) with 0 < lo < 1 < hi, got {self.scale!r}")
        check_choice(self.point_mode, "point_mode", ("reflect", "tanh"))

    def _range(self, role: str) -> tuple[str, float, float] | None:
        """(kind, lo, hi) for a role, or None when it is unbounded."""
        if role == "translation" and self.translation is not None:
            return ("tanh", -self.translation, self.translation)
        if role == "point" and self.point is not None:
            return (self.point_mode, -self.point, self.point)
        if role == "scale" and self.scale is not None:
            return ("sigmoid", *self.scale)
        if role == "log_scale" and self.scale is not None:
            return ("sigmoid", math.log(self.scale[0]), math.log(self.scale[1]))
        return None

    def apply(self, raw: Tensor, roles: Sequence[str]) -> Tensor:
        """Map raw regression outputs ``(..., P)`` to parameters ``(..., P)``."""
        cols = []
        for i, role in enumerate(roles):
            r, rng = raw[..., i], self._range(role)
            if rng is None:
                cols.append(r)
            elif rng[0] == "tanh":
                cols.append(rng[2] * torch.tanh(r))
            elif rng[0] == "reflect":
                cols.append(_reflect(r, rng[2]))
            else:
                cols.append(rng[1] + (rng[2] - rng[1]) * torch.sigmoid(r))
        return torch.stack(cols, dim=-1)

    def invert(self, params: Tensor, roles: Sequence[str]) -> Tensor:
        """Raw values that :meth:`apply` maps to ``params``.

        ``params`` must lie strictly inside the bounds, or inside or on them for reflected control points (whose
        raw values are the parameters themselves).
        """
        cols = []
        for i, role in enumerate(roles):
            p, rng = params[..., i], self._range(role)
            if rng is None:
                cols.append(p)
                continue
            kind, lo, hi = rng
            if kind == "reflect":
                if bool(((p < lo) | (p > hi)).any()):
                    raise OptionError(f"init: parameter {i} ({role}) must lie inside or on the bounds [{lo:g}, {hi:g}]")
                cols.append(p)
                continue
            if bool(((p <= lo) | (p >= hi)).any()):
                hint = (
                    "; point_mode='reflect' admits control points on the bound"
                    if role == "point" and bool(((p == lo) | (p == hi)).any())
                    else ""
                )
                raise OptionError(f"init: parameter {i} ({role}) must lie inside the bounds ({lo:g}, {hi:g}){hint}")
            cols.append(torch.atanh(p / hi) if kind == "tanh" else torch.logit((p - lo) / (hi - lo)))
        return torch.stack(cols, dim=-1)


class _LazyIdentityLinear(nn.LazyLinear):
    """A ``LazyLinear`` that materialises as the identity-initialised regression layer (zero weight, ``start`` bias).

    It becomes a plain ``nn.Linear`` on its first forward, as every lazy module does, so its state dict is that of
    the eager layer; ``reset_parameters`` draws nothing from the random generator.
    """

    def __init__(self, out_features: int, start: Tensor) -> None:
        super().__init__(out_features)
        self._start = start  # (out_features,), raw values

    def reset_parameters(self) -> None:
        if self.has_uninitialized_params() or self.in_features == 0:
            return
        with torch.no_grad():
            self.weight.zero_()
            self.bias.copy_(self._start)


class LocalisationHead(nn.Module):
    """The regression layer of a localisation network, initialised to output the identity (or a given placement).

    Its weight starts at zero and its bias at the initial parameters, as the paper prescribes, so at
    initialisation every spatial transformer is the identity whatever its input; the backbone starts to learn as
    soon as the weight moves off zero.

    Args:
        in_features: Size of the backbone's (flattened) features; ``None`` infers it on the first forward, as
            ``nn.LazyLinear`` does (the layer then starts at the identity all the same).
        transform: The transform family whose parameters are regressed.
        num_heads: Number of transforms regressed at once (parallel transformers sharing a backbone).
        init: Initial parameters, ``(num_params,)`` or ``(num_heads, num_params)``; default: the identity.
        bounds: Optional :class:`Bounds` applied to the raw outputs.

    Shape:
        Input ``(B, in_features)``; output ``(B, num_params)`` or ``(B, num_heads, num_params)`` when
        ``num_heads > 1``.
    """

    def __init__(
        self,
        in_features: int | None,
        transform: Transform,
        num_heads: int = 1,
        init: Tensor | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        super().__init__()
        if in_features is not None:
            _check_int(in_features, "in_features", 1)
        if not isinstance(transform, Transform):
            raise DTypeError(f"transform: expected a torchstn Transform, got {type(transform).__name__}")
        _check_int(num_heads, "num_heads", 1)
        if bounds is not None and not isinstance(bounds, Bounds):
            raise DTypeError(f"bounds: expected a Bounds or None, got {type(bounds).__name__}")
        self.transform = transform
        self.num_heads = num_heads
        self.bounds = bounds
        p = transform.num_params
        start = transform.identity_params(num_heads) if init is None else torch.as_tensor(init).float()
        if start.ndim == 1:
            start = start.expand(num_heads, -1)
        check_tensor(start, "init", f"{num_heads},{p}")
        raw = start if bounds is None else bounds.invert(start, transform.roles)
        self.linear: nn.Linear
        if in_features is None:
            self.linear = _LazyIdentityLinear(num_heads * p, raw.reshape(-1).clone())
        else:
            self.linear = nn.Linear(in_features, num_heads * p)
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.bias.copy_(raw.reshape(-1))

    def forward(self, features: Tensor) -> Tensor:
        raw = self.linear(features.flatten(1))  # (B, heads * P)
        if self.num_heads > 1:
            raw = raw.view(-1, self.num_heads, self.transform.num_params)  # (B, heads, P)
        return raw if self.bounds is None else self.bounds.apply(raw, self.transform.roles)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}, num_heads={self.num_heads}, bounds={self.bounds}"


def _is_lazy(module: nn.Module) -> bool:
    """Whether any submodule still has parameters or buffers that a first forward must materialise."""
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in module.modules())


class LocalisationNet(nn.Module):
    """A backbone followed by a :class:`LocalisationHead`: ``input -> features -> params``.

    Any module that maps the localisation input to ``(B, ...)`` features works as a backbone (features are
    flattened). The head's input size is ``feature_size``; or found with one dry run on ``input_shape``; or,
    when neither is given, inferred on the first forward (the head is then lazy, as ``nn.LazyLinear``; the
    backbone may hold lazy modules too). A lazy network is materialised by a dry run (in eval mode, without
    gradients) on the first sample of its first input, just before that forward; run one batch through it
    before counting its parameters, exporting or compiling it. The parameters keep their identity when they
    materialise, so an optimizer built before the first forward trains them.

    Args:
        backbone: Feature extractor.
        transform: Transform family whose parameters the head regresses.
        feature_size: Number of flattened features; inferred when omitted.
        input_shape: ``(C, H, W)`` (any shape without the batch) of one localisation input, used to infer
            ``feature_size`` at construction.
        num_heads, init, bounds: As in :class:`LocalisationHead`.

    Example:
        >>> from torchstn.transforms import Affine
        >>> net = LocalisationNet(nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2)), Affine())
        >>> net(torch.rand(2, 3, 16, 16)).shape  # the first forward infers 3 channels in, 16 features
        torch.Size([2, 6])
        >>> net.head.linear.in_features
        16
    """

    def __init__(
        self,
        backbone: nn.Module,
        transform: Transform,
        feature_size: int | None = None,
        input_shape: Sequence[int] | None = None,
        num_heads: int = 1,
        init: Tensor | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise DTypeError(f"backbone: expected an nn.Module, got {type(backbone).__name__}")
        if feature_size is not None:
            _check_int(feature_size, "feature_size", 1)  # not left to the head, whose message says in_features
        if feature_size is None and input_shape is not None:
            shape = _check_ints(input_shape, "input_shape", 1)
            was = backbone.training
            try:
                with torch.no_grad():
                    backbone.eval()
                    feature_size = int(backbone(torch.zeros(1, *shape)).flatten(1).shape[1])
            except RuntimeError as err:
                raise ShapeError(f"input_shape: the backbone cannot run on an input of {shape}: {err}") from err
            finally:
                backbone.train(was)
        self.backbone = backbone
        self.head = LocalisationHead(feature_size, transform, num_heads, init, bounds)
        self._memory_format: torch.memory_format | None = None
        # A flag rather than a hook handle, which a deep copy would share with the original.
        self._pending = _is_lazy(self)
        if self._pending:
            self.register_forward_pre_hook(LocalisationNet._materialise)

    @staticmethod
    def _materialise(module: nn.Module, args: tuple[object, ...]) -> None:
        """Forward pre-hook of a lazy network: a dry run on the first sample materialises every lazy module."""
        assert isinstance(module, LocalisationNet)
        if not module._pending:
            return
        x = args[0] if args else None
        if _is_lazy(module) and isinstance(x, Tensor):
            with torch.inference_mode(False), torch.no_grad():  # parameters usable with autograd later
                was = module.training
                module.eval()
                try:
                    module.head(module.backbone(x[:1].clone()))  # a clone: x may be an inference tensor
                except RuntimeError as err:
                    raise ShapeError(
                        f"x: this localisation network cannot run on an input of {tuple(x.shape)}: {err}"
                    ) from err
                finally:
                    module.train(was)
        if not _is_lazy(module):
            if module._memory_format is not None:
                module.to(memory_format=module._memory_format)  # type: ignore[call-overload]
            module._pending = False

    def _set_memory_format(self, memory_format: torch.memory_format) -> None:
        """Store the weights in ``memory_format``, now or (for a lazy network) once they are materialised."""
        self._memory_format = memory_format
        if not self._pending:  # Module.to's documented memory_format keyword, missing from its stubs
            self.to(memory_format=memory_format)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]


def _check_int(value: object, name: str, minimum: int) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise OptionError(f"{name}: expected an int of at least {minimum}, got {value!r}")
    return int(value)


def _check_ints(values: object, name: str, minimum: int, length: int | None = None) -> tuple[int, ...]:
    """A sequence of ints (``length`` of them, when given), each at least ``minimum``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise DTypeError(f"{name}: expected a sequence of ints, got {values!r}")
    if length is not None and len(values) != length:
        raise ShapeError(f"{name}: expected {length} values, got {len(values)}: {tuple(values)!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DTypeError(f"{name}: expected ints, got {type(v).__name__} in {tuple(values)!r}")
        if v < minimum:
            raise OptionError(f"{name}: every value must be at least {minimum}, got {tuple(values)!r}")
    return tuple(int(v) for v in values)


def _per_layer(value: object, name: str, n: int, minimum: int, only_first: bool) -> tuple[int, ...]:
    """One int per convolution: a sequence of ``n``, or an int for every layer (or, ``only_first``, the first)."""
    if isinstance(value, int) and not isinstance(value, bool):
        v = _check_int(value, name, minimum)
        return (v,) + ((1,) if only_first else (v,)) * (n - 1)
    return _check_ints(value, name, minimum, n)


def mlp_localisation(
    input_shape: Sequence[int] | None = None,
    transform: Transform | None = None,
    hidden: Sequence[int] = (32, 32, 32),
    num_heads: int = 1,
    init: Tensor | None = None,
    bounds: Bounds | None = None,
) -> LocalisationNet:
    """Fully connected localisation network: flatten, ``Linear + ReLU`` per hidden size, then the head.

    The paper's ST-FCN uses three hidden layers of 32 units (the default).

    Args:
        input_shape: ``(C, H, W)`` (or any shape) of one localisation input; ``None`` infers it on the first
            forward (the first layer is then an ``nn.LazyLinear``; see :class:`LocalisationNet`).
        transform: Transform family to regress (required).
        hidden: Hidden layer sizes.
        num_heads, init, bounds: As in :class:`LocalisationHead`.

    Example:
        >>> from torchstn.transforms import Affine
        >>> net = mlp_localisation((1, 28, 28), Affine())
        >>> net(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 6])
        >>> mlp_localisation(transform=Affine())(torch.rand(5, 1, 28, 28)).shape  # input size found lazily
        torch.Size([5, 6])
    """
    transform = _required_transform(transform)
    sizes = _check_ints(hidden, "hidden", 1)
    layers: list[nn.Module] = [nn.Flatten()]
    width: int | None = None if input_shape is None else math.prod(_check_ints(input_shape, "input_shape", 1))
    for h in sizes:
        layers += [nn.LazyLinear(h) if width is None else nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    return LocalisationNet(nn.Sequential(*layers), transform, width, num_heads=num_heads, init=init, bounds=bounds)


def _required_transform(transform: object) -> Transform:
    if transform is None:
        raise OptionError("transform: the transform family to regress is required")
    if not isinstance(transform, Transform):
        raise DTypeError(f"transform: expected a torchstn Transform, got {type(transform).__name__}")
    return transform


def conv_localisation(
    input_shape: Sequence[int] | None = None,
    transform: Transform | None = None,
    channels: Sequence[int] = (20, 20),
    kernel_size: int | Sequence[int] = 5,
    hidden: Sequence[int] = (20,),
    downsample: int = 1,
    pool: int | Sequence[int] = 2,
    stride: int | Sequence[int] = 1,
    num_heads: int = 1,
    init: Tensor | None = None,
    bounds: Bounds | None = None,
    channels_last: bool = True,
) -> LocalisationNet:
    """Small convolutional localisation network, covering the paper's variants and the PyTorch STN tutorial's.

    Layout: optional average-pool ``downsample``; then for each entry of ``channels`` an unpadded convolution +
    ReLU, followed by a max-pool where that layer's pooling factor is above 1; then ``Linear + ReLU`` per
    ``hidden`` size and the identity-initialised head. ``kernel_size``, ``pool`` and ``stride`` take one value
    per convolution, or an int: an int ``kernel_size`` applies to every convolution, an int ``pool`` or
    ``stride`` to the first only (the paper's networks pool once, after the first convolution). (ReLU and
    max-pooling commute, so pooling before the ReLU, as the tutorial writes it, is the same function.)

    Paper variants (Jaderberg et al. 2015, section 4 and appendix A) and the tutorial:

    * MNIST ST-CNN: ``downsample=2, channels=(20, 20), kernel_size=5, hidden=(20,)`` (the defaults but downsample).
    * SVHN: ``channels=(32, 32), kernel_size=5, hidden=(32, 32)``.
    * co-localisation: ``channels=(8,), kernel_size=9, stride=4, hidden=(8, 8)`` with :class:`Attention`.
    * the PyTorch STN tutorial (28x28 MNIST): ``channels=(8, 10), kernel_size=(7, 5), pool=(2, 2),
      hidden=(32,)``: conv 8@7x7 -> maxpool 2 -> conv 10@5x5 -> maxpool 2 -> FC 32 -> FC 6.

    Args:
        input_shape: ``(C, H, W)`` of one localisation input; ``None`` infers it on the first forward (the first
            convolution and the first linear layer are then lazy; see :class:`LocalisationNet`).
        transform: Transform family to regress (required).
        channels: Output channels of each convolution (at least one).
        kernel_size: Convolution kernel size (unpadded), per convolution or one for all.
        hidden: Fully connected hidden sizes.
        downsample: Average-pooling factor applied first (1: none).
        pool: Max-pooling factor after each convolution (1: none), or an int for the first convolution only.
        stride: Stride of each convolution, or an int for the first convolution only.
        num_heads, init, bounds: As in :class:`LocalisationHead`.
        channels_last: Store the convolution weights in channels-last layout. On CPU oneDNN then runs these
            small convolutions and the max-pool in that layout, and a training step of the MNIST ST-CNN's
            localisation network takes about a third less time (``benchmarks/results/train.md``); the values are
            the same up to rounding.

    Example:
        >>> from torchstn.transforms import Affine
        >>> net = conv_localisation((1, 42, 42), Affine(), downsample=2)
        >>> net(torch.rand(3, 1, 42, 42)).shape
        torch.Size([3, 6])
        >>> tutorial = conv_localisation((1, 28, 28), Affine(), (8, 10), kernel_size=(7, 5), pool=(2, 2), hidden=(32,))
        >>> sum(p.numel() for p in tutorial.parameters())
        5520
    """
    transform = _required_transform(transform)
    convs = _check_ints(channels, "channels", 1)
    if not convs:
        raise ShapeError("channels: expected at least one convolution, got ()")
    n = len(convs)
    kernels = _per_layer(kernel_size, "kernel_size", n, 1, only_first=False)
    pools = _per_layer(pool, "pool", n, 1, only_first=True)
    strides = _per_layer(stride, "stride", n, 1, only_first=True)
    sizes = _check_ints(hidden, "hidden", 1)
    downsample = _check_int(downsample, "downsample", 1)
    if not isinstance(channels_last, bool):
        raise DTypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
    shape: tuple[int, ...] | None = None
    if input_shape is not None:
        shape = _check_ints(input_shape, "input_shape", 1)
        if len(shape) != 3:
            raise ShapeError(f"input_shape: expected (C, H, W), got {shape!r}")
    layers: list[nn.Module] = []
    if downsample > 1:
        layers.append(nn.AvgPool2d(downsample))
    c_in = None if shape is None else shape[0]
    for c, k, p, st in zip(convs, kernels, pools, strides, strict=True):
        layers += [nn.LazyConv2d(c, k, stride=st) if c_in is None else nn.Conv2d(c_in, c, k, stride=st)]
        layers.append(nn.ReLU(inplace=True))
        if p > 1:
            layers.append(nn.MaxPool2d(p))
        c_in = c
    layers.append(nn.Flatten())
    width: int | None = None
    if shape is not None:
        try:
            with torch.no_grad():
                width = int(nn.Sequential(*layers)(torch.zeros(1, *shape)).shape[1])
        except RuntimeError as err:
            raise ShapeError(f"input_shape: {shape} is too small for this localisation network") from err
    fc: list[nn.Module] = []
    for h in sizes:
        fc += [nn.LazyLinear(h) if width is None else nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    net = LocalisationNet(nn.Sequential(*layers, *fc), transform, width, num_heads=num_heads, init=init, bounds=bounds)
    if channels_last:
        net._set_memory_format(torch.channels_last)
    return net
