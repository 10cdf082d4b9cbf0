"""Bad input at every public boundary raises a torchstn error that subclasses a builtin and names the argument.

Every case is ``(thunk, expected error class, argument name)``: calling the thunk must raise the class (an
:class:`~torchstn.STNError` that is also a ``ValueError`` or ``TypeError``) with a message naming the argument.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

import torchstn
from torchstn import (
    Affine,
    Affine3D,
    Attention,
    DTypeError,
    NonFiniteError,
    OptionError,
    Projective,
    ShapeError,
    Similarity,
    STNError,
    ThinPlateSpline,
    Transform,
    Translation,
)

Case = tuple[Callable[[], object], type[STNError], str]

B, C, H, W = 2, 3, 4, 5
IMG = torch.zeros(B, C, H, W)
VOL = torch.zeros(B, C, 3, H, W)
GRID = torch.zeros(B, 6, 7, 2)
GRID3 = torch.zeros(B, 2, 6, 7, 3)
EYE = torch.eye(3).expand(B, 3, 3).clone()
AFF = torch.eye(3)[:2].expand(B, 2, 3).clone()


def _name_pattern(name: str) -> str:
    """The argument's name as a whole word (so ``size`` does not match inside ``output_size``)."""
    return rf"(?<![\w.]){re.escape(name)}(?![\w])"


def _check(fn: Callable[[], object], exc: type[STNError], name: str) -> None:
    with pytest.raises(exc, match=_name_pattern(name)) as info:
        fn()
    assert isinstance(info.value, STNError)
    assert isinstance(info.value, ValueError | TypeError)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(ShapeError, ValueError), (DTypeError, TypeError), (OptionError, ValueError), (NonFiniteError, ValueError)],
)
def test_error_hierarchy(cls: type[STNError], builtin: type[Exception]) -> None:
    assert issubclass(cls, STNError)
    assert issubclass(cls, builtin)
    assert cls is getattr(torchstn.errors, cls.__name__)


# ---------------------------------------------------------------------------------------------------------- sample


def _sample(**kw: Any) -> Callable[[], object]:
    """A call to ``sample`` with valid defaults, overridden by ``kw``."""
    args: dict[str, Any] = {"input": IMG, "grid": GRID, **kw}
    return lambda: torchstn.sample(**args)


SAMPLE_CASES: dict[str, Case] = {
    "input-3d": (_sample(input=torch.zeros(C, H, W)), ShapeError, "input"),
    "input-6d": (_sample(input=torch.zeros(B, C, 2, 2, H, W)), ShapeError, "input"),
    "input-not-tensor": (_sample(input=IMG.numpy()), DTypeError, "input"),
    "grid-batch": (_sample(grid=torch.zeros(B + 1, 6, 7, 2)), ShapeError, "grid"),
    "grid-last-dim-3-on-image": (_sample(grid=torch.zeros(B, 6, 7, 3)), ShapeError, "grid"),
    "grid-last-dim-2-on-volume": (_sample(input=VOL, grid=torch.zeros(B, 2, 6, 7, 2)), ShapeError, "grid"),
    "grid-ndim": (_sample(grid=torch.zeros(B, 6, 2)), ShapeError, "grid"),
    "grid-5d-on-image": (_sample(grid=GRID3), ShapeError, "grid"),
    "input-int": (_sample(input=IMG.long()), DTypeError, "input"),
    "input-uint8": (_sample(input=IMG.to(torch.uint8)), DTypeError, "input"),
    "grid-int": (_sample(grid=GRID.int()), DTypeError, "grid"),
    "grid-float64-input-float32": (_sample(grid=GRID.double()), DTypeError, "grid"),
    "grid-float32-input-float64": (_sample(input=IMG.double()), DTypeError, "grid"),
    "empty-batch": (_sample(input=torch.zeros(0, C, H, W), grid=torch.zeros(0, 6, 7, 2)), ShapeError, "input"),
    "empty-channels": (_sample(input=torch.zeros(B, 0, H, W)), ShapeError, "input"),
    "empty-grid": (_sample(grid=torch.zeros(B, 0, 7, 2)), ShapeError, "grid"),
    "mode-unknown": (_sample(mode="linear"), OptionError, "mode"),
    "mode-not-str": (_sample(mode=1), OptionError, "mode"),
    "padding-unknown": (_sample(padding="constant"), OptionError, "padding"),
    "backend-unknown": (_sample(backend="cuda"), OptionError, "backend"),
    "nonfinite-unknown": (_sample(nonfinite="nan"), OptionError, "nonfinite"),
    "bicubic-5d": (_sample(input=VOL, grid=GRID3, mode="bicubic"), OptionError, "mode"),
    "trilinear-4d": (_sample(mode="trilinear"), OptionError, "mode"),
    "fill-missing": (_sample(padding="fill"), OptionError, "fill"),
    "fill-without-padding": (_sample(fill=0.5), OptionError, "fill"),
    "fill-with-border": (_sample(padding="border", fill=[0.0, 0.0, 0.0]), OptionError, "fill"),
    "fill-channels": (_sample(padding="fill", fill=[0.1, 0.2]), ShapeError, "fill"),
    "fill-batch": (_sample(padding="fill", fill=torch.zeros(B + 1, C)), ShapeError, "fill"),
    "fill-3d": (_sample(padding="fill", fill=torch.zeros(B, C, 1)), ShapeError, "fill"),
}


