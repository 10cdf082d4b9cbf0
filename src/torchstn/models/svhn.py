"""The paper's SVHN models (section 4.2): a multi-digit sequence CNN with and without spatial transformers.

Architectures follow the paper's section 4.2. The baseline is the sequence CNN of Goodfellow et al. (2013), "Multi-digit
Number Recognition from Street View Imagery using Deep Convolutional Neural Networks", as the paper's baseline is;
where neither paper pins a detail down the choice is this library's and is documented here:

* Eight 5x5 convolutions with 48, 64, 128, 160, 192, 192, 192, 192 channels, "same" zero padding, ReLU, each
  followed by a 2x2 max-pool whose stride alternates 2, 1, 2, 1, ... so half of the layers keep the map size (the
  stride-1 pools pad one replicated row and column at the bottom and right). A 64x64 input ends as 192 x 4 x 4 =
  3072 features. Then two fully connected hidden layers of 3072 units (``fc``) and five independent 11-way linear
  classifiers (digits 0-9 and class 10, "no digit", as :data:`torchstn.data.svhn.NO_DIGIT`).
* Dropout on every hidden layer's output except the first convolution's; the classifiers read the dropped-out last
  hidden layer. Goodfellow et al. use maxout units in the first layer and subtractive normalisation after every
  pool; here every layer is a ReLU and ``batch_norm=True`` (after each convolution) is offered instead.
* Convolutions and hidden fully connected layers start from He-normal weights (ReLU gain) and zero biases, the
  weights of every layer that reads a dropped-out input scaled by ``sqrt(1 - dropout)`` (Hendrycks & Gimpel 2016,
  "Adjusting for dropout variance"): inverted dropout doubles the variance it passes on, which over nine dropout
  layers would blow training-mode logits up ~20x at initialisation. So the ten-layer stack keeps its activation
  scale in training mode and trains from scratch without normalisation; localisation networks keep their own
  initialisation (the regression layer at the identity).
* ST-CNN Single: one affine transformer on the input, localisation conv 32@5x5 -> maxpool 2 -> conv 32@5x5 ->
  FC 32 -> FC 32 -> regression (unpadded convolutions, ReLU), output at the input's size.
* ST-CNN Multi: an affine transformer before each of the first four convolutions, each with an FC 32 -> FC 32
  localisation network on the map it transforms (the input, then the outputs of layers 1-3); each samples its map
  at the same size. A transformer sits before that layer's dropout, so localisation networks see clean maps and no
  dropout runs inside them.
* ``width`` scales every channel and hidden count of the classifier (not of the localisation networks), for
  narrow variants on a CPU.

Training (appendix, reconstructed): SGD, batch 128, lr 0.01 x0.1 every 80k iterations, weight decay 5e-4,
localisation networks at 1/10 of the base rate (:func:`svhn_param_groups`). Targets and metrics:
:func:`sequence_loss` and :func:`sequence_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn._checks import check_tensor
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.models._registry import register_model
from torchstn.modules import SpatialTransformer, conv_localisation, localisation_param_groups, mlp_localisation
from torchstn.transforms import Affine

__all__ = [
    "CONV_CHANNELS",
    "FC_UNITS",
    "NUM_CLASSES",
    "SVHNNet",
    "sequence_error",
    "sequence_loss",
    "svhn_cnn",
    "svhn_param_groups",
    "svhn_st_cnn_multi",
    "svhn_st_cnn_single",
]

#: Channels of the eight convolutions (Goodfellow et al. 2013).
CONV_CHANNELS: tuple[int, ...] = (48, 64, 128, 160, 192, 192, 192, 192)
#: Units of the two fully connected hidden layers.
FC_UNITS: tuple[int, ...] = (3072, 3072)
#: Classes per position: digits 0-9 and 10, "no digit".
NUM_CLASSES = 11

# A factory for the transformer before convolution k: (in_channels, size) of the map it transforms -> module.
_STFactory = Callable[[int, int], nn.Module]


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def _pool(stride: int) -> nn.Module:
    """2x2 max-pool; with stride 1 a replicated row and column keep the size (exact for a max)."""
    if stride == 2:
        return nn.MaxPool2d(2, stride=2)
    return nn.Sequential(nn.ReplicationPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1))


def _init(module: nn.Module, keep: float = 1.0) -> None:
    """He-normal weights, scaled by ``sqrt(keep)`` when the layer reads a dropped-out input, and zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            with torch.no_grad():
                m.weight.mul_(keep**0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SVHNNet(nn.Module):
    """A sequence CNN: convolution blocks, optionally a spatial transformer before each, hidden FC layers, and one
    independent classifier per position.

    Args:
        blocks: The convolution blocks, in order.
        transformers: One module per block, run on the block's input (:class:`torch.nn.Identity` for none).
        hidden: Maps the last block's output to ``(B, F)`` features (flatten, fully connected layers, dropout).
        head: ``nn.Linear(F, num_digits * num_classes)``: one row block per position, so the positions' classifiers
            share nothing (the same as ``num_digits`` separate linear layers).
        num_digits: Number of positions.
        num_classes: Classes per position.

    Shape:
        Input ``(B, C, H, W)``; output logits ``(B, num_digits, num_classes)``.

    Example:
        >>> model = svhn_cnn(width=0.125)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 5, 11])
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        transformers: Sequence[nn.Module],
        hidden: nn.Module,
        head: nn.Linear,
        num_digits: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(transformers) != len(blocks):
            raise OptionError(f"transformers: expected one per block ({len(blocks)}), got {len(transformers)}")
        self.transformers = nn.ModuleList(transformers)
        self.blocks = nn.ModuleList(blocks)
        self.hidden = hidden
        self.head = head
        self.num_digits = num_digits
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        for st, block in zip(self.transformers, self.blocks, strict=True):
            x = block(st(x))
        logits: Tensor = self.head(self.hidden(x))  # (B, D * K)
        return logits.view(-1, self.num_digits, self.num_classes)  # (B, D, K)


def _build(
    input_size: int,
    num_digits: int,
    dropout: float,
    width: float,
    in_channels: int,
    num_classes: int,
    batch_norm: bool,
    transformers: dict[int, _STFactory] | None = None,
) -> SVHNNet:
    if input_size < 16:
        raise ShapeError(f"input_size: expected at least 16 (four stride-2 pools), got {input_size}")
    if not 0 <= dropout < 1:
        raise OptionError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    if not width > 0:
        raise OptionError(f"width: expected a positive float, got {width!r}")
    if num_digits < 1:
        raise OptionError(f"num_digits: expected at least 1, got {num_digits}")
    factories = {} if transformers is None else transformers
    blocks: list[nn.Module] = []
    sts: list[nn.Module] = []
    c_in, size = in_channels, input_size
    for k, c in enumerate(CONV_CHANNELS):
        c_out = _scaled(c, width)
        stride = 2 if k % 2 == 0 else 1
        layers: list[nn.Module] = []
        if k >= 2 and dropout > 0:  # drops the output of convolution k - 1 (>= 2nd); never the first one's
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Conv2d(c_in, c_out, 5, padding=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), _pool(stride)]
        block = nn.Sequential(*layers)
        _init(block, 1 - dropout if k >= 2 else 1.0)
        blocks.append(block)
        sts.append(factories[k](c_in, size) if k in factories else nn.Identity())
        c_in, size = c_out, size // stride
    hidden_layers: list[nn.Module] = [nn.Flatten()]
    features = c_in * size * size  # (B, C, 4, 4) for a 64x64 input
    for units in FC_UNITS:
        if dropout > 0:
            hidden_layers.append(nn.Dropout(dropout))
        u = _scaled(units, width)
        fc = nn.Linear(features, u)
        _init(fc, 1 - dropout)
        hidden_layers += [fc, nn.ReLU(inplace=True)]
        features = u
    if dropout > 0:
        hidden_layers.append(nn.Dropout(dropout))
    hidden = nn.Sequential(*hidden_layers)
    head = nn.Linear(features, num_digits * num_classes)
    with torch.no_grad():
        head.weight.mul_((1 - dropout) ** 0.5)
    return SVHNNet(blocks, sts, hidden, head, num_digits, num_classes)


@register_model
def svhn_cnn(
    input_size: int = 64,
    num_digits: int = 5,
    dropout: float = 0.5,
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = NUM_CLASSES,
    batch_norm: bool = False,
) -> SVHNNet:
    """The baseline sequence CNN (Goodfellow et al. 2013): 8 conv + 2 FC hidden layers, 5 softmax heads.

    Args:
        input_size: Side of the square input (64 or 128 in the paper); at least 16.
        num_digits: Number of positions (independent classifiers).
        dropout: Dropout probability on every hidden layer but the first convolution (0: none).
        width: Multiplier of every channel and hidden count (1.0: the paper's).
        in_channels: Input channels.
        num_classes: Classes per position (10 digits + "no digit").
        batch_norm: Batch normalisation after each convolution (not in the paper).

    Returns:
        An :class:`SVHNNet` mapping ``(B, in_channels, input_size, input_size)`` to logits
        ``(B, num_digits, num_classes)``.
    """
    return _build(input_size, num_digits, dropout, width, in_channels, num_classes, batch_norm)


@register_model
def svhn_st_cnn_single(
    input_size: int = 64,
    num_digits: int = 5,
    dropout: float = 0.5,
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = NUM_CLASSES,
    batch_norm: bool = False,
) -> SVHNNet:
    """ST-CNN Single: one affine transformer on the input, then the baseline CNN.

    The localisation network is conv 32@5x5 -> maxpool 2 -> conv 32@5x5 -> FC 32 -> FC 32 -> regression, on the
    full-resolution input; it is ``model.transformers[0]``. Arguments as in :func:`svhn_cnn`.

    Example:
        >>> model = svhn_st_cnn_single(width=0.125)
        >>> x = torch.rand(2, 3, 64, 64)
        >>> torch.allclose(model.transformers[0](x), x, atol=1e-5)  # the identity at initialisation
        True
    """

    def make(c: int, size: int) -> nn.Module:
        t = Affine()
        loc = conv_localisation((c, size, size), t, channels=(32, 32), kernel_size=5, hidden=(32, 32), pool=2)
        return SpatialTransformer(loc, t)

    return _build(input_size, num_digits, dropout, width, in_channels, num_classes, batch_norm, {0: make})


@register_model
def svhn_st_cnn_multi(
    input_size: int = 64,
    num_digits: int = 5,
    dropout: float = 0.5,
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = NUM_CLASSES,
    batch_norm: bool = False,
) -> SVHNNet:
    """ST-CNN Multi: an affine transformer before each of the first four convolutions.

    Each has an FC 32 -> FC 32 -> regression localisation network on the map it transforms (the input for the
    first, the outputs of convolution blocks 1-3 for the others); they are ``model.transformers[0:4]``. Arguments
    as in :func:`svhn_cnn`.
    """

    def make(c: int, size: int) -> nn.Module:
        t = Affine()
        return SpatialTransformer(mlp_localisation((c, size, size), t, hidden=(32, 32)), t)

    factories: dict[int, _STFactory] = dict.fromkeys(range(4), make)
    return _build(input_size, num_digits, dropout, width, in_channels, num_classes, batch_norm, factories)


def _check_sequence(logits: Tensor, labels: Tensor) -> None:
    dims = check_tensor(logits, "logits", "B,D,K")
    check_tensor(labels, "labels", "B,D", dims=dims, floating=False)
    if labels.dtype != torch.long:
        raise DTypeError(f"labels: expected class indices of dtype torch.long, got {labels.dtype}")


def sequence_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over positions of the per-position cross-entropy, averaged over the batch.

    The negative log-likelihood of the whole sequence under independent positions: every position counts,
    including the "no digit" padding (class 10) after the last digit.

    Args:
        logits: ``(B, D, K)``, e.g. ``(B, 5, 11)``.
        labels: ``(B, D)`` long class indices (digits 0-9, then 10 for "no digit").

    Returns:
        A scalar.

    Example:
        >>> logits = torch.zeros(2, 5, 11)  # uniform: log(11) per position
        >>> labels = torch.tensor([[1, 2, 10, 10, 10], [7, 10, 10, 10, 10]])
        >>> torch.allclose(sequence_loss(logits, labels), 5 * torch.log(torch.tensor(11.0)))
        True
    """
    _check_sequence(logits, labels)
    b, _, k = logits.shape
    return F.cross_entropy(logits.reshape(-1, k), labels.reshape(-1), reduction="sum") / b


def sequence_error(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of sequences with at least one wrong position: the paper's sequence error (x100 for %).

    A sequence counts as correct only when the arg-max class is right at every position, the "no digit" padding
    included: predicting "12" for "123" or "1234" for "123" are both errors.

    Args:
        logits: ``(B, D, K)``.
        labels: ``(B, D)`` long class indices.

    Returns:
        A scalar in [0, 1].

    Example:
        >>> labels = torch.tensor([[1, 2, 10, 10, 10], [3, 10, 10, 10, 10]])
        >>> logits = torch.nn.functional.one_hot(labels, 11).float()
        >>> sequence_error(logits, labels)
        tensor(0.)
        >>> logits[1, 1] = torch.nn.functional.one_hot(torch.tensor(4), 11)  # "34" for "3"
        >>> sequence_error(logits, labels)
        tensor(0.5000)
    """
    _check_sequence(logits, labels)
    wrong = (logits.argmax(dim=-1) != labels).any(dim=1)  # (B,)
    return wrong.float().mean()


def svhn_param_groups(
    model: nn.Module, lr: float, localisation_lr_scale: float = 0.1, **group_options: Any
) -> list[dict[str, Any]]:
    """Optimizer groups with the localisation networks at 1/10 of the base rate, as the paper trains SVHN models.

    Args:
        model: A model containing spatial transformers.
        lr: Base learning rate.
        localisation_lr_scale: Factor for the localisation networks (the paper: 0.1).
        **group_options: Extra options for both groups (``weight_decay=5e-4``, ...).

    Returns:
        ``[rest, localisation]`` groups, as :func:`torchstn.modules.localisation_param_groups`.
    """
    return localisation_param_groups(model, lr, localisation_lr_scale, **group_options)
