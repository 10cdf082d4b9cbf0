"""The paper's CUB-200-2011 birds models (section 4.3): parallel attention transformers feeding part networks.

Architectures follow the paper's section 4.3; the choices the paper leaves open are this library's:

* **Backbone.** The paper fine-tunes an ImageNet-pretrained Inception with batch normalisation. No weights are
  downloaded here: pass any ``nn.Module`` mapping ``(B, 3, crop, crop)`` images to ``(B, feature_dim)`` features
  or ``(B, feature_dim, h, w)`` maps (global-average-pooled), e.g. a torchvision Inception-v3 or ResNet-50 with its
  classifier replaced by ``nn.Identity()`` and your own pretrained weights loaded.
* **Parts.** ``N`` attention transformers (``(s, tx, ty)``: crop + translate + isotropic scale) sample the
  ``input_size`` image straight to ``crop_size`` crops (448 -> 224 in the paper), so the higher resolution costs
  the part networks nothing. Each crop feeds its own part network: the given backbone for the first part and a deep
  copy for each other (``share_backbone=True``: one network for all). Part features are concatenated and
  classified by one linear layer.
* **Localisation.** The paper uses an Inception network; the default here is a small CNN on an average-pooled
  copy of the input (112 px for 448 inputs): three 3x3 stride-2 convolutions (32, 64, 128 channels, ReLU), a 4x4
  adaptive average pool that keeps coarse positions, FC 128, then ONE regression head with ``num_heads=N`` (all
  transformers share the features). Pass ``localisation`` for another network (for example an Inception trunk
  wrapped in a :class:`~torchstn.modules.LocalisationNet` with ``num_heads=N``).
* **Initialisation.** The regression layer starts with the transformers tiling the image rather than at the
  identity (:func:`~torchstn.modules.tiling_params`, row-major): 2 -> 1x2 (left, right), 4 -> 2x2, in general the
  most nearly square ``rows x cols`` grid with ``rows <= cols``. With ``overlap=0`` and ``input_size = 2 *
  crop_size`` every crop is an exact pixel window of the input (scale 1/2, pixel centres on pixel centres). The
  windows are square (attention is isotropic), so a 1x2 tiling covers the middle half of the height.
  ``bounds`` (a :class:`~torchstn.modules.Bounds`) optionally keeps scale and translation in a range; the
  initial tiling must lie strictly inside it.
* **Training.** Localisation networks at 1e-4 of the base learning rate (:func:`cub_param_groups`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn._checks import check_tensor
from torchstn.errors import OptionError, ShapeError
from torchstn.models._registry import register_model
from torchstn.modules import Bounds, LocalisationNet, SpatialTransformer, localisation_param_groups, tiling_params
from torchstn.transforms import Attention

__all__ = [
    "CUBNet",
    "cub_2xst_cnn",
    "cub_4xst_cnn",
    "cub_cnn",
    "cub_localisation",
    "cub_param_groups",
    "cub_st_cnn",
    "tiling_grid",
]


def tiling_grid(n: int) -> tuple[int, int]:
    """The most nearly square ``(rows, cols)`` with ``rows * cols = n`` and ``rows <= cols``.

    Example:
        >>> [tiling_grid(n) for n in (1, 2, 3, 4, 6)]
        [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3)]
    """
    if n < 1:
        raise OptionError(f"num_transformers: expected at least 1, got {n}")
    rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    return rows, n // rows


def cub_localisation(
    num_transformers: int,
    init: Tensor | None = None,
    bounds: Bounds | None = None,
    in_channels: int = 3,
    size: int = 112,
) -> LocalisationNet:
    """The default localisation network of the birds models: a small CNN on a downsampled input.

    Layout: adaptive average pool to ``size`` x ``size`` (a plain average pool when the input is a multiple), three
    3x3 stride-2 convolutions with 32, 64, 128 channels and ReLU, adaptive average pool to 4x4, FC 128 + ReLU, and
    one :class:`~torchstn.modules.LocalisationHead` regressing ``num_transformers`` attention transforms.

    Args:
        num_transformers: Number of transforms ``N`` regressed by the shared head.
        init: Initial parameters ``(N, 3)``; default: the identity for each.
        bounds: Optional bounds of the parameters.
        in_channels: Input channels.
        size: Side the input is pooled to first (inputs smaller than that are used as they are).

    Returns:
        A network mapping ``(B, in_channels, H, W)`` to ``(B, N, 3)`` (``(B, 3)`` when ``N = 1``).

    Example:
        >>> net = cub_localisation(2, init=tiling_params(1, 2))
        >>> net(torch.rand(3, 3, 96, 96))[0].detach()  # the 1x2 tiling at initialisation
        tensor([[ 0.5000, -0.5000,  0.0000],
                [ 0.5000,  0.5000,  0.0000]])
    """
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(size)]
    c_in = in_channels
    for c in (32, 64, 128):
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c_in * 16, 128), nn.ReLU(inplace=True)]
    backbone = nn.Sequential(*layers)
    return LocalisationNet(backbone, Attention(), 128, num_heads=num_transformers, init=init, bounds=bounds)


class CUBNet(nn.Module):
    """Part networks on crops of the input, their features concatenated and classified by one linear layer.

    With a ``transformer``, its ``N`` attention windows give ``N`` crops of side ``crop_size``; without one the
    input is resized to ``crop_size`` (bilinear, antialiased; a no-op at that size) and read by a single network.

    Args:
        transformer: A :class:`~torchstn.modules.SpatialTransformer` returning ``(B, N, C, crop, crop)`` (or
            ``(B, C, crop, crop)`` for one window), or ``None``.
        parts: ``N`` part networks, or one shared by every crop.
        feature_dim: Features per part (after global average pooling of map outputs).
        num_classes: Number of classes.
        crop_size: Side of the crops (and of the resized input without a transformer).
        dropout: Dropout on the concatenated features before the classifier (0: none).

    Shape:
        Input ``(B, C, H, W)``; output logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        transformer: SpatialTransformer | None,
        parts: nn.ModuleList,
        feature_dim: int,
        num_parts: int,
        num_classes: int,
        crop_size: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(parts) not in (1, num_parts):
            raise OptionError(f"parts: expected 1 (shared) or {num_parts} part networks, got {len(parts)}")
        if not 0 <= dropout < 1:
            raise OptionError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.transformer = transformer
        self.parts = parts
        self.feature_dim = feature_dim
        self.num_parts = num_parts
        self.crop_size = crop_size
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(num_parts * feature_dim, num_classes)

    def crops(self, x: Tensor) -> Tensor:
        """The part networks' inputs ``(B, N, C, crop, crop)`` for images ``(B, C, H, W)``."""
        check_tensor(x, "x", "B,C,H,W")
        if self.transformer is None:
            size = (self.crop_size, self.crop_size)
            if tuple(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            return x.unsqueeze(1)  # (B, 1, C, crop, crop)
        out: Tensor = self.transformer(x)
        return out if out.ndim == 5 else out.unsqueeze(1)  # (B, N, C, crop, crop)

    def _features(self, net: nn.Module, x: Tensor) -> Tensor:
        f = net(x)
        if not isinstance(f, Tensor):
            raise ShapeError(
                f"backbone: expected it to return a tensor, got {type(f).__name__} (an Inception-v3 in training mode "
                "returns its auxiliary logits too: build it with aux_logits=False)"
            )
        if f.ndim > 2:
            f = f.mean(dim=tuple(range(2, f.ndim)))  # global average pool: (B, F)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise ShapeError(
                f"backbone: expected features (B, feature_dim={self.feature_dim}) or maps (B, {self.feature_dim}, "
                f"h, w), got {tuple(f.shape)}"
            )
        return f

    def forward(self, x: Tensor) -> Tensor:
        crops = self.crops(x)  # (B, N, C, h, w)
        b, n = crops.shape[:2]
        if len(self.parts) == 1:  # one network: read every crop in one batch
            feats = self._features(self.parts[0], crops.flatten(0, 1)).view(b, n * self.feature_dim)
        else:
            feats = torch.cat([self._features(net, crops[:, i]) for i, net in enumerate(self.parts)], dim=1)
        return self.classifier(self.dropout(feats))  # type: ignore[no-any-return]