@pytest.mark.parametrize("case", SAMPLE_CASES.values(), ids=SAMPLE_CASES.keys())
def test_sample_rejects(case: Case) -> None:
    _check(*case)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_sample_nonfinite_grid_raises(bad: float, backend: str) -> None:
    grid = GRID.clone()
    grid[1, 3, 4, 0] = bad
    with pytest.raises(NonFiniteError, match=_name_pattern("grid")) as info:
        torchstn.sample(IMG, grid, backend=backend)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    # the explicit "raise" is the default; "ignore" and "propagate" do not raise
    with pytest.raises(NonFiniteError):
        torchstn.sample(IMG, grid, nonfinite="raise")
    torchstn.sample(IMG, grid, nonfinite="ignore")
    assert torchstn.sample(IMG, grid, nonfinite="propagate")[1, :, 3, 4].isnan().all()


# ------------------------------------------------------------------------------------------------------------ warp


def _warp(transform: Any = None, **kw: Any) -> Callable[[], object]:
    """A call to ``warp`` with an affine transform and valid defaults, overridden by ``kw``."""
    t = Affine() if transform is None else transform
    args: dict[str, Any] = {"input": IMG, "params": Affine().identity_params(B), "transform": t, **kw}
    return lambda: torchstn.warp(**args)


WARP_CASES: dict[str, Case] = {
    "params-count": (_warp(params=torch.zeros(B, 5)), ShapeError, "params"),
    "params-1d": (_warp(params=torch.zeros(6)), ShapeError, "params"),
    "params-batch": (_warp(params=Affine().identity_params(B + 1)), ShapeError, "params"),
    "params-int": (_warp(params=Affine().identity_params(B).long()), DTypeError, "params"),
    "params-dtype": (_warp(params=Affine().identity_params(B, dtype=torch.float64)), DTypeError, "params"),
    "params-not-tensor": (_warp(params=[[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]] * B), DTypeError, "params"),
    "transform-class-not-instance": (_warp(transform=Affine), DTypeError, "transform"),
    "transform-str": (_warp(transform="affine"), DTypeError, "transform"),
    "transform-object": (_warp(transform=object()), DTypeError, "transform"),
    "input-4d-with-affine3d": (
        _warp(transform=Affine3D(), params=Affine3D().identity_params(B)),
        ShapeError,
        "input",
    ),
    "input-5d-with-affine": (_warp(input=VOL), ShapeError, "input"),
    "input-int": (_warp(input=IMG.long()), DTypeError, "input"),
    "input-empty-batch": (_warp(input=torch.zeros(0, C, H, W)), ShapeError, "input"),
    "output-size-zero": (_warp(output_size=(0, 4)), ShapeError, "output_size"),
    "output-size-negative": (_warp(output_size=(4, -1)), ShapeError, "output_size"),
    "output-size-float": (_warp(output_size=(4.0, 4)), DTypeError, "output_size"),
    "output-size-bool": (_warp(output_size=(True, 4)), DTypeError, "output_size"),
    "output-size-int": (_warp(output_size=4), DTypeError, "output_size"),
    "output-size-length": (_warp(output_size=(4, 4, 4)), ShapeError, "output_size"),
    "mode-unknown": (_warp(mode="area"), OptionError, "mode"),
}


@pytest.mark.parametrize("case", WARP_CASES.values(), ids=WARP_CASES.keys())
def test_warp_rejects(case: Case) -> None:
    _check(*case)


# ------------------------------------------------------------------------------------------------------ transforms

