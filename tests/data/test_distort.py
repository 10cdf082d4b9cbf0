"""Distorted-MNIST recipes: shapes, ranges, determinism, and the warps against independent computations."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.data import RECIPES, MNISTSplit, generate, get_recipe
from torchstn.data.distort import _CORNERS
from torchstn.errors import DTypeError, OptionError
from torchstn.geometry import transform_points


@pytest.fixture(scope="module")
def source() -> MNISTSplit:
    """Forty synthetic 'digits': smooth blobs with a label each (fast, no MNIST needed)."""
    g = torch.Generator().manual_seed(0)
    c = torch.linspace(-1, 1, 28)
    y, x = torch.meshgrid(c, c, indexing="ij")
    centres = torch.rand(40, 2, generator=g) * 0.8 - 0.4
    imgs = torch.exp(-((x - centres[:, 0, None, None]) ** 2 + (y - centres[:, 1, None, None]) ** 2) / 0.08)
    return MNISTSplit(imgs.float(), torch.arange(40) % 10)


SHAPES = {
    "rotated": (1, 28, 28),
    "rts": (1, 42, 42),
    "projective": (1, 28, 28),
    "elastic": (1, 28, 28),
    "translated_cluttered": (1, 60, 60),
    "addition": (2, 42, 42),
    "colocalisation": (1, 84, 84),
    "volumetric": (1, 60, 60, 60),
    "text_strips": (1, 32, 100),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shapes_dtypes_and_label_ranges(source: MNISTSplit, name: str) -> None:
    recipe = get_recipe(name)
    batch = recipe.generate(source, torch.arange(6), 0, "train")
    assert tuple(batch.images.shape) == (6, *SHAPES[name]) == (6, *recipe.shape())
    assert batch.images.dtype == torch.uint8 and batch.labels.dtype == torch.int64
    assert int(batch.labels.min()) >= 0 and int(batch.labels.max()) < recipe.num_classes
    assert all(v.shape[0] == 6 for v in batch.meta.values())


@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"volumetric"}))
def test_sample_i_does_not_depend_on_batching(source: MNISTSplit, name: str) -> None:
    recipe = get_recipe(name)
    whole = generate(recipe, source, 50, seed=3, split="train", batch_size=50)
    pieces = generate(recipe, source, 50, seed=3, split="train", batch_size=7)
    assert torch.equal(whole.images, pieces.images) and torch.equal(whole.labels, pieces.labels)
    shard = generate(recipe, source, 10, seed=3, split="train", start=20)
    assert torch.equal(shard.images, whole.images[20:30])
    other = generate(recipe, source, 50, seed=4, split="train")
    assert not torch.equal(other.images, whole.images)
    test = generate(recipe, source, 50, seed=3, split="test")
    assert not torch.equal(test.images, whole.images)


def test_same_samples_in_another_process(source: MNISTSplit) -> None:
    code = (
        "import torch, hashlib\n"
        "from torchstn.data import MNISTSplit, generate, get_recipe\n"
        "src = MNISTSplit(torch.load('{p}', weights_only=True), torch.arange(40) % 10)\n"
        "b = generate(get_recipe('rts'), src, 40, seed=1, split='train', batch_size=9)\n"
        "print(hashlib.sha256(b.images.numpy().tobytes()).hexdigest())\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/src.pt"
        torch.save(source.images, path)
        out = subprocess.run([sys.executable, "-c", code.format(p=path)], capture_output=True, text=True, check=True)
    import hashlib

    here = generate(get_recipe("rts"), source, 40, seed=1, split="train")
    assert out.stdout.strip() == hashlib.sha256(here.images.numpy().tobytes()).hexdigest()


def test_redrawn_epochs_differ_and_repeat(source: MNISTSplit) -> None:
    r = get_recipe("rotated")
    e0 = generate(r, source, 20, 0, "train", epoch=0)
    assert torch.equal(e0.images, generate(r, source, 20, 0, "train", epoch=0).images)
    assert not torch.equal(e0.images, generate(r, source, 20, 0, "train", epoch=1).images)


def test_drawn_parameters_fall_in_the_stated_ranges(source: MNISTSplit) -> None:
    n = 2000
    rts = generate(get_recipe("rts"), source, n, 0, "train").meta
    assert float(rts["angle"].min()) >= -45 and float(rts["angle"].max()) <= 45
    assert float(rts["angle"].min()) < -40 and float(rts["angle"].max()) > 40  # the range is used
    assert float(rts["scale"].min()) >= 0.7 and float(rts["scale"].max()) <= 1.2
    room = (42 - 28 * rts["scale"]) / 2
    assert (rts["offset"].abs() <= room[:, None] + 1e-9).all()  # the scaled digit box stays on the canvas
    rot = generate(get_recipe("r"), source, n, 0, "train").meta["angle"]
    assert -90 <= float(rot.min()) < -85 and 85 < float(rot.max()) <= 90
    proj = generate(get_recipe("p"), source, n, 0, "train").meta
    moved = (proj["corners"] - _CORNERS * proj["scale"][:, None, None]) * 14  # pixels
    assert abs(float(moved.std()) - 5.0) < 0.25 and abs(float(moved.mean())) < 0.25
    ela = generate(get_recipe("e"), source, n, 0, "train").meta
    ctrl = get_recipe("e").generate(source, torch.arange(1), 0, "x").meta["params"]  # any, for the shape
    ident = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 4), indexing="ij")[::-1], -1
    ).reshape(1, -1)
    noise = (ela["params"] * ela["scale"][:, None] - ident.double()) * 14
    assert ctrl.shape == (1, 32) and abs(float(noise.std()) - 1.5) < 0.1


def _bilinear_numpy(img: np.ndarray, u: float, v: float) -> float:
    """Bilinear read of a 2D array at pixel (u, v), zero outside (independent of the library)."""
    h, w = img.shape
    x0, y0 = math.floor(u), math.floor(v)
    total = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < w and 0 <= yi < h:
                total += img[yi, xi] * (1 - abs(u - xi)) * (1 - abs(v - yi))
    return total


def test_rts_warp_matches_an_independent_computation(source: MNISTSplit) -> None:
    batch = generate(get_recipe("rts"), source, 3, 0, "test")
    for i in range(3):
        a, s = math.radians(float(batch.meta["angle"][i])), float(batch.meta["scale"][i])
        off = batch.meta["offset"][i].numpy()
        digit = source.images[i].numpy()
        expected = np.zeros((42, 42))
        for r in range(42):
            for c in range(42):
                # Canvas pixel -> offset from the canvas centre -> undo placement, rotation, scale -> digit pixel.
                p = np.array([c - 20.5, r - 20.5]) - off
                q = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) @ p / s
                expected[r, c] = _bilinear_numpy(digit, q[0] + 13.5, q[1] + 13.5)
        got = batch.images[i, 0].float().numpy() / 255
        np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=0.5 / 255 + 1e-5)


@pytest.mark.parametrize("motion", ["axes", "polar"])
def test_projective_corners_land_where_recorded(source: MNISTSplit, motion: str) -> None:
    meta = generate(get_recipe("p", corner_motion=motion), source, 5, 0, "train").meta
    # src_from_dst takes each recorded (moved) corner back onto the image corner.
    back = transform_points(meta["matrix"], meta["corners"])
    torch.testing.assert_close(back, _CORNERS.expand(5, 4, 2), atol=1e-9, rtol=0)


def _corner_moves(motion: str, n: int = 4000) -> torch.Tensor:
    """Each corner's move in pixels, ``(n, 4, 2)``: where it landed minus where the scaling alone put it."""
    src = MNISTSplit(torch.zeros(1, 28, 28), torch.zeros(1, dtype=torch.int64))
    meta = get_recipe("p", corner_motion=motion).generate(src, torch.arange(n), 0, "train").meta
    return (meta["corners"] - _CORNERS * meta["scale"][:, None, None]) * 14.0