def _parts(backbone: nn.Module, n: int, share: bool) -> nn.ModuleList:
    if not isinstance(backbone, nn.Module):
        raise OptionError(f"backbone: expected an nn.Module, got {type(backbone).__name__}")
    return nn.ModuleList([backbone] if share else [backbone] + [copy.deepcopy(backbone) for _ in range(n - 1)])


@register_model
def cub_st_cnn(
    backbone: nn.Module,
    feature_dim: int,
    num_transformers: int = 2,
    num_classes: int = 200,
    input_size: int = 448,
    crop_size: int = 224,
    localisation: nn.Module | None = None,
    share_backbone: bool = False,
    overlap: float = 0.0,
    bounds: Bounds | None = None,
    dropout: float = 0.0,
    antialias: bool = True,
) -> CUBNet:
    """N x ST-CNN: ``N`` parallel attention transformers on the input, each feeding its own part network.

    Args:
        backbone: Part network, ``(B, 3, crop, crop) -> (B, feature_dim)`` or ``(B, feature_dim, h, w)``; bring
            your own pretrained weights (nothing is downloaded). Deep-copied for every further part unless
            ``share_backbone``.
        feature_dim: Features per part.
        num_transformers: Number of transformers and parts ``N`` (2 or 4 in the paper).
        num_classes: Number of classes (200 species).
        input_size: Side of the input images (448 in the paper); sets the default localisation network's pooling.
        crop_size: Side of each crop (224 in the paper).
        localisation: Module mapping the input ``(B, 3, H, W)`` to ``(B, N, 3)`` attention parameters (``(B, 3)``
            for ``N = 1``); default :func:`cub_localisation` initialised to the tiling.
        share_backbone: One part network for every crop instead of one per crop.
        overlap: Enlarge the default initial windows by this fraction (see :func:`~torchstn.modules.tiling_params`).
        bounds: Optional bounds of the default localisation network's outputs.
        dropout: Dropout before the classifier.
        antialias: Average each crop pixel's source footprint (``warp(..., antialias=True)``), on by default: a
            crop wider than ``crop_size`` input pixels (the paper's 448 -> 224 crops of a whole image) otherwise
            reads a 2x2 neighbourhood and aliases. Chosen from the measurements in ``benchmarks/README.md``
            (quality and flicker) and the co-localisation cells of RESULTS.md (attention crops, with and without
            the option); the crops at the initial tiling are read 1:1 and do not change.

    Returns:
        A :class:`CUBNet` mapping ``(B, 3, input_size, input_size)`` to logits ``(B, num_classes)``; its
        ``transformer`` gives the crops.

    Example:
        >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> model = cub_st_cnn(backbone, 8, input_size=96, crop_size=48)
        >>> model(torch.rand(2, 3, 96, 96)).shape
        torch.Size([2, 200])
        >>> x = torch.rand(1, 3, 96, 96)
        >>> torch.allclose(model.crops(x)[:, 1], x[..., 24:72, 48:96], atol=1e-5)  # right tile at init
        True
    """
    if feature_dim < 1 or crop_size < 1 or input_size < 1:
        raise OptionError(
            f"feature_dim, crop_size, input_size: expected positive ints, got {feature_dim, crop_size, input_size}"
        )
    rows, cols = tiling_grid(num_transformers)
    if localisation is None:
        init = tiling_params(rows, cols, overlap)
        localisation = cub_localisation(num_transformers, init, bounds, size=min(112, input_size))
    st = SpatialTransformer(
        localisation, Attention(), output_size=(crop_size, crop_size), combine="stack", antialias=antialias
    )
    parts = _parts(backbone, num_transformers, share_backbone)
    return CUBNet(st, parts, feature_dim, num_transformers, num_classes, crop_size, dropout)


