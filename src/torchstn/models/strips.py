"""Text-strip recognisers (issue 15): a small sequence CNN, and the same after a thin-plate-spline rectifier.

The task is :class:`~torchstn.data.distort.TextStrips`: ``1 x 32 x 100`` strips of 3-5 MNIST digits, bent and in
perspective, labelled ``(5,)`` with 10 for "no digit". Both models are :class:`~torchstn.models.svhn.SVHNNet`
instances, the SVHN sequence models' container: convolution blocks, an optional transformer before the first,
fully connected hidden layers and one independent 11-way classifier per position (the SVHN heads), trained with
:func:`~torchstn.models.svhn.sequence_loss` and scored by sequence accuracy (every position right).

* ``strip_cnn``: three 3x3 convolution blocks (``channels``, "same" padding, batch norm, ReLU, 2x2 max-pool),
  a ``1 x 32 x 100`` input ending as ``C x 4 x 12``; one hidden layer of ``hidden`` units; 5 heads.
* ``strip_tps_cnn``: a :class:`~torchstn.modules.SpatialTransformer` with the ASTER fiducials
  (:meth:`ThinPlateSpline.fiducials <torchstn.transforms.ThinPlateSpline.fiducials>`, ``k = 20``, margin 0.05)
  in front of the same recogniser. Its localisation network is small and convolutional, on the input average-pooled
  by 2 (``16 x 50``): conv 8@3x3 -> max-pool 2 -> conv 16@3x3 -> max-pool 2 -> FC 64 -> the 40 source
  coordinates, starting at the identity (zero weights, the fiducials as bias), so the untrained model is exactly
  ``strip_cnn`` on an unwarped input. The output has the input's size. Control points are bounded to the image
  (``Bounds(point=1.0)``), as ASTER bounds them with a ``tanh``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from torchstn.errors import OptionError, ShapeError
from torchstn.models._registry import register_model
from torchstn.models.svhn import NUM_CLASSES, SVHNNet
from torchstn.modules import Bounds, SpatialTransformer, conv_localisation
from torchstn.transforms import ThinPlateSpline

__all__ = ["strip_cnn", "strip_tps_cnn"]


def _build(
    input_shape: Sequence[int],
    channels: Sequence[int],
    hidden: int,
    dropout: float,
    num_digits: int,
    num_classes: int,
    transformer: nn.Module | None,
) -> SVHNNet:
    c, h, w = (int(s) for s in input_shape)
    if len(channels) < 1:
        raise OptionError("channels: expected at least one convolution block, got ()")
    down = 2 ** len(channels)
    if h < down or w < down:
        raise ShapeError(f"input_shape: {tuple(input_shape)} is too small for {len(channels)} stride-2 pools")
    if not 0 <= dropout < 1:
        raise OptionError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    blocks: list[nn.Module] = []
    for c_out in channels:
        blocks.append(
            nn.Sequential(
                nn.Conv2d(c, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )
        )
        c, h, w = c_out, h // 2, w // 2
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    sts = [nn.Identity() if transformer is None else transformer] + [nn.Identity()] * (len(blocks) - 1)
    head = nn.Linear(hidden, num_digits * num_classes)
    return SVHNNet(blocks, sts, nn.Sequential(*layers), head, num_digits, num_classes)


@register_model
def strip_cnn(
    input_shape: Sequence[int] = (1, 32, 100),
    channels: Sequence[int] = (16, 32, 64),
    hidden: int = 256,
    dropout: float = 0.0,
    num_digits: int = 5,
    num_classes: int = NUM_CLASSES,
) -> SVHNNet:
    """The text-strip sequence CNN: 3x3 conv blocks, one hidden layer, ``num_digits`` softmax heads.

    Args:
        input_shape: ``(C, H, W)`` of a strip; ``H`` and ``W`` at least ``2 ** len(channels)``.
        channels: Output channels of each block (conv 3x3, batch norm, ReLU, 2x2 max-pool).
        hidden: Units of the hidden fully connected layer.
        dropout: Dropout after the hidden layer (0: none).
        num_digits: Positions (independent classifiers).
        num_classes: Classes per position (10 digits + "no digit").

    Returns:
        An :class:`~torchstn.models.svhn.SVHNNet` mapping ``(B, C, H, W)`` to logits ``(B, num_digits,
        num_classes)``.

    Example:
        >>> strip_cnn()(torch.rand(2, 1, 32, 100)).shape
        torch.Size([2, 5, 11])
    """
    return _build(input_shape, channels, hidden, dropout, num_digits, num_classes, None)


@register_model
def strip_tps_cnn(
    input_shape: Sequence[int] = (1, 32, 100),
    channels: Sequence[int] = (16, 32, 64),
    hidden: int = 256,
    dropout: float = 0.0,
    num_digits: int = 5,
    num_classes: int = NUM_CLASSES,
    fiducials: int = 20,
    margin: float = 0.05,
) -> SVHNNet:
    """``strip_cnn`` after a thin-plate-spline rectifier with the ASTER fiducial layout (``model.transformers[0]``).

    Args:
        input_shape, channels, hidden, dropout, num_digits, num_classes: As in :func:`strip_cnn`.
        fiducials: Number of control points (even; half on the top edge, half on the bottom).
        margin: Inset of the fiducials from the border (ASTER: 0.05).

    Returns:
        An :class:`~torchstn.models.svhn.SVHNNet`; ``model.transformers[0]`` is the
        :class:`~torchstn.modules.SpatialTransformer`, the identity at initialisation.

    Example:
        >>> model = strip_tps_cnn()
        >>> x = torch.rand(2, 1, 32, 100)
        >>> torch.allclose(model.transformers[0](x), x, atol=1e-5)
        True
    """
    c, h, w = (int(s) for s in input_shape)
    tps = ThinPlateSpline.fiducials(fiducials, margin)
    loc = conv_localisation(
        (c, h, w),
        tps,
        channels=(8, 16),
        kernel_size=3,
        hidden=(64,),
        downsample=2,
        pool=(2, 2),
        bounds=Bounds(point=1.0),
    )
    st = SpatialTransformer(loc, tps)
    return _build(input_shape, channels, hidden, dropout, num_digits, num_classes, st)