TRANSFORMS: dict[str, Transform] = {
    "affine": Affine(),
    "attention": Attention(),
    "similarity": Similarity(),
    "translation": Translation(),
    "projective": Projective(),
    "tps": ThinPlateSpline((3, 4)),
    "affine3d": Affine3D(),
}


def _size(t: Transform) -> tuple[int, ...]:
    return (3, 4, 5)[-t.ndim :]


def _grid_cases(t: Transform) -> dict[str, Case]:
    p = t.identity_params(B)
    n = t.num_params
    size = _size(t)

    def grid(params: Any = p, size: Any = size) -> Callable[[], object]:
        return lambda: t.grid(params, size)

    return {
        "params-count-low": (grid(params=torch.zeros(B, n - 1)), ShapeError, "params"),
        "params-count-high": (grid(params=torch.zeros(B, n + 1)), ShapeError, "params"),
        "params-1d": (grid(params=p[0]), ShapeError, "params"),
        "params-3d": (grid(params=p[None]), ShapeError, "params"),
        "params-int": (grid(params=p.long()), DTypeError, "params"),
        "params-bool": (grid(params=p.bool()), DTypeError, "params"),
        "params-empty-batch": (grid(params=torch.zeros(0, n)), ShapeError, "params"),
        "params-not-tensor": (grid(params=p.tolist()), DTypeError, "params"),
        "size-zero": (grid(size=(0, *size[1:])), ShapeError, "size"),
        "size-negative": (grid(size=(*size[:-1], -2)), ShapeError, "size"),
        "size-short": (grid(size=size[1:]), ShapeError, "size"),
        "size-long": (grid(size=(2, *size)), ShapeError, "size"),
        "size-int": (grid(size=4), DTypeError, "size"),
        "size-str": (grid(size="45"), DTypeError, "size"),
        "size-float": (grid(size=(*size[:-1], 4.0)), DTypeError, "size"),
    }


GRID_CASES: dict[str, Case] = {
    f"{tname}-{cname}": case for tname, t in TRANSFORMS.items() for cname, case in _grid_cases(t).items()
}


@pytest.mark.parametrize("case", GRID_CASES.values(), ids=GRID_CASES.keys())
def test_transform_grid_rejects(case: Case) -> None:
    _check(*case)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("batch_size", [0, -1, 2.0, "2", None])
def test_identity_params_rejects_batch_size(transform: Transform, batch_size: Any) -> None:
    # ShapeError today for every bad value; a DTypeError for non-ints would be as good
    _check(lambda: transform.identity_params(batch_size), STNError, "batch_size")


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_map_points_rejects(transform: Transform) -> None:
    p = transform.identity_params(B)
    nd = transform.ndim
    _check(lambda: transform.map_points(p, torch.zeros(B, 5, nd + 1)), ShapeError, "points")
    _check(lambda: transform.map_points(p, torch.zeros(B + 1, 5, nd)), ShapeError, "points")
    _check(lambda: transform.map_points(p, torch.zeros(5, nd)), ShapeError, "points")
    _check(lambda: transform.map_points(p, torch.zeros(B, 5, nd).long()), DTypeError, "points")
    _check(lambda: transform.map_points(p[:, 1:], torch.zeros(B, 5, nd)), ShapeError, "params")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grid": (1, 4)}, "grid"),
        ({"grid": (4, 1)}, "grid"),
        ({"grid": (4,)}, "grid"),
        ({"grid": 4}, "grid"),
        ({"grid": (4.0, 4)}, "grid"),
        ({"grid": (4, 4, 4)}, "grid"),
        ({"regularization": -0.1}, "regularization"),
        ({"regularization": float("nan")}, "regularization"),
    ],
)
def test_thin_plate_spline_rejects(kwargs: dict[str, Any], name: str) -> None:
    _check(lambda: ThinPlateSpline(**kwargs), OptionError, name)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan")])
def test_projective_rejects_eps(eps: float) -> None:
    _check(lambda: Projective(eps=eps), OptionError, "eps")


# -------------------------------------------------------------------------------------------------------- geometry

