"""torchstn: Spatial Transformer Networks for PyTorch.

Convention: normalised coordinates in [-1, 1], ``(x, y[, z])`` order, transforms map target (output) points to
source (input) points, ``align_corners=False`` by default. See :mod:`torchstn.geometry`.
"""

from torchstn import errors, geometry, transforms
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
    "DTypeError",
    "NonFiniteError",
    "OptionError",
    "Projective",
    "STNError",
    "ShapeError",
    "Similarity",
    "ThinPlateSpline",
    "Transform",
    "Translation",
    "__version__",
    "affine_grid",
    "compose",
    "errors",
    "geometry",
    "invert",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "projective_grid",
    "sample",
    "transform_points",
    "transforms",
    "warp",
]
