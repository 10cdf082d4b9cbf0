"""The text-strip recipe: per-index determinism, shapes, sequence labels, the geometry it draws, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchstn.data import MNIST, DistortedMNIST, MNISTSplit, TextStrips, generate, get_recipe, materialise
from torchstn.data.svhn import NO_DIGIT
from torchstn.errors import OptionError


@pytest.fixture(scope="module")
def source() -> MNISTSplit:
    """Thirty 'digits': a vertical bar at the box centre (so a digit's ink marks where its box went)."""
    imgs = torch.zeros(30, 28, 28)
    imgs[:, 6:22, 12:16] = 1.0
    return MNISTSplit(imgs, torch.arange(30) % 10)


def test_shapes_and_sequence_labels(source: MNISTSplit) -> None:
    recipe = TextStrips()
    batch = recipe.generate(source, torch.arange(40), 0, "train")
    assert tuple(batch.images.shape) == (40, 1, 32, 100) == (40, *recipe.shape())
    assert batch.images.dtype == torch.uint8
    assert batch.labels.dtype == torch.int64 and tuple(batch.labels.shape) == (40, 5)
    assert recipe.num_classes == 11 and recipe.label_shape == (5,)
    length = batch.meta["length"]
    assert int(length.min()) >= 3 and int(length.max()) <= 5 and len(set(length.tolist())) == 3
    positions = torch.arange(5)[None, :]
    digits, padding = batch.labels[positions < length[:, None]], batch.labels[positions >= length[:, None]]
    assert (digits >= 0).all() and (digits <= 9).all()
    assert (padding == NO_DIGIT).all()
    assert batch.images.flatten(1).amax(1).min() > 0  # every strip holds ink


def test_sample_i_depends_on_the_index_alone(source: MNISTSplit) -> None:
    recipe = TextStrips()
    whole = generate(recipe, source, 12, seed=3, split="train", batch_size=12)
    pieces = generate(recipe, source, 12, seed=3, split="train", batch_size=5)
    shard = generate(recipe, source, 4, seed=3, split="train", start=6)
    for got in (pieces, shard):
        offset = 0 if got is pieces else 6
        n = len(got.labels)
        assert torch.equal(got.images, whole.images[offset : offset + n])
        assert torch.equal(got.labels, whole.labels[offset : offset + n])
        assert all(torch.equal(v, whole.meta[k][offset : offset + n]) for k, v in got.meta.items())
    assert not torch.equal(generate(recipe, source, 12, seed=4, split="train").images, whole.images)
    assert not torch.equal(generate(recipe, source, 12, seed=3, split="test").images, whole.images)


def test_flat_strips_put_each_digit_at_its_drawn_centre(source: MNISTSplit) -> None:
    """With no bend and no perspective the bar of digit k sits at its recorded centre, vertically centred."""
    recipe = TextStrips(curve=0.0, corner_std=0.0)
    batch = recipe.generate(source, torch.arange(8), 0, "train")
    img = batch.images[:, 0].float()
    rows = torch.arange(32.0)
    for i in range(8):
        for k in range(int(batch.meta["length"][i])):
            c = float(batch.meta["centres"][i, k])
            col = int(c)  # edge-convention pixels: the bar spans the columns around c
            assert img[i, :, col].amax() > 0, (i, k)
        ink = img[i].sum(1)
        assert float((ink * rows).sum() / ink.sum()) == pytest.approx(15.5, abs=0.6)  # the strip's centre row


def test_the_bend_moves_the_ink_along_the_curve(source: MNISTSplit) -> None:
    """Each column's ink centre follows ``c(x) = a sin(pi f x + phi)`` (pixels) through the strip's centre."""
    recipe = TextStrips(curve=6.0, corner_std=0.0, digits=(5, 5), pitch=(0.3, 0.3))
    batch = recipe.generate(source, torch.arange(16), 1, "train")
    img = batch.images[:, 0].float()  # (B, 32, 100)
    rows = torch.arange(32.0)[:, None]
    x = (torch.arange(100.0) + 0.5) / 50.0 - 1.0  # column centres, normalised
    errors, spread = [], []
    for i in range(16):
        a, f, phi = batch.meta["curve"][i].tolist()
        ink = img[i].sum(0)
        cols = ink > 0.2 * ink.max()
        centre = (img[i] * rows).sum(0)[cols] / ink[cols]
        want = 15.5 + a * torch.sin(torch.pi * f * x[cols] + phi)
        errors.append(float((centre - want).abs().mean()))
        spread.append(float((centre - 15.5).abs().mean()))
    assert max(spread) > 2.0  # the bend is visible
    assert sum(errors) / 16 < 0.6


def test_parameters_are_checked() -> None:
    with pytest.raises(OptionError, match="digits"):
        TextStrips(digits=(0, 5))
    with pytest.raises(OptionError, match="digits"):
        TextStrips(digits=(3, 6))
    with pytest.raises(OptionError, match="height"):
        TextStrips(height=40, width=20)
    with pytest.raises(OptionError, match="curve"):
        get_recipe("text_strips", curve=-1.0)
    assert get_recipe("text_strips", width=120).shape() == (1, 32, 120)


def test_cached_with_a_manifest_and_served_as_a_dataset(source: MNISTSplit, tmp_path: Path) -> None:
    batch, path = materialise(TextStrips(), source, "train", 10, 0, tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["request"]["recipe"]["name"] == "text_strips" and manifest["request"]["n"] == 10
    again, same_path = materialise(TextStrips(), source, "train", 10, 0, tmp_path, batch_size=3)
    assert same_path == path and torch.equal(again.images, batch.images) and torch.equal(again.labels, batch.labels)
    ds = DistortedMNIST(
        TextStrips(), "train", n=10, mnist=MNIST(source, source, source, "synthetic"), cache_dir=tmp_path
    )
    assert ds.path == path and torch.equal(ds.labels, batch.labels)
    x, y = ds[3]
    assert x.shape == (1, 32, 100) and x.dtype == torch.float32 and y.shape == (5,)
