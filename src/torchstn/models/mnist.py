"""The paper's MNIST models: distorted MNIST, MNIST addition, co-localisation and the 3D transformer.

Architectures follow PAPER.md section 2 and appendix 5; choices the reconstructed appendix leaves open are this
library's and are documented here:

* Classifiers have three weight layers. FCN: two hidden fully connected layers + classifier. CNN: conv 9x9 ->
  maxpool 2 -> conv 7x7 -> maxpool 2 -> classifier, with "same" padding (unpadded convolutions do not fit the
  21x21 maps that follow 2x pooling of a 42x42 ST output), ReLU throughout.
* Every model of a column has the same parameter budget: the plain CNN's (32 and 32 channels) on that input.
  FCN widths and the classifier widths of ST models are the largest that fit the budget, localisation networks
  included. Where the localisation networks alone leave no room for a classifier of width 16 (the addition
  task's fully connected localisation nets on 2x42x42 inputs), the classifier gets the whole budget and the
  localisation networks come on top; :func:`parameter_count` reports every model's real total.
* ST-FCN localisation: three fully connected layers of 32 units. ST-CNN localisation: on a 2x downsampled input,
  conv 20@5x5 -> maxpool 2 -> conv 20@5x5 -> FC 20. The ST sits on the input; ``downsample=2`` average-pools its
  output 2x before the classifier (the paper does so for RTS and TC).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn.models._registry import register_model
from torchstn.modules import (
    Bounds,
    LocalisationNet,
    ParallelSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
    mlp_localisation,
)
from torchstn.transforms import Affine, Affine3D, Attention, Projective, Similarity, ThinPlateSpline, Transform

__all__ = [
    "STClassifier",
    "SingleChannelConv2d",
    "VolumeProjector",
    "cnn",
    "fcn",
    "make_transform",
    "parameter_count",
]

Shape = tuple[int, int, int]


def make_transform(name: str) -> Transform:
    """A transform from its short name: ``aff``, ``proj``, ``tps`` (4x4 grid), ``sim``, ``att``."""
    table: dict[str, Callable[[], Transform]] = {
        "aff": Affine,
        "proj": Projective,
        "tps": lambda: ThinPlateSpline((4, 4)),
        "sim": Similarity,
        "att": Attention,
    }
    if name not in table:
        raise ValueError(f"transform: expected one of {', '.join(table)}, got {name!r}")
    return table[name]()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fcn(input_shape: Sequence[int], num_classes: int, hidden: int) -> nn.Sequential:
    """Two hidden fully connected layers of ``hidden`` units and a linear classifier."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


class _NativeConv2d(torch.autograd.Function):
    """Stride-1 conv2d through PyTorch's native CPU kernels (``_slow_conv2d_*``) instead of oneDNN's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = list(padding), bias is not None
        kernel = list(weight.shape[-2:])
        return torch.ops.aten._slow_conv2d_forward(x, weight, kernel, bias, [1, 1], ctx.padding)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        kernel = list(weight.shape[-2:])
        gx, gw, gb = torch.ops.aten._slow_conv2d_backward(
            grad.contiguous(), x, weight, kernel, [1, 1], ctx.padding, mask
        )
        return gx, gw, gb, None


class SingleChannelConv2d(nn.Conv2d):
    """The classifier's first convolution: one input channel, stride 1, odd kernel, "same" padding.

    On CPU it runs through PyTorch's native kernels: oneDNN computes the input gradient of a one-channel
    convolution several times slower than its forward pass, and that gradient is exactly what a spatial
    transformer in front of the classifier adds to every step (``benchmarks/bench_train.py`` measures it).
    Elsewhere (GPU, ``torch.compile``) it is a plain ``nn.Conv2d``. Parameters and ``state_dict`` are the same.
    """

    def __init__(self, out_channels: int, kernel_size: int) -> None:
        super().__init__(1, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        padding = (int(self.padding[0]), int(self.padding[1]))
        return _NativeConv2d.apply(x, self.weight, self.bias, padding)  # type: ignore[no-any-return, no-untyped-call]


def cnn(input_shape: Sequence[int], num_classes: int, channels: tuple[int, int] = (32, 32)) -> nn.Sequential:
    """conv 9x9 -> maxpool 2 -> conv 7x7 -> maxpool 2 -> linear classifier, "same" padding, ReLU."""
    c, h, w = input_shape
    first = SingleChannelConv2d(channels[0], 9) if c == 1 else nn.Conv2d(c, channels[0], 9, padding="same")
    return nn.Sequential(
        first,
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 7, padding="same"),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels[1] * (h // 4) * (w // 4), num_classes),
    )


class STClassifier(nn.Module):
    """A spatial transformer (or several) on the input, optional average pooling, then a classifier.

    Args:
        transformer: A :class:`~torchstn.modules.SpatialTransformer` or a parallel container.
        classifier: Takes the (pooled) transformer output.
        downsample: Average-pooling factor after the transformer (1: none).
    """

    def __init__(self, transformer: nn.Module, classifier: nn.Module, downsample: int = 1) -> None:
        super().__init__()
        self.transformer = transformer
        self.classifier = classifier
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        y = self.transformer(x)
        if self.downsample > 1:
            y = F.avg_pool2d(y, self.downsample)
        return self.classifier(y)  # type: ignore[no-any-return]


def _count(make: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):  # no memory is allocated
        return parameter_count(make())


def _largest_within(make: Callable[[int], nn.Module], budget: int, lo: int = 1, hi: int = 4096) -> int:
    """Largest width whose module has at most ``budget`` parameters (at least ``lo``)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _count(lambda mid=mid: make(mid)) <= budget else (lo, mid - 1)  # type: ignore[misc]
    return lo


