"""Data: MNIST from offline sources, the paper's distorted datasets, SVHN and CUB-200-2011 loaders."""

from torchstn.data import cub, svhn
from torchstn.data.datasets import CACHE_VERSION, DistortedMNIST, default_cache_dir, generate, materialise
from torchstn.data.distort import (
    RECIPES,
    Batch,
    CoLocalisation,
    Elastic,
    MNISTAddition,
    Projected,
    Recipe,
    Rotated,
    RotatedTranslatedScaled,
    TextStrips,
    TranslatedCluttered,
    Volumetric,
    get_recipe,
)
from torchstn.data.mnist import MNIST, MNISTSplit, find_bundled_mnist, load_mnist, read_idx

__all__ = [
    "CACHE_VERSION",
    "MNIST",
    "RECIPES",
    "Batch",
    "CoLocalisation",
    "DistortedMNIST",
    "Elastic",
    "MNISTAddition",
    "MNISTSplit",
    "Projected",
    "Recipe",
    "Rotated",
    "RotatedTranslatedScaled",
    "TextStrips",
    "TranslatedCluttered",
    "Volumetric",
    "cub",
    "default_cache_dir",
    "find_bundled_mnist",
    "generate",
    "get_recipe",
    "load_mnist",
    "materialise",
    "read_idx",
    "svhn",
]
