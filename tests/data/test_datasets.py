"""Datasets and the on-disk cache: checksums, corruption, redraws, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchstn.cli import main
from torchstn.data import MNIST, DistortedMNIST, MNISTSplit, get_recipe, materialise


@pytest.fixture(scope="module")
def mnist() -> MNIST:
    g = torch.Generator().manual_seed(1)
    parts = [MNISTSplit(torch.rand(n, 28, 28, generator=g) ** 4, torch.arange(n) % 10) for n in (30, 10, 20)]
    return MNIST(*parts, source="synthetic")


def test_cache_round_trip_and_corruption_is_rebuilt(mnist: MNIST, tmp_path: Path) -> None:
    recipe = get_recipe("rts")
    first, path = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    again, path2 = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert path == path2 and torch.equal(first.images, again.images)
    for k, v in first.meta.items():
        assert torch.equal(v, again.meta[k])
    # Flip bytes in the middle of the cached file: the checksum catches it and the set is rebuilt.
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    rebuilt, _ = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert torch.equal(rebuilt.images, first.images)
    assert json.loads(path.with_suffix(".json").read_text())["sha256"]  # manifest rewritten


def test_stale_manifest_is_not_trusted(mnist: MNIST, tmp_path: Path) -> None:
    recipe = get_recipe("rotated")
    first, path = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    manifest = path.with_suffix(".json")
    record = json.loads(manifest.read_text())
    record["request"]["version"] = -1
    manifest.write_text(json.dumps(record))
    path.write_bytes(b"not an npz")  # would fail to load if it were trusted
    again, _ = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images)


def test_different_requests_use_different_files(mnist: MNIST, tmp_path: Path) -> None:
    _, a = materialise(get_recipe("rts"), mnist.train, "train", seed=0, cache_dir=tmp_path)
    _, b = materialise(get_recipe("rts"), mnist.train, "train", seed=1, cache_dir=tmp_path)
    _, c = materialise(get_recipe("rts", canvas=48), mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert len({a, b, c}) == 3


def test_dataset_items_tensors_and_loader(mnist: MNIST, tmp_path: Path) -> None:
    ds = DistortedMNIST("rts", "train", mnist=mnist, cache_dir=tmp_path)
    x, y = ds[3]
    assert x.shape == (1, 42, 42) and x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    images, labels = ds.tensors()
    torch.testing.assert_close(images[3], x)
    assert int(labels[3]) == int(y) and len(ds) == 30
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert xb.shape == (8, 1, 42, 42) and yb.shape == (8,)


def test_redraw_changes_distortions_per_epoch(mnist: MNIST) -> None:
    ds = DistortedMNIST("rotated", "train", mnist=mnist, redraw=True)
    e0 = ds.images.clone()
    ds.set_epoch(1)
    assert not torch.equal(ds.images, e0)
    ds.set_epoch(0)
    assert torch.equal(ds.images, e0)
    fixed = DistortedMNIST("rotated", "test", mnist=mnist, cache=False)
    fixed.set_epoch(5)
    assert torch.equal(fixed.images, DistortedMNIST("rotated", "test", mnist=mnist, cache=False).images)


def test_command_line_materialises_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mnist")
    sheet = tmp_path / "sheet.png"
    code = main(["data", "r", "--split", "test", "--n", "64", "--cache-dir", str(tmp_path), "--sheet", str(sheet)])
    assert code == 0 and sheet.stat().st_size > 0
    assert "rotated test: 64 samples" in capsys.readouterr().out
    assert list(tmp_path.glob("rotated-test-*.npz"))
