"""The paper's models, from a registry: ``create_model(name, **kw)``, ``list_models()``."""

from torchstn.models import common, cub, mnist, strips, svhn
from torchstn.models._registry import create_model, list_models, model_function, register_model, supported_kwargs
from torchstn.models.common import SingleChannelConv2d, STClassifier, make_transform, parameter_count
from torchstn.models.mnist import VolumeProjector

__all__ = [
    "STClassifier",
    "SingleChannelConv2d",
    "VolumeProjector",
    "common",
    "create_model",
    "cub",
    "list_models",
    "make_transform",
    "mnist",
    "model_function",
    "parameter_count",
    "register_model",
    "strips",
    "supported_kwargs",
    "svhn",
]
