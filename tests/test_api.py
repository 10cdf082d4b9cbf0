"""The public surface is pinned: nothing disappears (or appears) by accident."""

from __future__ import annotations

import importlib

import pytest

import torchstn

PUBLIC = {
    "torchstn": [
        "Affine", "Affine3D", "Attention", "Bounds", "DTypeError", "LocalisationHead", "LocalisationNet",
        "NonFiniteError", "OptionError", "ParallelSpatialTransformer", "Projective", "STNError",
        "SerialSpatialTransformer", "ShapeError", "Similarity", "SpatialTransformer", "ThinPlateSpline", "Transform",
        "Translation", "__version__", "affine_grid", "compose", "conv_localisation", "errors", "geometry",
        "identity_penalty", "invert", "localisation_param_groups", "mlp_localisation", "modules",
        "normalized_to_pixel", "pixel_to_normalized", "projective_grid", "sample", "tiling_params",
        "transform_points", "transforms", "warp",
    ],
    "torchstn.modules": [
        "Bounds", "LocalisationHead", "LocalisationNet", "ParallelSpatialTransformer", "SerialSpatialTransformer",
        "SpatialTransformer", "conv_localisation", "identity_penalty", "localisation_param_groups",
        "mlp_localisation", "tiling_params",
    ],
    "torchstn.transforms": [
        "Affine", "Affine3D", "Attention", "MatrixTransform", "Projective", "Similarity", "ThinPlateSpline",
        "Transform", "Translation",
    ],
    "torchstn.geometry": [
        "DEFAULT_EPS", "affine_grid", "attention_boxes", "compose", "invert", "normalized_coords",
        "normalized_to_pixel", "output_extent", "pixel_from_normalized", "pixel_to_normalized", "projective_grid",
        "safe_denominator", "transform_points",
    ],
    "torchstn.sampling": ["Backend", "Mode", "NonFinite", "Padding", "SamplingOptions", "sample", "warp"],
    "torchstn.errors": [
        "CheckpointError", "CheckpointNotFoundError", "ConfigError", "ConfigKeyError", "ConfigNotFoundError",
        "DTypeError", "DataError", "DataNotFoundError",
        "ExportMismatchError", "ExtensionBuildError", "MissingDependencyError", "NonFiniteError", "OptionError",
        "RunError", "STNError", "ShapeError", "TrainingDiverged", "UnsupportedError",
    ],
    "torchstn.models": [
        "LayerMacs", "MaxPool2x2", "PretrainedWeights", "STClassifier", "SingleChannelConv2d", "VolumeProjector",
        "common", "count_macs", "create_model", "cub", "list_models", "list_pretrained", "make_transform", "mnist",
        "model_function", "parameter_count", "pretrained", "register_model", "strips", "supported_kwargs", "svhn",
    ],
    "torchstn.data": [
        "Batch", "CACHE_VERSION", "CoLocalisation", "DistortedMNIST", "Elastic", "MNIST", "MNISTAddition",
        "MNISTSplit", "Projected", "RECIPES", "Recipe", "Rotated", "RotatedTranslatedScaled", "TextStrips",
        "TranslatedCluttered", "Volumetric", "cub", "default_cache_dir", "find_bundled_mnist", "generate", "get_recipe",
        "load_mnist", "materialise", "read_idx", "svhn",
    ],
    "torchstn.train": [
        "ClassifyTask", "Config", "DEFAULTS", "StreamSource", "Task", "TensorSource", "TrainingDiverged",
        "TrainingInterrupted", "build_model", "build_task", "evaluate", "format_config", "list_configs", "list_tasks",
        "load_checkpoint", "load_config", "register_task", "save_checkpoint", "train",
    ],
    "torchstn.visualize": [
        "EpochAnimator", "HEAD_COLOURS", "TransformerRecord", "attention_boxes", "capture", "draw_boxes",
        "draw_record", "grid_outline", "plot_curves", "save_transformer_pictures",
    ],
    # torchstn.visualize is the old name of torchstn.viz, kept as a re-export (the CLI and the engine import it).
    "torchstn.viz": [
        "EpochAnimator", "HEAD_COLOURS", "TransformerRecord", "attention_boxes", "capture", "control_point_pixels",
        "draw_boxes", "draw_record", "grid_outline", "plot_curves", "save_sheet", "save_transformer_pictures", "sheet",
    ],
    "torchstn.viz.capture": ["TransformerRecord", "capture"],
    "torchstn.viz.draw": [
        "HEAD_COLOURS", "control_point_pixels", "draw_boxes", "draw_record", "save_sheet", "save_transformer_pictures",
        "sheet",
    ],
    "torchstn.viz.animate": ["EpochAnimator"],
    "torchstn.viz.curves": ["plot_curves"],
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
    builtin = {
        "ConfigError": ValueError, "ConfigKeyError": KeyError, "DataError": ValueError, "CheckpointError": ValueError,
        "RunError": RuntimeError, "TrainingDiverged": RuntimeError, "ExportMismatchError": RuntimeError,
        "ExtensionBuildError": RuntimeError, "UnsupportedError": RuntimeError, "DataNotFoundError": FileNotFoundError,
        "MissingDependencyError": ImportError,
    }  # fmt: skip
    for name, base in builtin.items():
        cls = getattr(torchstn.errors, name)
        assert issubclass(cls, torchstn.STNError) and issubclass(cls, base), name
    assert str(torchstn.errors.ConfigKeyError("config: unknown key 'x'")) == "config: unknown key 'x'"


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads the version from ``torchstn.__version__`` (dynamic), so the two cannot disagree."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "torchstn.__version__"}


def test_a_missing_checkpoint_reads_like_a_missing_file() -> None:
    err = torchstn.errors.CheckpointNotFoundError(2, "No such file (no checkpoint)", "run/last.pt")
    assert isinstance(err, FileNotFoundError) and isinstance(err, torchstn.errors.CheckpointError)
    assert str(err) == "run/last.pt: No such file (no checkpoint)"
    assert (err.errno, err.strerror, err.filename) == (2, "No such file (no checkpoint)", "run/last.pt")
    for cls in (torchstn.errors.ConfigNotFoundError, torchstn.errors.DataNotFoundError):
        assert isinstance(cls("plain message"), FileNotFoundError) and str(cls("plain message")) == "plain message"
