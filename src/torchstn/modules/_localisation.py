"""Localisation networks: a regression head that starts at the identity, bounds, and ready-made backbones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torchstn._checks import check_size, check_tensor
from torchstn.errors import OptionError, ShapeError
from torchstn.transforms import Transform

__all__ = ["Bounds", "LocalisationHead", "LocalisationNet", "conv_localisation", "mlp_localisation"]


@dataclass(frozen=True)
class Bounds:
    """Bounded parameterisation of a transform's parameters, by role (see ``Transform.roles``).

    Users of spatial transformers report transformers that zoom out until the object vanishes, drift off the image
    or collapse; bounding the parameters rules those states out. Unbounded roles pass through unchanged.

    Attributes:
        translation: ``b``: translations become ``b * tanh(raw)``, in ``(-b, b)``.
        scale: ``(lo, hi)``: ``"scale"`` parameters become ``lo + (hi - lo) * sigmoid(raw)``, ``"log_scale"``
            parameters the same in log space. ``lo < 1 < hi`` so that the identity is reachable.
        point: ``b``: control-point coordinates (thin-plate spline) become ``b * tanh(raw)``.

    Example:
        >>> b = Bounds(translation=0.5, scale=(0.3, 1.2))
        >>> roles = ("scale", "translation", "translation")
        >>> p = torch.tensor([[1.0, 0.2, -0.1]])
        >>> torch.allclose(b.apply(b.invert(p, roles), roles), p)
        True
    """

    translation: float | None = None
    scale: tuple[float, float] | None = None
    point: float | None = None

    def __post_init__(self) -> None:
        for name in ("translation", "point"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise OptionError(f"{name}: expected a positive bound, got {v!r}")
        if self.scale is not None:
            lo, hi = self.scale
            if not 0 < lo < 1 < hi:
                raise OptionError(f"scale: expected (lo, hi) with 0 < lo < 1 < hi, got {self.scale!r}")

    def _range(self, role: str) -> tuple[str, float, float] | None:
        """(kind, lo, hi) for a role, or None when it is unbounded."""
        if role == "translation" and self.translation is not None:
            return ("tanh", -self.translation, self.translation)
        if role == "point" and self.point is not None:
            return ("tanh", -self.point, self.point)
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
            else:
                cols.append(rng[1] + (rng[2] - rng[1]) * torch.sigmoid(r))
        return torch.stack(cols, dim=-1)

    def invert(self, params: Tensor, roles: Sequence[str]) -> Tensor:
        """Raw values that :meth:`apply` maps to ``params`` (which must lie strictly inside the bounds)."""
        cols = []
        for i, role in enumerate(roles):
            p, rng = params[..., i], self._range(role)
            if rng is None:
                cols.append(p)
                continue
            _, lo, hi = rng
            if bool(((p <= lo) | (p >= hi)).any()):
                raise OptionError(f"init: parameter {i} ({role}) must lie inside the bounds ({lo:g}, {hi:g})")
            cols.append(torch.atanh(p / hi) if rng[0] == "tanh" else torch.logit((p - lo) / (hi - lo)))
        return torch.stack(cols, dim=-1)


class LocalisationHead(nn.Module):
    """The regression layer of a localisation network, initialised to output the identity (or a given placement).

    Its weight starts at zero and its bias at the initial parameters, as the paper prescribes, so at
    initialisation every spatial transformer is the identity whatever its input; the backbone starts to learn as
    soon as the weight moves off zero.

    Args:
        in_features: Size of the backbone's (flattened) features.
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
        in_features: int,
        transform: Transform,
        num_heads: int = 1,
        init: Tensor | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise OptionError(f"num_heads: expected at least 1, got {num_heads}")
        self.transform = transform
        self.num_heads = num_heads
        self.bounds = bounds
        p = transform.num_params
        start = transform.identity_params(num_heads) if init is None else torch.as_tensor(init).float()
        if start.ndim == 1:
            start = start.expand(num_heads, -1)
        check_tensor(start, "init", f"{num_heads},{p}")
        raw = start if bounds is None else bounds.invert(start, transform.roles)
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