def test_projective_readings_move_the_corners_as_documented() -> None:
    axes, polar = _corner_moves("axes"), _corner_moves("polar")
    # axes: each coordinate N(0, 5 px), independent: 5 px per axis, 5 sqrt(2) px RMS per corner.
    torch.testing.assert_close(axes.std(0), torch.full((4, 2), 5.0, dtype=torch.float64), atol=0.25, rtol=0)
    assert abs(float(axes.square().sum(-1).mean().sqrt()) - 5.0 * math.sqrt(2.0)) < 0.15
    # polar: the distance is |N(0, 5 px)| (mean 5 sqrt(2 / pi), RMS 5), the direction uniform.
    distance = polar.norm(dim=-1)
    assert abs(float(distance.mean()) - 5.0 * math.sqrt(2.0 / math.pi)) < 0.1
    assert abs(float(distance.square().mean().sqrt()) - 5.0) < 0.1
    direction = torch.atan2(polar[..., 1], polar[..., 0])
    counts = torch.histc(direction, bins=8, min=-math.pi, max=math.pi)
    assert float((counts / counts.mean() - 1).abs().max()) < 0.1  # 2,000 moves a bin: uniform to a few %
    torch.testing.assert_close(polar.mean((0, 1)), torch.zeros(2, dtype=torch.float64), atol=0.15, rtol=0)


