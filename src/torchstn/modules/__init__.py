"""Modules: spatial transformers, localisation networks and the aids that keep training stable."""

from torchstn.modules._aids import identity_penalty, localisation_param_groups, tiling_params
from torchstn.modules._localisation import (
    Bounds,
    LocalisationHead,
    LocalisationNet,
    conv_localisation,
    mlp_localisation,
)
from torchstn.modules._transformer import ParallelSpatialTransformer, SerialSpatialTransformer, SpatialTransformer

__all__ = [
    "Bounds",
    "LocalisationHead",
    "LocalisationNet",
    "ParallelSpatialTransformer",
    "SerialSpatialTransformer",
    "SpatialTransformer",
    "conv_localisation",
    "identity_penalty",
    "localisation_param_groups",
    "mlp_localisation",
    "tiling_params",
]