@register_model
def cub_2xst_cnn(backbone: nn.Module, feature_dim: int, **kwargs: Any) -> CUBNet:
    """2xST-CNN: :func:`cub_st_cnn` with two transformers (initially the left and right halves)."""
    return cub_st_cnn(backbone, feature_dim, num_transformers=2, **kwargs)


@register_model
def cub_4xst_cnn(backbone: nn.Module, feature_dim: int, **kwargs: Any) -> CUBNet:
    """4xST-CNN: :func:`cub_st_cnn` with four transformers (initially the 2x2 quadrants)."""
    return cub_st_cnn(backbone, feature_dim, num_transformers=4, **kwargs)


@register_model
def cub_cnn(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int = 200,
    crop_size: int = 224,
    dropout: float = 0.0,
) -> CUBNet:
    """The baseline: the backbone on the whole image, resized to ``crop_size`` when it is not already, + linear.

    Args:
        backbone: As in :func:`cub_st_cnn`.
        feature_dim: Its number of features.
        num_classes: Number of classes.
        crop_size: Side the backbone reads (224: feed 224 px images, or 448 px ones to be resized).
        dropout: Dropout before the classifier.

    Example:
        >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> cub_cnn(backbone, 8, crop_size=48)(torch.rand(2, 3, 96, 96)).shape
        torch.Size([2, 200])
    """
    if feature_dim < 1 or crop_size < 1:
        raise OptionError(f"feature_dim, crop_size: expected positive ints, got {feature_dim, crop_size}")
    return CUBNet(None, _parts(backbone, 1, True), feature_dim, 1, num_classes, crop_size, dropout)


def cub_param_groups(
    model: nn.Module, lr: float, localisation_lr_scale: float = 1e-4, **group_options: Any
) -> list[dict[str, Any]]:
    """Optimizer groups with the localisation networks at 1e-4 of the base rate, as the paper trains CUB models.

    Every parameter reached through a transformer's ``localisation`` goes in the second group: a custom
    localisation network that reuses modules of a part network would move them there too.

    Args:
        model: A model containing spatial transformers.
        lr: Base learning rate.
        localisation_lr_scale: Factor for the localisation networks (the paper: 1e-4).
        **group_options: Extra options for both groups.

    Returns:
        ``[rest, localisation]`` groups, as :func:`torchstn.modules.localisation_param_groups`.

    Example:
        >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> groups = cub_param_groups(cub_2xst_cnn(backbone, 8, input_size=96, crop_size=48), 0.1)
        >>> [g["lr"] for g in groups]
        [0.1, 1e-05]
    """
    return localisation_param_groups(model, lr, localisation_lr_scale, **group_options)