def test_projective_default_reading_is_axes(source: MNISTSplit) -> None:
    default = generate(get_recipe("p"), source, 20, 0, "train")
    axes = generate(get_recipe("p", corner_motion="axes"), source, 20, 0, "train")
    polar = generate(get_recipe("p", corner_motion="polar"), source, 20, 0, "train")
    assert torch.equal(default.images, axes.images)
    assert not torch.equal(default.images, polar.images)
    torch.testing.assert_close(default.meta["scale"], polar.meta["scale"])  # only the corners' draws differ


@pytest.mark.parametrize(("value", "error"), [("radial", OptionError), (1, DTypeError)])
def test_projective_rejects_an_unknown_reading(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"Projected\.corner_motion"):
        get_recipe("p", corner_motion=value)


@pytest.mark.parametrize("name", ["translated_cluttered", "colocalisation"])
def test_digit_sits_in_its_box(source: MNISTSplit, name: str) -> None:
    recipe = get_recipe(name, clutter=16) if name == "colocalisation" else get_recipe(name)
    batch = recipe.generate(source, torch.arange(10), 0, "train")
    digits = (source.images[:10].clamp(0, 1) * 255).round().to(torch.uint8)
    for i in range(10):
        x0, y0, x1, y1 = batch.meta["boxes"][i].tolist()
        assert (x1 - x0, y1 - y0) == (28, 28)
        window = batch.images[i, 0, y0:y1, x0:x1]
        assert (window >= digits[i]).all()  # max-combined with clutter: never darker than the digit
    assert batch.images.float().mean() > 0


def test_addition_labels_are_sums(source: MNISTSplit) -> None:
    batch = get_recipe("addition").generate(source, torch.arange(100), 0, "train")
    torch.testing.assert_close(batch.labels, batch.meta["digits"].sum(-1))
    assert get_recipe("addition").num_classes == 19


def test_colocalisation_uses_one_class(source: MNISTSplit) -> None:
    batch = get_recipe("colocalisation", digit=3).generate(source, torch.arange(12), 0, "train")
    assert (batch.labels == 3).all()


def test_unknown_recipe_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="name"):
        get_recipe("spiral")