GEOMETRY_CASES: dict[str, Case] = {
    "affine_grid-2x2": (lambda: torchstn.affine_grid(torch.zeros(B, 2, 2), (H, W)), ShapeError, "src_from_dst"),
    "affine_grid-3x4-for-2d": (lambda: torchstn.affine_grid(torch.zeros(B, 3, 4), (H, W)), ShapeError, "src_from_dst"),
    "affine_grid-2x3-for-3d": (
        lambda: torchstn.affine_grid(AFF, (3, H, W)),
        ShapeError,
        "src_from_dst",
    ),
    "affine_grid-unbatched": (lambda: torchstn.affine_grid(AFF[0], (H, W)), ShapeError, "src_from_dst"),
    "affine_grid-int": (lambda: torchstn.affine_grid(AFF.long(), (H, W)), DTypeError, "src_from_dst"),
    "affine_grid-empty": (lambda: torchstn.affine_grid(torch.zeros(0, 2, 3), (H, W)), ShapeError, "src_from_dst"),
    "affine_grid-size-zero": (lambda: torchstn.affine_grid(AFF, (0, W)), ShapeError, "size"),
    "affine_grid-size-int": (lambda: torchstn.affine_grid(AFF, 4), DTypeError, "size"),  # type: ignore[arg-type]
    "projective_grid-2x3": (lambda: torchstn.projective_grid(AFF, (H, W)), ShapeError, "src_from_dst"),
    "projective_grid-unbatched": (lambda: torchstn.projective_grid(EYE[0], (H, W)), ShapeError, "src_from_dst"),
    "projective_grid-int": (lambda: torchstn.projective_grid(EYE.long(), (H, W)), DTypeError, "src_from_dst"),
    "projective_grid-size-3d": (lambda: torchstn.projective_grid(EYE, (3, H, W)), ShapeError, "size"),
    "projective_grid-size-negative": (lambda: torchstn.projective_grid(EYE, (H, -W)), ShapeError, "size"),
    "compose-none": (lambda: torchstn.compose(), ShapeError, "matrices"),
    "compose-3x3-4x4": (lambda: torchstn.compose(EYE, torch.eye(4)), ShapeError, "matrices[1]"),
    "compose-2x3-3x4": (lambda: torchstn.compose(AFF, torch.zeros(3, 4)), ShapeError, "matrices[1]"),
    "compose-2x4": (lambda: torchstn.compose(torch.zeros(2, 4), EYE), ShapeError, "matrices[0]"),
    "compose-int": (lambda: torchstn.compose(EYE, EYE.long()), DTypeError, "matrices[1]"),
    "invert-2x4": (lambda: torchstn.invert(torch.zeros(B, 2, 4)), ShapeError, "matrix"),
    "invert-1d": (lambda: torchstn.invert(torch.zeros(3)), ShapeError, "matrix"),
    "invert-int": (lambda: torchstn.invert(EYE.long()), DTypeError, "matrix"),
    "transform_points-last-dim": (
        lambda: torchstn.transform_points(AFF, torch.zeros(B, 5, 3)),
        ShapeError,
        "points",
    ),
    "transform_points-homography-last-dim": (
        lambda: torchstn.transform_points(EYE, torch.zeros(B, 5, 3)),
        ShapeError,
        "points",
    ),
    "transform_points-1d": (lambda: torchstn.transform_points(AFF, torch.zeros(2)), ShapeError, "points"),
    "transform_points-int": (lambda: torchstn.transform_points(AFF, torch.zeros(B, 5, 2).long()), DTypeError, "points"),
    "transform_points-matrix": (
        lambda: torchstn.transform_points(torch.zeros(B, 2, 4), torch.zeros(B, 5, 2)),
        ShapeError,
        "matrix",
    ),
}


@pytest.mark.parametrize("case", GEOMETRY_CASES.values(), ids=GEOMETRY_CASES.keys())
def test_geometry_rejects(case: Case) -> None:
    _check(*case)


@pytest.mark.parametrize("size", [(H, W), (3, H, W)])
def test_valid_calls_pass(size: Sequence[int]) -> None:
    """The valid defaults the cases above perturb are accepted, so each case fails for its one stated reason."""
    if len(size) == 2:
        _sample()()
        _warp()()
        torchstn.projective_grid(EYE, size)
        torchstn.transform_points(AFF, torch.zeros(B, 5, 2))
    else:
        torchstn.sample(VOL, GRID3)
    for t in TRANSFORMS.values():
        if t.ndim == len(size):
            t.grid(t.identity_params(B), size)
            t.map_points(t.identity_params(B), torch.zeros(B, 5, t.ndim))
    torchstn.affine_grid(AFF if len(size) == 2 else torch.eye(4)[:3].expand(B, 3, 4), size)
    torchstn.compose(EYE, AFF, EYE)
    torchstn.invert(EYE)


# ------------------------------------------------------------------------------------- data, pictures and checks


