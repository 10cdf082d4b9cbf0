"""The paper's models, from a registry: ``create_model(name, **kw)``, ``list_models()``."""

from torchstn.models import cub, mnist, svhn
from torchstn.models._registry import create_model, list_models, register_model
from torchstn.models.mnist import STClassifier, VolumeProjector, make_transform, parameter_count

__all__ = [
    "STClassifier",
    "VolumeProjector",
    "create_model",
    "cub",
    "list_models",
    "make_transform",
    "mnist",
    "parameter_count",
    "register_model",
    "svhn",
]
