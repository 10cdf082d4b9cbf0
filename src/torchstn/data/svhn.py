"""SVHN street numbers (paper section 4.2): the multi-digit "format 1" files and the 32x32 cropped digits.

On-disk formats read here (from http://ufldl.stanford.edu/housenumbers/):

* **Format 1, full numbers.** A split directory (``train/``, ``test/``, ``extra/``) holding PNG images
  ``1.png, 2.png, ...`` and ``digitStruct.mat``, a MATLAB v7.3 file (HDF5 with a 512-byte MATLAB header). Its group
  ``digitStruct`` holds two ``(N, 1)`` datasets of object references: ``name`` (each points to a ``(L, 1)`` uint16
  array of character codes) and ``bbox`` (each points to a group with datasets ``height``, ``left``, ``top``,
  ``width``, ``label``). For a one-digit image those datasets are ``(1, 1)`` arrays holding the value; for a
  ``K``-digit image they are ``(K, 1)`` arrays of references, each to a ``(1, 1)`` array. :func:`read_digit_struct`
  handles both. ``left``/``top`` are 0-based pixel edges: digit ``k`` covers columns ``[left, left + width)`` and rows
  ``[top, top + height)``; boxes may reach outside the image.
* **Format 2, cropped digits.** ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``: MATLAB v5 files with
  ``X`` of shape ``(32, 32, 3, N)`` uint8 and ``y`` of shape ``(N, 1)``. Read by :func:`load_svhn_cropped`.

In both formats the file's label 10 stands for the digit 0; every function here returns digit 0 as class 0.

Preprocessing of the paper (which follows Goodfellow et al. 2013): take the smallest box holding every digit box,
grow its width and height by ``expand`` = 30% (centred, so 15% on each side), clamp it to the image, crop and
resize to ``size`` x ``size`` = 64 x 64 (128 x 128 for the paper's looser set; that set's crop geometry is not given
in the paper: larger ``size`` with the same ``expand`` is the default here, pass a larger ``expand`` for more
context). The crop is not made square, so the aspect ratio changes, as in Goodfellow et al. (``square=True`` widens
the shorter side first instead). Resizing uses PIL's bilinear filter on the fractional crop box; PIL widens the
filter when shrinking, so downscaling is antialiased (like torchvision's ``antialias=True``). Goodfellow et al.
further take random 54 x 54 crops for training; the STN paper does not, so nothing here does.

Labels: a sequence of at most ``max_digits`` = 5 digits is a ``(5,)`` long tensor, digit classes 0-9 first, then
:data:`NO_DIGIT` = 10 ("no digit") as padding, together with the length (1-5). Longer numbers cannot be encoded:
``too_long="drop"`` (the default) leaves them out and counts them, ``"raise"`` raises.

Dependencies: ``h5py`` (format 1) and ``scipy`` (format 2), the ``torchstn[data]`` extra; imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from torchstn._checks import check_choice
from torchstn.errors import DataError, DataNotFoundError, DTypeError, MissingDependencyError, OptionError

__all__ = [
    "MAX_DIGITS",
    "NO_DIGIT",
    "SPLITS",
    "Box",
    "SVHNMultiDigit",
    "SVHNRecord",
    "SVHNTensors",
    "crop_region",
    "encode_digits",
    "load_svhn_cropped",
    "preprocess_svhn_split",
    "read_digit_struct",
    "svhn_crop",
]

NO_DIGIT = 10
"""Class index of an empty position in an encoded label sequence (digits are 0-9)."""
MAX_DIGITS = 5
"""Number of positions in an encoded label sequence (the paper's 5 softmax heads)."""
SPLITS = ("train", "test", "extra")
"""Split directories of SVHN format 1."""

Box = tuple[float, float, float, float]
"""A digit box ``(left, top, width, height)`` in pixels, as in ``digitStruct.mat``."""

_FIELDS = ("left", "top", "width", "height", "label")
_FORMAT1_CONTENTS = "digitStruct.mat and the PNG images it names (1.png, 2.png, ...)"


@dataclass(frozen=True)
class SVHNRecord:
    """One image of SVHN format 1.

    Attributes:
        name: Image file name inside the split directory, e.g. ``"1.png"``.
        boxes: One ``(left, top, width, height)`` box per digit, left to right as annotated, in pixels.
        labels: One digit per box, 0-9 (the file's 10 is returned as 0).
    """

    name: str
    boxes: tuple[Box, ...]
    labels: tuple[int, ...]


class SVHNTensors(NamedTuple):
    """A preprocessed split held in memory.

    Attributes:
        images: ``(N, 3, S, S)`` uint8 in [0, 255] or float32 in [0, 1].
        labels: ``(N, 5)`` long, digits 0-9 then :data:`NO_DIGIT` padding.
        lengths: ``(N,)`` long, number of digits (1-5).
    """

    images: Tensor
    labels: Tensor
    lengths: Tensor


# ---------------------------------------------------------------------------------------------------------------------
# digitStruct.mat (MATLAB v7.3 / HDF5)


def _import_h5py() -> Any:
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - h5py is part of the test environment
        raise MissingDependencyError("reading digitStruct.mat needs h5py: pip install 'torchstn[data]'") from err
    return h5py


def _read(h5py: Any, dataset_id: Any, dtype: Any) -> np.ndarray:
    """Read a whole dataset through h5py's low-level API (about twice as fast as ``Dataset[()]`` for tiny ones)."""
    out = np.empty(dataset_id.shape, dtype=dtype)
    dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _read_values(h5py: Any, file_id: Any, dataset_id: Any) -> list[float]:
    """Values of one bbox field: a ``(1, 1)`` array, or ``(K, 1)`` references to ``(1, 1)`` arrays."""
    if h5py.check_dtype(ref=dataset_id.dtype) is not None:
        refs = _read(h5py, dataset_id, h5py.ref_dtype).ravel()
        return [float(_read(h5py, h5py.h5r.dereference(r, file_id), np.float64).ravel()[0]) for r in refs]
    return [float(v) for v in _read(h5py, dataset_id, np.float64).ravel()]


def _read_record(h5py: Any, file_id: Any, name_ref: Any, bbox_ref: Any, index: int, path: Path) -> SVHNRecord:
    where = f"{path}: record {index}"
    try:
        codes = _read(h5py, h5py.h5r.dereference(name_ref, file_id), np.uint16).ravel()  # (L, 1) character codes
        name = "".join(chr(int(c)) for c in codes)
        group_id = h5py.h5r.dereference(bbox_ref, file_id)
        values = {key: _read_values(h5py, file_id, h5py.h5d.open(group_id, key.encode())) for key in _FIELDS}
    except (KeyError, ValueError, TypeError, IndexError, OSError, RuntimeError) as err:
        raise DataError(
            f"{where}: malformed entry (expected a name and a bbox with {', '.join(_FIELDS)}): {err}"
        ) from err
    counts = {len(v) for v in values.values()}
    if len(counts) != 1 or 0 in counts:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in values.items())
        raise DataError(f"{where} ({name}): bbox fields disagree on the number of digits ({sizes})")
    labels = []
    for raw in values["label"]:
        if raw != int(raw) or not 1 <= raw <= 10:
            raise DataError(f"{where} ({name}): digit label {raw} is not one of 1-10 (10 stands for 0)")
        labels.append(int(raw) % 10)
    boxes = tuple(zip(values["left"], values["top"], values["width"], values["height"], strict=True))
    return SVHNRecord(name=name, boxes=boxes, labels=tuple(labels))


