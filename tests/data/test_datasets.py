"""Datasets and the on-disk cache: checksums, corruption, redraws, the command line."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.cli import main
from torchstn.data import MNIST, Batch, DistortedMNIST, MNISTSplit, datasets, get_recipe, materialise
from torchstn.errors import DataError, DTypeError, OptionError


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


def test_transform_and_target_transform_apply_per_item_as_in_torchvision(mnist: MNIST, tmp_path: Path) -> None:
    plain = DistortedMNIST("rts", "train", mnist=mnist, cache_dir=tmp_path)
    seen: list[tuple[int, ...]] = []

    def normalise(image: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(image.shape))
        return (image - 0.1307) / 0.3081

    ds = DistortedMNIST(
        "rts", "train", mnist=mnist, cache_dir=tmp_path, transform=normalise, target_transform=lambda y: y + 100
    )
    x, y = ds[3]
    x0, y0 = plain[3]
    torch.testing.assert_close(x, (x0 - 0.1307) / 0.3081)
    assert int(y) == int(y0) + 100 and seen == [(1, 42, 42)]  # the float (C, H, W) image in [0, 1], once
    torch.testing.assert_close(ds.tensors()[0], plain.tensors()[0])  # whole-tensor access stays untransformed
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 1, 42, 42) and bool((yb >= 100).all())
    with pytest.raises(DTypeError, match="transform: expected a callable"):
        DistortedMNIST("rts", "train", mnist=mnist, cache_dir=tmp_path, transform="normalise")  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match="target_transform: expected a callable"):
        DistortedMNIST("rts", "train", mnist=mnist, cache_dir=tmp_path, target_transform=3)  # type: ignore[arg-type]


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


# --- a cache whose checksum matches but whose contents do not is rebuilt ---------------------------------------


def _rewrite_cache(path: Path, arrays: dict[str, np.ndarray] | bytes) -> None:
    """Replace the cached ``.npz`` and update its manifest's checksum, as a careless tool (or an attacker) would."""
    if isinstance(arrays, bytes):
        path.write_bytes(arrays)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    manifest = path.with_suffix(".json")
    record = json.loads(manifest.read_text())
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(record))


def _arrays(batch: Batch) -> dict[str, np.ndarray]:
    return {"images": batch.images.numpy(), "labels": batch.labels.numpy()} | {
        f"meta_{k}": v.numpy() for k, v in batch.meta.items()
    }


def _tamperings(good: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray] | bytes]:
    small = {k: v[:10] for k, v in good.items()}
    shrunk = dict(good, images=good["images"][:, :, :20, :20].copy())
    wrong_dtype = dict(good, images=good["images"].astype(np.float32))
    no_labels = {k: v for k, v in good.items() if k != "labels"}
    no_meta = {k: v for k, v in good.items() if not k.startswith("meta_")}
    extra = dict(good, stowaway=np.zeros(3))
    bad_labels = dict(good, labels=good["labels"] + 10)
    other_values = dict(good, images=255 - good["images"])
    buf = io.BytesIO()
    np.savez(buf, **good)  # type: ignore[arg-type]
    zipped = bytearray(buf.getvalue())
    zipped[60:90] = bytes(30)  # inside the first member's data: CRC mismatch (BadZipFile) when read
    return {
        "10 samples instead of 30": small,
        "20x20 images for a 42x42 recipe": shrunk,
        "float images": wrong_dtype,
        "no labels": no_labels,
        "no meta": no_meta,
        "an extra array": extra,
        "labels out of range": bad_labels,
        "other pixels": other_values,
        "a damaged zip member": bytes(zipped),
        "a bare .npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"
        + b" " * 54
        + b"\n"
        + bytes(8),
        "not a zip": b"PK\x03\x04 but nothing else",
    }


@pytest.mark.parametrize(
    "how",
    [
        "10 samples instead of 30", "20x20 images for a 42x42 recipe", "float images", "no labels", "no meta",
        "an extra array", "labels out of range", "other pixels", "a damaged zip member", "a bare .npy", "not a zip",
    ],
)  # fmt: skip
def test_a_checksum_matching_cache_with_the_wrong_contents_is_rebuilt(mnist: MNIST, tmp_path: Path, how: str) -> None:
    recipe = get_recipe("rts")
    first, path = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    _rewrite_cache(path, _tamperings(_arrays(first))[how])
    again, path2 = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert path2 == path
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert sorted(again.meta) == sorted(first.meta)
    assert all(torch.equal(again.meta[k], v) for k, v in first.meta.items())
    # ... and the rebuilt cache is valid again: the next call loads it unchanged
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["images"], first.images.numpy())