def _data_viz_cases() -> dict[str, Case]:
    from torchstn import viz
    from torchstn.data import MNIST, DistortedMNIST, MNISTSplit, generate, get_recipe

    src = MNISTSplit(torch.rand(5, 28, 28), torch.arange(5))
    mnist = MNIST(src, src, src, "synthetic")
    rts = get_recipe("rts")
    img = torch.rand(3, 1, 8, 8)
    aff1 = Affine().identity_params(1)
    return {
        "recipe-name-type": (lambda: get_recipe(3), DTypeError, "name"),  # type: ignore[arg-type]
        "recipe-name": (lambda: get_recipe("bogus"), OptionError, "name"),
        "recipe-unknown-param": (lambda: get_recipe("rts", bogus=1), OptionError, "rts"),
        "recipe-canvas-small": (lambda: get_recipe("rts", canvas=20), OptionError, "RotatedTranslatedScaled.canvas"),
        "recipe-canvas-str": (lambda: get_recipe("rts", canvas="42"), DTypeError, "RotatedTranslatedScaled.canvas"),
        "recipe-angle-reversed": (lambda: get_recipe("rotated", angle=(10, -10)), OptionError, "Rotated.angle"),
        "recipe-angle-nan": (lambda: get_recipe("rotated", angle=(float("nan"), 1.0)), OptionError, "Rotated.angle"),
        "recipe-scale-zero": (lambda: get_recipe("projective", scale=(0.0, 1.0)), OptionError, "Projected.scale"),
        "recipe-clutter-negative": (lambda: get_recipe("tc", clutter=-1), OptionError, "TranslatedCluttered.clutter"),
        "recipe-digit": (lambda: get_recipe("colocalisation", digit=10), OptionError, "CoLocalisation.digit"),
        "recipe-grid": (lambda: get_recipe("elastic", grid=(1, 4)), OptionError, "Elastic.grid"),
        "recipe-nested": (lambda: get_recipe("addition", rts={"canvas": 42}), DTypeError, "MNISTAddition.rts"),
        "generate-n": (lambda: generate(rts, src, 0, 0, "train"), OptionError, "n"),
        "generate-n-str": (lambda: generate(rts, src, "3", 0, "train"), DTypeError, "n"),  # type: ignore[arg-type]
        "generate-batch-size": (lambda: generate(rts, src, 3, 0, "train", batch_size=0), OptionError, "batch_size"),
        "generate-seed": (lambda: generate(rts, src, 3, "0", "train"), DTypeError, "seed"),  # type: ignore[arg-type]
        "generate-source": (lambda: generate(rts, "src", 3, 0, "train"), DTypeError, "source"),  # type: ignore[arg-type]
        "generate-empty-source": (
            lambda: generate(rts, MNISTSplit(torch.rand(0, 28, 28), torch.arange(0)), 3, 0, "train"),
            ShapeError,
            "source",
        ),
        "generate-epoch": (lambda: generate(rts, src, 3, 0, "train", epoch=-1), OptionError, "epoch"),
        "dataset-recipe": (lambda: DistortedMNIST(3, mnist=mnist, cache=False), DTypeError, "recipe"),  # type: ignore[arg-type]
        "dataset-split": (lambda: DistortedMNIST("rts", "validation", mnist=mnist, cache=False), OptionError, "split"),
        "dataset-n": (lambda: DistortedMNIST("rts", mnist=mnist, n=-1, cache=False), OptionError, "n"),
        "dataset-cache": (lambda: DistortedMNIST("rts", mnist=mnist, cache="no"), DTypeError, "cache"),  # type: ignore[arg-type]
        "dataset-epoch": (
            lambda: DistortedMNIST("rts", mnist=mnist, n=2, redraw=True).set_epoch("1"),  # type: ignore[arg-type]
            DTypeError,
            "epoch",
        ),
        "sheet-rank": (lambda: viz.sheet(torch.rand(3, 8, 8)), ShapeError, "images"),
        "sheet-int64": (lambda: viz.sheet(torch.zeros(3, 1, 8, 8, dtype=torch.int64)), DTypeError, "images"),
        "sheet-labels": (lambda: viz.sheet(img, labels=[1]), ShapeError, "labels"),
        "sheet-boxes": (lambda: viz.sheet(img, boxes=torch.rand(3, 3)), ShapeError, "boxes"),
        "sheet-pred-boxes": (lambda: viz.sheet(img, pred_boxes=torch.rand(2, 4)), ShapeError, "pred_boxes"),
        "sheet-ncols": (lambda: viz.sheet(img, ncols=0), OptionError, "ncols"),
        "sheet-zoom": (lambda: viz.sheet(img, zoom=1.5), DTypeError, "zoom"),  # type: ignore[arg-type]
        "outline-transform": (lambda: viz.grid_outline("affine", aff1, (8, 8)), DTypeError, "transform"),  # type: ignore[arg-type]
        "outline-align-corners-str": (
            lambda: viz.grid_outline(Affine(), aff1, (8, 8), align_corners="False"),  # type: ignore[arg-type]
            DTypeError,
            "align_corners",
        ),
        "outline-samples": (lambda: viz.grid_outline(Affine(), aff1, (8, 8), samples=1), OptionError, "samples"),
        "boxes-align-corners-str": (
            lambda: viz.attention_boxes(torch.rand(1, 3), (8, 8), "False"),  # type: ignore[arg-type]
            DTypeError,
            "align_corners",
        ),
        "boxes-params": (lambda: viz.attention_boxes(torch.rand(1, 4), (8, 8)), ShapeError, "params"),
        "draw-boxes-batch": (lambda: viz.draw_boxes(img, torch.rand(2, 4)), ShapeError, "pred_boxes"),
        "draw-record": (lambda: viz.draw_record("record"), DTypeError, "record"),  # type: ignore[arg-type]
        "capture-model": (lambda: viz.capture("model", img), DTypeError, "model"),  # type: ignore[arg-type]
        "capture-x": (lambda: viz.capture(torch.nn.Identity(), "x"), DTypeError, "x"),  # type: ignore[arg-type]
        "animator-zoom": (lambda: viz.EpochAnimator(zoom=0), OptionError, "zoom"),
        "animator-mesh": (lambda: viz.EpochAnimator(mesh=1), OptionError, "mesh"),
        "animator-margin": (lambda: viz.EpochAnimator(margin=float("inf")), OptionError, "margin"),
        "animator-epoch": (
            lambda: viz.EpochAnimator().add(torch.nn.Identity(), img, "3"),  # type: ignore[arg-type]
            DTypeError,
            "epoch",
        ),
        "pictures-epoch": (
            lambda: viz.save_transformer_pictures(torch.nn.Identity(), img, ".", epoch=-1),
            OptionError,
            "epoch",
        ),
        "curves-rows": (lambda: viz.plot_curves("rows", "c.png"), DTypeError, "log_rows"),  # type: ignore[arg-type]
        "curves-empty": (lambda: viz.plot_curves([], "c.png"), ShapeError, "log_rows"),
    }