def read_digit_struct(path: str | os.PathLike[str]) -> list[SVHNRecord]:
    """Read the digit boxes and labels of an SVHN format-1 ``digitStruct.mat``.

    Args:
        path: The ``digitStruct.mat`` of one split (a MATLAB v7.3, i.e. HDF5, file).

    Returns:
        One :class:`SVHNRecord` per image, in file order, digit 0 as label 0.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an HDF5 file, has no ``digitStruct`` group with ``name`` and ``bbox``, or holds a
            malformed entry; the message names the file (and the record).
        ImportError: h5py is not installed.

    Every digit field is a separate HDF5 object (MATLAB's nested references have no bulk read), so reading costs
    about 2 ms per image: roughly a minute for the 33k-image train split and seven for the 202k-image ``extra``.
    """
    h5py = _import_h5py()
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found; an SVHN format-1 split directory holds {_FORMAT1_CONTENTS}")
    if not h5py.is_hdf5(str(path)):
        raise DataError(
            f"{path}: not an HDF5 file; digitStruct.mat must be the MATLAB v7.3 (HDF5) file from SVHN's "
            "train.tar.gz / test.tar.gz / extra.tar.gz"
        )
    with h5py.File(path, "r") as f:
        group = f.get("digitStruct")
        if not isinstance(group, h5py.Group) or "name" not in group or "bbox" not in group:
            raise DataError(f"{path}: no 'digitStruct' group with 'name' and 'bbox' datasets; is this an SVHN file?")
        names = np.asarray(group["name"][()]).ravel()
        bboxes = np.asarray(group["bbox"][()]).ravel()
        if len(names) != len(bboxes):
            raise DataError(f"{path}: digitStruct has {len(names)} names but {len(bboxes)} bboxes")
        pairs = enumerate(zip(names, bboxes, strict=True))
        return [_read_record(h5py, f.id, n, b, i, path) for i, (n, b) in pairs]