def test_a_valid_cache_is_loaded_not_regenerated(mnist: MNIST, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = get_recipe("rotated")
    first, path = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    stamp = path.stat().st_mtime_ns
    calls: list[int] = []
    original = datasets.generate

    def counting(*args: object, **kwargs: object) -> Batch:
        calls.append(int(args[2]))  # type: ignore[call-overload]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(datasets, "generate", counting)
    again, _ = materialise(recipe, mnist.train, "train", seed=0, cache_dir=tmp_path)
    assert calls == [1, 1]  # only the two probes (first and last sample), not the 30 samples
    assert path.stat().st_mtime_ns == stamp and torch.equal(again.images, first.images)


def test_a_cache_that_cannot_be_rebuilt_is_a_data_error(
    mnist: MNIST, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, *args: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(datasets, "atomic_write", read_only)  # a read-only directory, also when running as root
    with pytest.raises(DataError, match=r"cannot write the cache there \(\[Errno 13\] Permission denied"):
        materialise(get_recipe("rotated"), mnist.train, "train", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_materialise_and_the_dataset_check_their_arguments(mnist: MNIST, tmp_path: Path) -> None:
    with pytest.raises(DTypeError, match=r"recipe: expected a torchstn\.data\.Recipe"):
        materialise("rts", mnist.train, "train", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="n: expected an int of at least 1, got 0"):
        materialise(get_recipe("rts"), mnist.train, "train", n=0, cache_dir=tmp_path)
    with pytest.raises(DTypeError, match="redraw: expected a bool"):
        DistortedMNIST("rts", mnist=mnist, redraw="no")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="split: expected one of"):
        DistortedMNIST("rts", "validation", mnist=mnist, cache=False)
    with pytest.raises(OptionError, match="batch_size"):
        DistortedMNIST("rts", mnist=mnist, cache=False, batch_size=0)


_WRITER = """
import sys, torch
from torchstn.data import MNISTSplit, get_recipe, materialise
from torchstn.viz import save_sheet
g = torch.Generator().manual_seed(1)
src = MNISTSplit(torch.rand(12, 28, 28, generator=g), torch.arange(12) % 10)
out = sys.argv[1]
for _ in range(8):
    batch, _ = materialise(get_recipe("rotated"), src, "train", seed=0, cache_dir=out)
    save_sheet(out + "/sheet.png", batch.images)
"""


def test_two_processes_writing_one_cache_and_sheet_neither_crash_nor_leave_temporaries(tmp_path: Path) -> None:
    """Two ``torchstn data`` runs at once used to collide on ``NAME.png.tmp`` (defect 11): temporaries are unique."""
    import subprocess
    import sys

    from torchstn._io import stale_temporaries

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert stale_temporaries(tmp_path) == []
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz", ".png"]


def test_prefetch_draws_the_epoch_set_epoch_would_and_raises_its_errors(
    mnist: MNIST, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = DistortedMNIST("rts", "train", mnist=mnist, redraw=True, n=300)
    serial = DistortedMNIST("rts", "train", mnist=mnist, redraw=True, n=300)
    ds.prefetch(1)
    ds.prefetch(1)  # the same epoch again: one thread
    ds.set_epoch(1)
    serial.set_epoch(1)
    assert torch.equal(ds.images, serial.images) and torch.equal(ds.labels, serial.labels)
    ds.prefetch(2)
    ds.set_epoch(3)  # not the prefetched epoch: drawn here, the prefetched samples dropped
    serial.set_epoch(3)
    assert torch.equal(ds.images, serial.images)
    fixed = DistortedMNIST("rts", "test", mnist=mnist, cache=False, n=10)
    fixed.prefetch(1)  # a fixed set: nothing to do
    assert fixed._pending is None

    def broken(epoch: int) -> None:
        raise DataError(f"epoch {epoch} cannot be drawn")

    monkeypatch.setattr(ds, "_generate", broken)
    ds.prefetch(4)
    with pytest.raises(DataError, match="epoch 4 cannot be drawn"):
        ds.set_epoch(4)
    assert ds.epoch == 3 and torch.equal(ds.images, serial.images)  # the failed epoch left the data as it was
