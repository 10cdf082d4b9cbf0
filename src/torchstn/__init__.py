"""torchstn: Spatial Transformer Networks for PyTorch.

Convention: normalised coordinates in [-1, 1], ``(x, y[, z])`` order, transforms map target (output) points to
source (input) points, ``align_corners=False`` by default. See :mod:`torchstn.geometry`.
"""

from torchstn import errors, geometry, modules, transforms
from torchstn.errors import DTypeError, NonFiniteError, OptionError, ShapeError, STNError
from torchstn.geometry import (
    affine_grid,
    compose,
    invert,
    normalized_to_pixel,
    pixel_to_normalized,
    projective_grid,
    transform_points,
)
from torchstn.modules import (
    Bounds,
    LocalisationHead,
    LocalisationNet,
    ParallelSpatialTransformer,
    SerialSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
    identity_penalty,
    localisation_param_groups,
    mlp_localisation,
    tiling_params,
)
from torchstn.sampling import sample, warp
from torchstn.transforms import (
    Affine,
    Affine3D,
    Attention,
    Projective,
    Similarity,
    ThinPlateSpline,
    Transform,
    Translation,
)

__version__ = "0.1.0"

__all__ = [
    "Affine",
    "Affine3D",
    "Attention",
    "Bounds",
    "DTypeError",
    "LocalisationHead",
    "LocalisationNet",
    "NonFiniteError",
    "OptionError",
    "ParallelSpatialTransformer",
    "Projective",
    "STNError",
    "SerialSpatialTransformer",
    "ShapeError",
    "Similarity",
    "SpatialTransformer",
    "ThinPlateSpline",
    "Transform",
    "Translation",
    "__version__",
    "affine_grid",
    "compose",
    "conv_localisation",
    "errors",
    "geometry",
    "identity_penalty",
    "invert",
    "localisation_param_groups",
    "mlp_localisation",
    "modules",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "projective_grid",
    "sample",
    "tiling_params",
    "transform_points",
    "transforms",
    "warp",
]