@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"volumetric"}))
def test_data_do_not_depend_on_the_fused_kernel(source: MNISTSplit, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generators warp on the grid path on purpose: a machine that built the fused kernel (whose rounding
    differs in the last bits, enough to flip a uint8 pixel now and then) makes the same data as one that did not."""
    from torchstn.sampling._fused import FusedCPUBackend

    def refuse(*args: object) -> None:
        raise AssertionError("a data generator warped through the fused kernel")

    recipe = get_recipe(name)
    monkeypatch.setattr(FusedCPUBackend, "run", refuse)
    with_kernel = generate(recipe, source, 24, seed=5, split="train")  # the kernel is there, and never called
    monkeypatch.setattr(FusedCPUBackend, "can_run", lambda *args: "disabled by the test")
    without = generate(recipe, source, 24, seed=5, split="train")
    assert torch.equal(with_kernel.images, without.images)
    assert torch.equal(with_kernel.labels, without.labels)


#: What each recipe generates from a seeded synthetic source (two calls: a fixed set and an epoch redraw at an
#: offset, in odd batches), as fingerprints (``_fingerprint``) in ``recipe_fingerprints.json``. Training records
#: depend on these samples: a change here means every cached dataset and recorded result is stale (bump
#: CACHE_VERSION and say so). Written by ``python tests/data/test_distort.py --write``.
#:
#: Not a hash of the bytes: the same code makes other last bits on another CPU. Measured on an AVX-512 machine
#: against the AVX2 machines that recorded the first goldens, and between MKL/ATen instruction sets on one
#: machine: the projective recipe's float64 homographies differ in the last bit (2e-15) and one voxel in 1.3M of
#: a volumetric batch differs by one grey level. So the labels are exact, an image may differ in
#: ``_FLIPS`` pixels by one level, and float metadata to a relative 1e-12 of its magnitude (1e-6 in float32).
FINGERPRINTS = Path(__file__).with_name("recipe_fingerprints.json")
_FLIPS = 8


def _weights(n: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def _fingerprint(t: torch.Tensor) -> dict[str, object]:
    """dtype, shape and three sums (plain, squared, randomly weighted: a shift or swap changes the last)."""
    x = t.detach().double().reshape(-1)
    fp: dict[str, object] = {"dtype": str(t.dtype), "shape": list(t.shape)}
    fp.update(sum=float(x.sum()), sumsq=float((x * x).sum()), weighted=float((x * _weights(x.numel())).sum()))
    fp["abs"] = float(x.abs().sum())
    return fp


def _recipe_fingerprints(name: str) -> dict[str, object]:
    g = torch.Generator().manual_seed(1234)
    src = MNISTSplit(torch.rand(40, 28, 28, generator=g) ** 3, torch.arange(40) % 10)
    out: dict[str, object] = {}
    for i, (epoch, start, n) in enumerate(((None, 0, 6), (3, 17, 4))):
        b = generate(get_recipe(name), src, n, seed=7, split="train", epoch=epoch, start=start, batch_size=3)
        out[f"{i}/labels"] = b.labels.tolist()
        out[f"{i}/meta"] = sorted(b.meta)
        for key, t in (("images", b.images), *((f"meta.{k}", b.meta[k]) for k in sorted(b.meta))):
            out[f"{i}/{key}"] = _fingerprint(t)
    return out


def _close(got: dict[str, object], want: dict[str, object]) -> bool:
    if (got["dtype"], got["shape"]) != (want["dtype"], want["shape"]):
        return False
    if str(want["dtype"]).startswith("torch.float"):  # last-bit differences of the CPU's kernels
        rel = 1e-12 if want["dtype"] == "torch.float64" else 1e-6
        tol = {k: rel * max(float(want["abs"]), 1.0) for k in ("sum", "weighted", "abs")}  # type: ignore[arg-type]
        tol["sumsq"] = rel * max(float(want["sumsq"]), 1.0)  # type: ignore[arg-type]
    else:  # integers: up to _FLIPS values off by one (an image's grey level at a rounding boundary)
        top = 255.0 if want["dtype"] == "torch.uint8" else float(abs(float(want["abs"])))  # type: ignore[arg-type]
        tol = {"sum": _FLIPS, "weighted": _FLIPS, "abs": _FLIPS, "sumsq": _FLIPS * (2 * top + 1)}
    return all(abs(float(got[k]) - float(want[k])) <= tol[k] for k in tol)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_generated_samples_are_the_recorded_ones(name: str) -> None:
    import json

    golden = json.loads(FINGERPRINTS.read_text())
    assert sorted(RECIPES) == sorted(golden)
    got, want = _recipe_fingerprints(name), golden[name]
    assert sorted(got) == sorted(want)
    for key in want:
        if isinstance(want[key], dict):
            assert _close(got[key], want[key]), (key, got[key], want[key])
        else:
            assert got[key] == want[key], key


def test_fingerprints_tell_a_changed_image_from_a_flipped_level() -> None:
    """The tolerance passes the CPU's last-bit differences and nothing more: a pixel off by one level passes, a
    one-pixel shift, two swapped images, or a grey level changed across an image do not."""
    g = torch.Generator().manual_seed(3)
    img = (torch.rand(4, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    want = _fingerprint(img)
    flipped = img.clone()
    flipped.view(-1)[[5, 900, 2000]] += 1
    assert _close(_fingerprint(flipped), want)
    assert not _close(_fingerprint(torch.roll(img, 1, dims=-1)), want)
    assert not _close(_fingerprint(img[[1, 0, 2, 3]]), want)
    assert not _close(_fingerprint((img // 2) * 2), want)
    m = torch.rand(6, 3, 3, generator=g, dtype=torch.float64)
    assert _close(_fingerprint(m + 1e-16 * m), _fingerprint(m))
    assert not _close(_fingerprint(m + 1e-9), _fingerprint(m))


if __name__ == "__main__" and "--write" in sys.argv:
    import json

    FINGERPRINTS.write_text(json.dumps({n: _recipe_fingerprints(n) for n in sorted(RECIPES)}, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS}")