# ---------------------------------------------------------------------------------------------------------------------
# Crop geometry and label encoding


def crop_region(
    boxes: Sequence[Box], image_size: tuple[int, int], expand: float = 0.3, *, square: bool = False
) -> tuple[float, float, float, float]:
    """The crop of the paper's preprocessing: the digits' union box, expanded and clamped to the image.

    Args:
        boxes: One or more ``(left, top, width, height)`` digit boxes in pixels.
        image_size: ``(width, height)`` of the image (PIL's order).
        expand: Relative growth of the union box's width and height, split evenly between the two sides
            (0.3: 15% of the width added left and right, 15% of the height above and below).
        square: Widen the shorter side of the union box to the longer one (centred) before expanding.

    Returns:
        ``(left, top, right, bottom)`` (PIL's box order): fractional pixel edges inside ``[0, width] x [0, height]``.
        If the boxes lie wholly outside the image, the whole image.

    Example:
        >>> crop_region([(10, 20, 10, 20), (20, 20, 10, 20)], (100, 100))
        (7.0, 17.0, 33.0, 43.0)
    """
    left = min(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    right = max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    w, h = right - left, bottom - top
    if square:
        w = h = max(w, h)
    half_w, half_h = w * (1 + expand) / 2, h * (1 + expand) / 2
    width, height = image_size
    x0, y0 = max(0.0, cx - half_w), max(0.0, cy - half_h)
    x1, y1 = min(float(width), cx + half_w), min(float(height), cy + half_h)
    if x1 <= x0 or y1 <= y0:
        return (0.0, 0.0, float(width), float(height))
    return (x0, y0, x1, y1)


def encode_digits(digits: Sequence[int], max_digits: int = MAX_DIGITS) -> Tensor:
    """Encode a digit sequence as ``max_digits`` classes: the digits, then :data:`NO_DIGIT` (10) padding.

    Args:
        digits: 1 to ``max_digits`` digits, each 0-9.
        max_digits: Length of the encoding.

    Returns:
        ``(max_digits,)`` long tensor.

    Raises:
        ValueError: More than ``max_digits`` digits, none, or a digit outside 0-9.

    Example:
        >>> encode_digits([1, 0])
        tensor([ 1,  0, 10, 10, 10])
    """
    if not 1 <= len(digits) <= max_digits:
        raise OptionError(f"digits: expected 1 to {max_digits} digits, got {len(digits)}: {list(digits)}")
    if any(not 0 <= d <= 9 for d in digits):
        raise OptionError(f"digits: expected digits 0-9, got {list(digits)}")
    out = torch.full((max_digits,), NO_DIGIT, dtype=torch.long)
    out[: len(digits)] = torch.tensor(list(digits), dtype=torch.long)
    return out


def _pil_to_tensor(image: Image.Image) -> Tensor:
    """``(3, H, W)`` uint8 tensor of an RGB PIL image."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def svhn_crop(
    image: Image.Image, boxes: Sequence[Box], size: int = 64, expand: float = 0.3, *, square: bool = False
) -> Tensor:
    """Crop one format-1 image around its digits and resize it, as in the paper.

    Args:
        image: The PIL image (any mode; converted to RGB).
        boxes: Its ``(left, top, width, height)`` digit boxes.
        size: Output side ``S`` (64, or 128 for the looser set).
        expand: Relative growth of the union box, see :func:`crop_region`.
        square: Make the union box square first, see :func:`crop_region`.

    Returns:
        ``(3, S, S)`` uint8 tensor.

    Example:
        >>> svhn_crop(Image.new("RGB", (40, 30)), [(5, 5, 10, 12)]).shape
        torch.Size([3, 64, 64])
    """
    region = crop_region(boxes, image.size, expand, square=square)
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=region)
    return _pil_to_tensor(resized)


# ---------------------------------------------------------------------------------------------------------------------
# Format 1 dataset


def _check_common(size: object, expand: object, max_digits: object, too_long: object) -> None:
    for name, value in (("size", size), ("max_digits", max_digits)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DTypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < 1:
            raise OptionError(f"{name}: expected a positive int, got {value}")
    if isinstance(expand, bool) or not isinstance(expand, int | float):
        raise DTypeError(f"expand: expected a number, got {type(expand).__name__}")
    if not expand >= 0:
        raise OptionError(f"expand: expected a non-negative number, got {expand}")
    check_choice(too_long, "too_long", ("drop", "raise"))


class SVHNMultiDigit(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """SVHN format-1 street numbers, cropped around the digits as in the paper.

    Reads ``root/<split>/digitStruct.mat`` once, then decodes and crops one PNG per item.

    Args:
        root: Directory holding the extracted split directories (``root/train/digitStruct.mat``, ``root/train/1.png``).
        split: ``"train"``, ``"test"`` or ``"extra"``.
        size: Output side ``S``: 64 (paper), 128 (the looser set).
        expand: Relative growth of the digits' union box (0.3 = 30%), see :func:`crop_region`.
        square: Make the union box square before expanding (Goodfellow et al. describe no squaring).
        max_digits: Length of the label encoding (5).
        too_long: Numbers with more than ``max_digits`` digits: ``"drop"`` leaves them out (their count is
            :attr:`num_dropped`; reportedly one image of the official train split), ``"raise"`` raises ``ValueError``.
        transform: Optional function applied to the ``(3, S, S)`` float image.

    Items are ``(image, labels, length)``: image ``(3, S, S)`` float32 in [0, 1], labels ``(max_digits,)`` long
    (digits 0-9, then :data:`NO_DIGIT` padding), length a long scalar.

    Raises:
        FileNotFoundError: The split directory, ``digitStruct.mat`` or an image it names is missing (named).
        ValueError: ``digitStruct.mat`` is malformed, or a number is too long and ``too_long="raise"``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        size: int = 64,
        expand: float = 0.3,
        *,
        square: bool = False,
        max_digits: int = MAX_DIGITS,
        too_long: Literal["drop", "raise"] = "drop",
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        check_choice(split, "split", SPLITS)
        _check_common(size, expand, max_digits, too_long)
        self.directory = Path(root) / split
        if not self.directory.is_dir():
            raise DataNotFoundError(
                f"{self.directory}: SVHN split directory not found; extract {split}.tar.gz into {Path(root)} so that "
                f"{split}/ holds {_FORMAT1_CONTENTS}"
            )
        records = read_digit_struct(self.directory / "digitStruct.mat")
        kept = [r for r in records if len(r.labels) <= max_digits]
        self.num_dropped = len(records) - len(kept)
        if self.num_dropped and too_long == "raise":
            first = next(r for r in records if len(r.labels) > max_digits)
            raise DataError(
                f"{self.directory / 'digitStruct.mat'}: {self.num_dropped} image(s) have more than {max_digits} digits "
                f"(first: {first.name}, {len(first.labels)} digits); pass too_long='drop' to leave them out"
            )
        for record in kept:
            if not (self.directory / record.name).is_file():
                raise DataNotFoundError(
                    f"{self.directory / record.name}: image named in digitStruct.mat not found; {self.directory} "
                    f"should hold {_FORMAT1_CONTENTS}"
                )
        self.records = kept
        self.size, self.expand, self.square, self.max_digits = size, float(expand), square, max_digits
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def crop(self, index: int) -> Tensor:
        """The ``(3, S, S)`` uint8 crop of item ``index`` (no ``transform``)."""
        record = self.records[index]
        with Image.open(self.directory / record.name) as image:
            return svhn_crop(image, record.boxes, self.size, self.expand, square=self.square)

    def target(self, index: int) -> tuple[Tensor, Tensor]:
        """Labels ``(max_digits,)`` long and length (long scalar) of item ``index``."""
        digits = self.records[index].labels
        return encode_digits(digits, self.max_digits), torch.tensor(len(digits), dtype=torch.long)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = self.crop(index).float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return (image, *self.target(index))


def preprocess_svhn_split(
    root: str | os.PathLike[str],
    split: str = "train",
    size: int = 64,
    expand: float = 0.3,
    *,
    dtype: torch.dtype = torch.uint8,
    square: bool = False,
    max_digits: int = MAX_DIGITS,
    too_long: Literal["drop", "raise"] = "drop",
    num_threads: int = 0,
) -> SVHNTensors:
    """Crop a whole format-1 split into memory, for fast training.

    Memory at ``size=64``: 12 KiB per image in uint8 (33k train: 0.4 GB; 236k train+extra: 2.9 GB), four times
    that in float32; ``size=128`` needs four times more again. Save the result with ``torch.save`` to skip the
    decoding next time.

    Args:
        root, split, size, expand, square, max_digits, too_long: As for :class:`SVHNMultiDigit`.
        dtype: ``torch.uint8`` (values 0-255, the default) or ``torch.float32`` (values in [0, 1]).
        num_threads: Decode with this many threads (PIL releases the GIL while decoding and resizing); 0 decodes in
            the calling thread.

    Returns:
        :class:`SVHNTensors` ``(images (N, 3, S, S), labels (N, max_digits) long, lengths (N,) long)``, in
        ``digitStruct.mat`` order without the dropped numbers.

    Raises:
        FileNotFoundError, ValueError: As for :class:`SVHNMultiDigit`.
    """
    if dtype not in (torch.uint8, torch.float32):
        raise DTypeError(f"dtype: expected torch.uint8 or torch.float32, got {dtype}")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise OptionError(f"num_threads: expected a non-negative int, got {num_threads!r}")
    ds = SVHNMultiDigit(
        root, split, size, expand, square=square, max_digits=max_digits, too_long=too_long, transform=None
    )
    n = len(ds)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)  # (N, 3, S, S)
    if num_threads > 0:
        with ThreadPoolExecutor(num_threads) as pool:
            for i, crop in enumerate(pool.map(ds.crop, range(n))):
                images[i] = crop
    else:
        for i in range(n):
            images[i] = ds.crop(i)
    labels = torch.stack([encode_digits(r.labels, max_digits) for r in ds.records]) if n else torch.empty(0, max_digits)
    lengths = torch.tensor([len(r.labels) for r in ds.records], dtype=torch.long)
    if dtype == torch.float32:
        images = images.float().div_(255)
    return SVHNTensors(images, labels.long(), lengths)