DATA_VIZ_CASES = _data_viz_cases()


@pytest.mark.parametrize("case", list(DATA_VIZ_CASES.values()), ids=list(DATA_VIZ_CASES))
def test_data_and_pictures_reject(case: Case) -> None:
    _check(*case)


@pytest.mark.parametrize(
    ("check", "value", "exc", "match"),
    [
        ("check_bool", "False", DTypeError, r"flag: expected a bool, got str 'False'"),
        ("check_bool", 1, DTypeError, r"flag: expected a bool, got int 1"),
        ("check_int", True, DTypeError, r"flag: expected an int, got bool True"),
        ("check_int", 2.0, DTypeError, r"flag: expected an int, got float 2\.0"),
        ("check_positive_int", 0, OptionError, r"flag: expected an int of at least 1, got 0"),
        ("check_number", float("nan"), OptionError, r"flag: expected a finite number, got nan"),
        ("check_number", "1", DTypeError, r"flag: expected a number, got str '1'"),
        ("check_transform", "affine", DTypeError, r"flag: expected a torchstn\.transforms\.Transform, got str"),
        ("check_dtype", torch.int64, DTypeError, r"flag: expected a floating-point dtype, got torch\.int64"),
        ("check_dtype", "float32", DTypeError, r"flag: expected a floating-point torch\.dtype or None, got str"),
        ("check_device", "gpu0", OptionError, r"flag: not a device: 'gpu0'"),
        ("check_device", 1.0, DTypeError, r"flag: expected a torch\.device, a device string, an index or None"),
    ],
)
def test_declarative_checks_name_the_argument_and_what_was_expected(
    check: str, value: object, exc: type[STNError], match: str
) -> None:
    from torchstn import _checks

    with pytest.raises(exc, match=match):
        getattr(_checks, check)(value, "flag")


