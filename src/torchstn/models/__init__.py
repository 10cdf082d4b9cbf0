"""The paper's models, from a registry: ``create_model(name, pretrained=..., **kw)``, ``list_models()``,
``list_pretrained()``."""

from torchstn.models import common, cub, mnist, pretrained, strips, svhn
from torchstn.models._registry import create_model, list_models, model_function, register_model, supported_kwargs
from torchstn.models.common import (
    LayerMacs,
    MaxPool2x2,
    SingleChannelConv2d,
    STClassifier,
    count_macs,
    make_transform,
    parameter_count,
)
from torchstn.models.mnist import VolumeProjector
from torchstn.models.pretrained import PretrainedWeights, list_pretrained

__all__ = [
    "LayerMacs",
    "MaxPool2x2",
    "PretrainedWeights",
    "STClassifier",
    "SingleChannelConv2d",
    "VolumeProjector",
    "common",
    "count_macs",
    "create_model",
    "cub",
    "list_models",
    "list_pretrained",
    "make_transform",
    "mnist",
    "model_function",
    "parameter_count",
    "pretrained",
    "register_model",
    "strips",
    "supported_kwargs",
    "svhn",
]