# ---------------------------------------------------------------------------------------------------------------------
# Format 2: cropped 32x32 digits (MATLAB v5)


def load_svhn_cropped(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """Load an SVHN cropped-digit file (``train_32x32.mat``, ``test_32x32.mat`` or ``extra_32x32.mat``).

    Args:
        path: The ``.mat`` file (MATLAB v5, read with :func:`scipy.io.loadmat`).

    Returns:
        ``(images, labels)``: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` long in 0-9 (the file's 10 is 0).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a MATLAB v5 file, lacks ``X`` or ``y``, or they have the wrong shapes or values.
        ImportError: scipy is not installed.
    """
    try:
        from scipy.io import loadmat  # type: ignore[import-untyped]
        from scipy.io.matlab import MatReadError  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - scipy is part of the test environment
        raise MissingDependencyError("reading SVHN's *_32x32.mat needs scipy: pip install 'torchstn[data]'") from err
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"{path}: file not found; SVHN's cropped digits come as train_32x32.mat, test_32x32.mat, extra_32x32.mat"
        )
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (MatReadError, ValueError, NotImplementedError, TypeError, OSError) as err:
        raise DataError(f"{path}: cannot read as a MATLAB v5 file with X and y: {err}") from err
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X should have shape (32, 32, 3, N), got {x.shape}")
    n = x.shape[3]
    if y.size != n:
        raise DataError(f"{path}: y should have shape ({n}, 1) to match X, got {y.shape}")
    y = y.reshape(n).astype(np.int64)
    if n and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels should be in 0-10 (10 stands for 0), got values in [{y.min()}, {y.max()}]")
    images = torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8).transpose(3, 2, 0, 1)))  # (N, 3, 32, 32)
    labels = torch.from_numpy(y % 10)  # (N,)
    return images, labels