def test_declarative_checks_pass_good_values_through() -> None:
    import numpy as np

    from torchstn import _checks

    assert _checks.check_bool(False, "f") is False
    assert _checks.check_int(np.int64(3), "n", minimum=0) == 3 and type(_checks.check_int(np.int64(3), "n")) is int
    assert _checks.check_number(2, "x", low=0.0, high=2.0) == 2.0
    with pytest.raises(OptionError, match=r"x: expected a number in \[0, 1\], got 2"):
        _checks.check_number(2, "x", low=0.0, high=1.0)
    _checks.check_transform(Affine(), ndim=2)
    assert _checks.check_dtype(None, "d") is None and _checks.check_dtype(torch.float16, "d") is torch.float16
    assert _checks.check_device("cpu", "d") == torch.device("cpu") and _checks.check_device(None, "d") is None
    x = torch.zeros(2)
    _checks.check_like(x, "x", torch.ones(3), "y")
    with pytest.raises(DTypeError, match=r"x: expected the dtype of y \(torch\.float64\), got torch\.float32"):
        _checks.check_like(x, "x", torch.ones(3, dtype=torch.float64), "y")
    with pytest.raises(DTypeError, match=r"x: expected the device of y \(meta\), got cpu"):
        _checks.check_like(x, "x", torch.ones(3, device="meta"), "y")
    with pytest.raises(OptionError, match="transform: expected a 3D transform"):
        _checks.check_transform(Affine(), ndim=3)


# ----------------------------------------------------------------------------- library inputs (issue 17, defect 12)

MATRIX_TRANSFORMS = {k: t for k, t in TRANSFORMS.items() if isinstance(t, torchstn.transforms.MatrixTransform)}


def _size(t: Transform) -> tuple[int, ...]:
    return (3, H, W) if t.ndim == 3 else (H, W)


@pytest.mark.parametrize("flag", ["False", "True", 1, 0, 1.5, None])
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_transform_grid_rejects_non_bool_align_corners(transform: Transform, flag: object) -> None:
    # "False" is truthy: it used to build the align_corners=True grid
    p = transform.identity_params(B)
    _check(lambda: transform.grid(p, _size(transform), align_corners=flag), DTypeError, "align_corners")


