"""The public surface is pinned: nothing disappears (or appears) by accident."""

from __future__ import annotations

import importlib

import pytest

import torchstn

PUBLIC = {
    "torchstn": [
        "Affine", "Affine3D", "Attention", "DTypeError", "NonFiniteError", "OptionError", "Projective", "STNError",
        "ShapeError", "Similarity", "ThinPlateSpline", "Transform", "Translation", "__version__", "affine_grid",
        "compose", "errors", "geometry", "invert", "normalized_to_pixel", "pixel_to_normalized", "projective_grid",
        "sample", "transform_points", "transforms", "warp",
    ],
    "torchstn.transforms": [
        "Affine", "Affine3D", "Attention", "MatrixTransform", "Projective", "Similarity", "ThinPlateSpline",
        "Transform", "Translation",
    ],
    "torchstn.geometry": [
        "DEFAULT_EPS", "affine_grid", "compose", "invert", "normalized_coords", "normalized_to_pixel",
        "pixel_from_normalized", "pixel_to_normalized", "projective_grid", "safe_denominator", "transform_points",
    ],
    "torchstn.sampling": ["Backend", "Mode", "NonFinite", "Padding", "sample", "warp"],
    "torchstn.errors": ["DTypeError", "NonFiniteError", "OptionError", "STNError", "ShapeError"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_surface_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is listed in __all__ but missing"


def test_errors_subclass_the_builtins() -> None:
    assert issubclass(torchstn.ShapeError, ValueError) and issubclass(torchstn.ShapeError, torchstn.STNError)
    assert issubclass(torchstn.DTypeError, TypeError) and issubclass(torchstn.DTypeError, torchstn.STNError)
    assert issubclass(torchstn.NonFiniteError, ValueError) and issubclass(torchstn.OptionError, ValueError)