def _classifier_width(make_head: Callable[[int], nn.Module], budget: int, localisation: int) -> int:
    """Width of the classifier that fills ``budget`` beside ``localisation`` parameters (see the module doc)."""
    room = budget - localisation
    if room < _count(lambda: make_head(16)):
        room = budget
    return _largest_within(make_head, room)


def _budget(input_shape: Shape, num_classes: int) -> int:
    with torch.device("meta"):
        return parameter_count(cnn(input_shape, num_classes))


def _pooled(shape: Shape, downsample: int) -> Shape:
    return (shape[0], shape[1] // downsample, shape[2] // downsample)


def _st_fcn_loc(shape: Shape, t: Transform, heads: int = 1) -> nn.Module:
    return mlp_localisation(shape, t, hidden=(32, 32, 32), num_heads=heads)


def _st_cnn_loc(shape: Shape, t: Transform) -> nn.Module:
    return conv_localisation(shape, t, channels=(20, 20), kernel_size=5, hidden=(20,), downsample=2, pool=2)


def _build_st(
    kind: str,
    transform: str,
    input_shape: Shape,
    num_classes: int,
    downsample: int,
    budget: int | None,
) -> nn.Module:
    budget = _budget(input_shape, num_classes) if budget is None else budget
    inner = _pooled(input_shape, downsample)

    t = make_transform(transform)

    def make_loc() -> nn.Module:
        return _st_fcn_loc(input_shape, t) if kind == "fcn" else _st_cnn_loc(input_shape, t)

    def make_head(width: int) -> nn.Module:
        return fcn(inner, num_classes, width) if kind == "fcn" else cnn(inner, num_classes, (width, width))

    width = _classifier_width(make_head, budget, _count(make_loc))
    return STClassifier(SpatialTransformer(make_loc(), t), make_head(width), downsample)


def _plain(kind: str, input_shape: Shape, num_classes: int, budget: int | None) -> nn.Module:
    if kind == "cnn" and budget is None:
        return cnn(input_shape, num_classes)
    budget = _budget(input_shape, num_classes) if budget is None else budget
    if kind == "fcn":
        return fcn(input_shape, num_classes, _largest_within(lambda w: fcn(input_shape, num_classes, w), budget))
    width = _largest_within(lambda w: cnn(input_shape, num_classes, (w, w)), budget)
    return cnn(input_shape, num_classes, (width, width))


# --- distorted MNIST (Table 1 and TC) ---------------------------------------------------------------------------


@register_model
def fcn_baseline(
    input_shape: Shape = (1, 28, 28), num_classes: int = 10, budget: int | None = None, downsample: int = 1
) -> nn.Module:
    """FCN: two hidden layers sized to the column's budget. ``downsample`` pools a transformer's output, so a
    plain model has nothing to pool: it is accepted (and ignored) so that one config serves a whole column."""
    del downsample
    return _plain("fcn", input_shape, num_classes, budget)


@register_model
def cnn_baseline(
    input_shape: Shape = (1, 28, 28), num_classes: int = 10, budget: int | None = None, downsample: int = 1
) -> nn.Module:
    """CNN: conv 9x9 -> pool -> conv 7x7 -> pool -> classifier (32 and 32 channels, the budget). ``downsample``
    is accepted and ignored, as for :func:`fcn_baseline`."""
    del downsample
    return _plain("cnn", input_shape, num_classes, budget)


def _register_st(kind: str, transform: str) -> None:
    def build(
        input_shape: Shape = (1, 28, 28), num_classes: int = 10, downsample: int = 1, budget: int | None = None
    ) -> nn.Module:
        return _build_st(kind, transform, input_shape, num_classes, downsample, budget)

    build.__name__ = f"st_{kind}_{transform}"
    build.__doc__ = f"ST-{kind.upper()} with a {transform} transformer on the input (paper Table 1)."
    register_model(build)


for _kind in ("fcn", "cnn"):
    for _t in ("aff", "proj", "tps"):
        _register_st(_kind, _t)


# --- MNIST addition -------------------------------------------------------------------------------------------

_ADD_SHAPE: Shape = (2, 42, 42)


@register_model
def addition_fcn(budget: int | None = None) -> nn.Module:
    """FCN on the two-channel addition input (19 classes)."""
    return _plain("fcn", _ADD_SHAPE, 19, budget)


@register_model
def addition_cnn(budget: int | None = None) -> nn.Module:
    """CNN on the two-channel addition input (19 classes)."""
    return _plain("cnn", _ADD_SHAPE, 19, budget)


def _register_addition(transform: str, parallel: int) -> None:
    def build(budget: int | None = None) -> nn.Module:
        b = _budget(_ADD_SHAPE, 19) if budget is None else budget

        def make_transformer() -> nn.Module:
            sts = []
            for _ in range(parallel):
                t = make_transform(transform)
                sts.append(SpatialTransformer(_st_fcn_loc(_ADD_SHAPE, t), t))
            return sts[0] if parallel == 1 else ParallelSpatialTransformer(sts, combine="concat")

        def make_head(width: int) -> nn.Module:
            return fcn((2 * parallel, 42, 42), 19, width)

        width = _classifier_width(make_head, b, _count(make_transformer))
        return STClassifier(make_transformer(), make_head(width))

    prefix = "st" if parallel == 1 else f"{parallel}xst"
    build.__name__ = f"addition_{prefix}_fcn_{transform}"
    build.__doc__ = (
        f"MNIST addition, {parallel} parallel {transform} transformer(s), each seeing both channels; their outputs "
        "are concatenated on channels for the FCN."
    )
    register_model(build)


for _t in ("aff", "proj", "tps"):
    _register_addition(_t, 1)
    _register_addition(_t, 2)


# --- co-localisation ------------------------------------------------------------------------------------------


@register_model
def coloc_attention(
    input_shape: Shape = (1, 84, 84), output_size: tuple[int, int] = (28, 28), bounded: bool = True
) -> nn.Module:
    """Co-localisation: an attention ST (localisation: conv 8@9x9 stride 4 -> maxpool 2 -> FC 8 -> FC 8 -> FC 3)
    sampling a 28x28 crop for the MNIST encoder. It starts at a crop of the image centre at the crop's scale
    (``s = 28 / 84``) rather than the whole image, so its first crops already look like digits. With ``bounded``
    the scale stays in (0.2, 1.05) and the centre within 0.8 of the middle (:class:`~torchstn.modules.Bounds`):
    unbounded, the crop first wanders out to the whole image and beyond before it settles
    (docs/results/coloc-variants/)."""
    t = Attention()
    init = torch.tensor([output_size[-1] / input_shape[-1], 0.0, 0.0])
    bounds = Bounds(translation=0.8, scale=(0.2, 1.05)) if bounded else None
    loc = conv_localisation(
        input_shape, t, channels=(8,), kernel_size=9, stride=4, hidden=(8, 8), init=init, bounds=bounds
    )
    return SpatialTransformer(loc, t, output_size=output_size)


# --- 3D -------------------------------------------------------------------------------------------------------


class VolumeProjector(nn.Module):
    """A 3D affine ST that samples an output volume and flattens it over depth into a 2D image.

    Output ``(B, C, H', W')``: the mean over the sampled volume's depth, so a transformer that turns the digit to
    face the viewer yields a clean 2D digit.
    """

    def __init__(self, transformer: SpatialTransformer) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer(x).mean(dim=2)  # type: ignore[no-any-return]


@register_model
def st3d_aff(
    input_shape: tuple[int, int, int, int] = (1, 60, 60, 60),
    output_size: tuple[int, int, int] = (16, 42, 42),
    num_classes: int = 10,
) -> nn.Module:
    """3D transformer: Affine3D ST on the volume, projection over depth, then the CNN (appendix A.3)."""
    t = Affine3D()
    c = input_shape[0]
    backbone = nn.Sequential(
        nn.AvgPool3d(2),
        nn.Conv3d(c, 8, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Flatten(),
    )
    loc = LocalisationNet(backbone, t, input_shape=input_shape)
    st = SpatialTransformer(loc, t, output_size=output_size, mode="trilinear")
    return STClassifier(VolumeProjector(st), cnn((c, output_size[1], output_size[2]), num_classes))