@pytest.mark.parametrize("flag", ["False", 1, 1.5])
def test_geometry_rejects_non_bool_align_corners(flag: object) -> None:
    cases: list[Callable[[], object]] = [
        lambda: torchstn.affine_grid(AFF, (H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.affine_grid(torch.eye(4)[None, :3], (3, H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.projective_grid(EYE, (H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.normalized_to_pixel(EYE, (H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.pixel_to_normalized(EYE, (H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.geometry.pixel_from_normalized((H, W), align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.geometry.normalized_coords(W, align_corners=flag),  # type: ignore[arg-type]
        lambda: torchstn.geometry.output_extent(W, align_corners=flag),  # type: ignore[arg-type]
        lambda: ThinPlateSpline((2, 2)).weights((H, W), align_corners=flag),  # type: ignore[arg-type]
    ]
    for case in cases:
        _check(case, DTypeError, "align_corners")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, "float32", float])
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_identity_params_rejects_non_floating_dtype(transform: Transform, dtype: Any) -> None:
    # int64 used to truncate a thin-plate spline's control points to 0 and +-1 without a word
    _check(lambda: transform.identity_params(B, dtype=dtype), DTypeError, "dtype")


def test_identity_params_rejects_bad_device_and_tps_points_reject_int_dtype() -> None:
    _check(lambda: Affine().identity_params(B, device="not-a-device"), OptionError, "device")
    _check(lambda: Affine().identity_params(B, device=3.0), DTypeError, "device")  # type: ignore[arg-type]
    _check(lambda: ThinPlateSpline((3, 3)).control_points(dtype=torch.int64), DTypeError, "dtype")
    assert Affine().identity_params(B, device="cpu", dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_map_points_rejects_dtype_and_device_mismatch(transform: Transform) -> None:
    p = transform.identity_params(B)
    pts = torch.zeros(B, 5, transform.ndim)
    # meta parameters with CPU points used to return a meta tensor; float64 points an obscure torch error
    _check(lambda: transform.map_points(p.to("meta"), pts), DTypeError, "points")
    _check(lambda: transform.map_points(p, pts.to("meta")), DTypeError, "points")
    _check(lambda: transform.map_points(p, pts.double()), DTypeError, "points")
    _check(lambda: transform.map_points(p.double(), pts), DTypeError, "points")
    _check(lambda: transform.map_points(p, pts, inverse="False"), DTypeError, "inverse")  # type: ignore[arg-type]


def test_compose_and_transform_points_reject_dtype_device_and_batch_mismatch() -> None:
    _check(lambda: torchstn.compose(EYE, EYE.double()), DTypeError, "matrices[1]")
    _check(lambda: torchstn.compose(EYE, EYE.to("meta")), DTypeError, "matrices[1]")
    _check(lambda: torchstn.compose(EYE, torch.eye(3).expand(B + 1, 3, 3)), ShapeError, "matrices[1]")
    _check(lambda: torchstn.compose(EYE, EYE, torch.eye(3)[:2].expand(B + 1, 2, 3)), ShapeError, "matrices[2]")
    _check(lambda: torchstn.transform_points(EYE, torch.zeros(B, 5, 2).double()), DTypeError, "points")
    _check(lambda: torchstn.transform_points(AFF, torch.zeros(B, 5, 2, device="meta")), DTypeError, "points")
    _check(lambda: torchstn.transform_points(AFF, torch.zeros(B + 1, 5, 2)), ShapeError, "points")
    _check(lambda: torchstn.transform_points(EYE, torch.zeros(B, 5, 2), eps=0.0), OptionError, "eps")
    _check(lambda: torchstn.transform_points(EYE, torch.zeros(B, 5, 2), eps="1"), DTypeError, "eps")  # type: ignore[arg-type]
    _check(lambda: torchstn.projective_grid(EYE, (H, W), eps=-1.0), OptionError, "eps")
    _check(lambda: torchstn.normalized_to_pixel(EYE, (H, W), dst_size=(0, W)), ShapeError, "dst_size")
    _check(lambda: torchstn.pixel_to_normalized(EYE, 4), DTypeError, "src_size")  # type: ignore[arg-type]
    _check(lambda: Projective(eps="1e-6"), DTypeError, "eps")  # type: ignore[arg-type]
    # broadcasting leading dimensions stay valid
    assert torchstn.compose(EYE, torch.eye(3)).shape == (B, 3, 3)
    assert torchstn.transform_points(torch.eye(3)[:2], torch.zeros(B, 5, 2)).shape == (B, 5, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_invert_low_precision_in_float32(dtype: torch.dtype) -> None:
    """torch.linalg.inv has no half or bfloat16 kernel: invert works in float32 and casts back."""
    m = torch.tensor([[[2.0, 0.5, 1.0], [0.0, 4.0, -1.0]]])
    inv = torchstn.invert(m.to(dtype))
    assert inv.dtype == dtype and inv.shape == (1, 2, 3)
    assert torch.equal(inv, torchstn.invert(m).to(dtype))
    assert Affine().inverse_params(m.reshape(1, 6).to(dtype)).dtype == dtype
    px = torchstn.normalized_to_pixel(m.to(dtype), (H, W))
    assert px.dtype == dtype and bool(torch.isfinite(px).all())


def test_invert_on_meta_matrices_gives_meta() -> None:
    assert torchstn.invert(EYE.to("meta")).device.type == "meta"
    assert Affine().matrix(Affine().identity_params(B, device="meta")).device.type == "meta"  # finite check skipped


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_params_overflowing_the_matrix_raise(dtype: torch.dtype) -> None:
    """A Similarity log_scale beyond log(finfo.max) overflows exp: finite parameters, an inf matrix and a NaN grid."""
    big = 89.0 if dtype == torch.float32 else 710.0
    p = torch.tensor([[0.0, big, 0.0, 0.0]], dtype=dtype)
    t = Similarity()
    for fn in (
        lambda: t.grid(p, (H, W)),
        lambda: t.matrix(p),
        lambda: t.map_points(p, torch.zeros(1, 3, 2, dtype=dtype)),
        lambda: t.inverse_params(p),
    ):
        _check(fn, NonFiniteError, "params")
    # a finite matrix whose grid overflows: checked on the grid (the matrix exceeds grid_bound)
    m = torch.full((1, 6), torch.finfo(dtype).max / 2, dtype=dtype)
    _check(lambda: Affine().grid(m, (H, W)), NonFiniteError, "params")
    # non-finite parameters are not the transform's to judge: they propagate, as before
    nan = torch.tensor([[float("nan"), 0.0, 0.0, 0.0]], dtype=dtype)
    assert bool(torch.isnan(t.grid(nan, (H, W))).all())
    # large but representable: finite, unchanged
    ok = torch.tensor([[0.3, 20.0, 0.0, 0.0]], dtype=dtype)
    assert bool(torch.isfinite(t.grid(ok, (H, W))).all())