class LocalisationNet(nn.Module):
    """A backbone followed by a :class:`LocalisationHead`: ``input -> features -> params``.

    Any module that maps the localisation input to ``(B, ...)`` features works as a backbone (features are
    flattened); pass ``feature_size`` or let it be found with one dry run on ``input_shape``.

    Args:
        backbone: Feature extractor.
        transform: Transform family whose parameters the head regresses.
        feature_size: Number of flattened features; inferred from ``input_shape`` when omitted.
        input_shape: ``(C, H, W)`` of one localisation input, used to infer ``feature_size``.
        num_heads, init, bounds: As in :class:`LocalisationHead`.
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
        if feature_size is None:
            if input_shape is None:
                raise OptionError("feature_size: give feature_size or input_shape to infer it")
            with torch.no_grad():
                was = backbone.training
                backbone.eval()
                feature_size = backbone(torch.zeros(1, *input_shape)).flatten(1).shape[1]
                backbone.train(was)
        self.backbone = backbone
        self.head = LocalisationHead(feature_size, transform, num_heads, init, bounds)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]


def mlp_localisation(
    input_shape: Sequence[int],
    transform: Transform,
    hidden: Sequence[int] = (32, 32, 32),
    num_heads: int = 1,
    init: Tensor | None = None,
    bounds: Bounds | None = None,
) -> LocalisationNet:
    """Fully connected localisation network: flatten, ``Linear + ReLU`` per hidden size, then the head.

    The paper's ST-FCN uses three hidden layers of 32 units (the default).

    Args:
        input_shape: ``(C, H, W)`` (or any shape) of one localisation input.
        transform: Transform family to regress.
        hidden: Hidden layer sizes.
        num_heads, init, bounds: As in :class:`LocalisationHead`.

    Example:
        >>> from torchstn.transforms import Affine
        >>> net = mlp_localisation((1, 28, 28), Affine())
        >>> net(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 6])
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    return LocalisationNet(nn.Sequential(*layers), transform, width, num_heads=num_heads, init=init, bounds=bounds)


def conv_localisation(
    input_shape: Sequence[int],
    transform: Transform,
    channels: Sequence[int] = (20, 20),
    kernel_size: int = 5,
    hidden: Sequence[int] = (20,),
    downsample: int = 1,
    pool: int = 2,
    stride: int = 1,
    num_heads: int = 1,
    init: Tensor | None = None,
    bounds: Bounds | None = None,
    channels_last: bool = True,
) -> LocalisationNet:
    """Small convolutional localisation network, covering the paper's variants.

    Layout: optional average-pool ``downsample``, then for each entry of ``channels`` a ``kernel_size``
    convolution + ReLU, with a ``pool`` max-pool after the first; then ``Linear + ReLU`` per ``hidden`` size and
    the identity-initialised head. ``stride`` applies to the first convolution.

    Paper variants (PAPER.md):

    * MNIST ST-CNN: ``downsample=2, channels=(20, 20), kernel_size=5, hidden=(20,)`` (the defaults but downsample).
    * SVHN: ``channels=(32, 32), kernel_size=5, hidden=(32, 32)``.
    * co-localisation: ``channels=(8,), kernel_size=9, stride=4, hidden=(8, 8)`` with :class:`Attention`.

    Args:
        input_shape: ``(C, H, W)`` of one localisation input.
        transform: Transform family to regress.
        channels: Output channels of each convolution.
        kernel_size: Convolution kernel size (unpadded).
        hidden: Fully connected hidden sizes.
        downsample: Average-pooling factor applied first (1: none).
        pool: Max-pooling factor after the first convolution (1: none).
        stride: Stride of the first convolution.
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
    """
    if len(input_shape) != 3:
        raise ShapeError(f"input_shape: expected (C, H, W), got {tuple(input_shape)!r}")
    check_size(tuple(input_shape[1:]), "input_shape", 2)
    layers: list[nn.Module] = []
    if downsample > 1:
        layers.append(nn.AvgPool2d(downsample))
    c_in = int(input_shape[0])
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, kernel_size, stride=stride if i == 0 else 1), nn.ReLU(inplace=True)]
        if i == 0 and pool > 1:
            layers.append(nn.MaxPool2d(pool))
        c_in = c
    layers.append(nn.Flatten())
    backbone = nn.Sequential(*layers)
    try:
        with torch.no_grad():
            width = backbone(torch.zeros(1, *input_shape)).shape[1]
    except RuntimeError as err:
        raise ShapeError(f"input_shape: {tuple(input_shape)} is too small for this localisation network") from err
    fc: list[nn.Module] = []
    for h in hidden:
        fc += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    net = LocalisationNet(nn.Sequential(*layers, *fc), transform, width, num_heads=num_heads, init=init, bounds=bounds)
    if channels_last:  # Module.to's documented memory_format keyword, missing from its type stubs
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net
