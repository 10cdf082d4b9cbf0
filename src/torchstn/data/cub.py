"""CUB-200-2011 birds (paper section 4.3): the standard folder layout and Inception-style transforms.

On-disk layout (the extracted ``CUB_200_2011.tgz``; pass the ``CUB_200_2011`` folder as ``root``)::

    root/images.txt               "<image id> <relative path>"   e.g. "1 001.Black_footed_Albatross/Black_..._18.jpg"
    root/train_test_split.txt     "<image id> <1 train | 0 test>"
    root/image_class_labels.txt   "<image id> <class id 1-200>"
    root/classes.txt              "<class id> <name>"            (optional)
    root/bounding_boxes.txt       "<image id> <x> <y> <w> <h>"   (optional, pixels)
    root/images/<class dir>/<file>.jpg

The standard split has 5,994 train and 5,794 test images. Labels are returned 0-based (file class ``c`` is ``c - 1``).

Transforms (the Inception-style pipeline of common reproductions, the paper gives none): training resizes the
shorter side to ``round(size * 256 / 224)`` (256 for 224, 512 for 448), takes a random ``size`` x ``size`` crop and
flips it horizontally with probability 0.5; testing resizes the same way and takes the centre crop. Resizing is
PIL's bilinear filter, antialiased when shrinking (as torchvision's ``Resize`` on PIL images). Images are float32
in [0, 1], then normalised with the ImageNet mean and std unless ``mean``/``std`` are ``None``.

Randomness: the train transform draws from its ``generator`` (a ``torch.Generator``) when one is given, which makes
a run reproducible in one process. DataLoader workers each get a copy of the dataset and so the same generator
state: with ``num_workers > 0`` leave ``generator=None`` (draws then come from torch's global RNG, which the
DataLoader seeds differently per worker from its own ``generator``) or reseed in a ``worker_init_fn``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from torchstn._checks import check_choice
from torchstn.errors import DataError, DataNotFoundError, DTypeError, OptionError, ShapeError

__all__ = [
    "CUB200",
    "CUB_SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CUBTestTransform",
    "CUBTrainTransform",
    "center_crop",
    "hflip",
    "normalize",
    "random_crop",
    "resize_shorter",
    "to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for pretrained backbones."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet."""
CUB_SPLITS = ("train", "test")
"""Splits of ``train_test_split.txt``."""

_RESIZE_RATIO = 256 / 224
_NUM_CLASSES = 200
_REQUIRED = ("images.txt", "train_test_split.txt", "image_class_labels.txt")
_CONTENTS = "images.txt, train_test_split.txt, image_class_labels.txt and images/ (from CUB_200_2011.tgz)"


# ---------------------------------------------------------------------------------------------------------------------
# Functional transforms on PIL images and tensors


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (bilinear, antialiased).

    Example:
        >>> resize_shorter(Image.new("RGB", (300, 200)), 256).size
        (384, 256)
    """
    w, h = image.size
    new = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    return image.resize(new, Image.Resampling.BILINEAR)


def _crop(image: Image.Image, left: int, top: int, size: int) -> Image.Image:
    return image.crop((left, top, left + size, top + size))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centred ``size`` x ``size`` crop (offsets rounded as torchvision does).

    Example:
        >>> center_crop(Image.new("RGB", (384, 256)), 224).size
        (224, 224)
    """
    w, h = image.size
    return _crop(image, round((w - size) / 2), round((h - size) / 2), size)


def random_crop(image: Image.Image, size: int, generator: torch.Generator | None = None) -> Image.Image:
    """A ``size`` x ``size`` crop at a uniformly random position (the image must be at least ``size`` each way).

    Draws two integers from ``generator`` (torch's global RNG if ``None``): the top, then the left offset.
    """
    w, h = image.size
    if w < size or h < size:
        raise ShapeError(f"image: a {size} x {size} crop needs an image at least that large, got {w} x {h}")
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return _crop(image, left, top, size)


def hflip(image: Image.Image) -> Image.Image:
    """Mirror left to right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_tensor(image: Image.Image) -> Tensor:
    """``(3, H, W)`` float32 tensor in [0, 1] of a PIL image (converted to RGB).

    Example:
        >>> to_tensor(Image.new("RGB", (5, 4), (255, 0, 0)))[:, 0, 0]
        tensor([1., 0., 0.])
    """
    array = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)  # (3, H, W)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel.

    Args:
        x: ``(..., C, H, W)`` float tensor.
        mean: ``C`` values.
        std: ``C`` positive values.

    Returns:
        ``(..., C, H, W)`` float tensor.
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # (C, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------------------------------------
# Transform objects (settings + one call into the functions above)


def _check_transform_args(
    size: object, resize_ratio: object, mean: Sequence[float] | None, std: Sequence[float] | None
) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise DTypeError(f"size: expected an int, got {type(size).__name__}")
    if size < 1:
        raise OptionError(f"size: expected a positive int, got {size}")
    if isinstance(resize_ratio, bool) or not isinstance(resize_ratio, int | float) or not resize_ratio >= 1:
        raise OptionError(f"resize_ratio: expected a number >= 1 (the resized shorter side / size), got {resize_ratio}")
    if (mean is None) != (std is None):
        raise OptionError("mean, std: give both (normalise) or neither (no normalisation)")
    if mean is not None and std is not None:
        if len(mean) != 3 or len(std) != 3:
            raise ShapeError(f"mean, std: expected 3 values each (RGB), got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise OptionError(f"std: expected positive values, got {tuple(std)}")


class _CUBTransform:
    def __init__(
        self,
        size: int,
        resize_ratio: float,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        _check_transform_args(size, resize_ratio, mean, std)
        self.size = size
        self.resize_ratio = float(resize_ratio)
        self.resize_to = max(size, round(size * resize_ratio))
        self.mean = None if mean is None else tuple(mean)
        self.std = None if std is None else tuple(std)

    def _finish(self, image: Image.Image) -> Tensor:
        x = to_tensor(image)  # (3, size, size)
        if self.mean is not None and self.std is not None:
            x = normalize(x, self.mean, self.std)
        return x


class CUBTrainTransform(_CUBTransform):
    """Training transform: resize the shorter side, random ``size`` crop, random horizontal flip, to tensor.

    Args:
        size: Output side (224 or 448 in the paper).
        resize_ratio: Shorter side before cropping, relative to ``size`` (256/224).
        flip_p: Probability of a horizontal flip.
        mean: RGB mean to subtract (ImageNet's), or ``None`` to skip normalisation.
        std: RGB standard deviation to divide by, or ``None``.
        generator: Source of the random draws (crop top, crop left, flip, in that order, every call); ``None`` uses
            torch's global RNG.

    Calling it on a PIL image returns a ``(3, size, size)`` float32 tensor.
    """

    def __init__(
        self,
        size: int = 448,
        resize_ratio: float = _RESIZE_RATIO,
        flip_p: float = 0.5,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(size, resize_ratio, mean, std)
        if isinstance(flip_p, bool) or not isinstance(flip_p, int | float) or not 0 <= flip_p <= 1:
            raise OptionError(f"flip_p: expected a probability in [0, 1], got {flip_p}")
        self.flip_p = float(flip_p)
        self.generator = generator

    def __call__(self, image: Image.Image) -> Tensor:
        image = random_crop(resize_shorter(image.convert("RGB"), self.resize_to), self.size, self.generator)
        if float(torch.rand((), generator=self.generator)) < self.flip_p:
            image = hflip(image)
        return self._finish(image)


class CUBTestTransform(_CUBTransform):
    """Test transform: resize the shorter side, centre ``size`` crop, to tensor (deterministic).

    Args:
        size: Output side (224 or 448 in the paper).
        resize_ratio: Shorter side before cropping, relative to ``size`` (256/224).
        mean: RGB mean to subtract (ImageNet's), or ``None`` to skip normalisation.
        std: RGB standard deviation to divide by, or ``None``.

    Calling it on a PIL image returns a ``(3, size, size)`` float32 tensor.

    Example:
        >>> CUBTestTransform(224)(Image.new("RGB", (300, 200))).shape
        torch.Size([3, 224, 224])
    """

    def __init__(
        self,
        size: int = 448,
        resize_ratio: float = _RESIZE_RATIO,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        super().__init__(size, resize_ratio, mean, std)

    def __call__(self, image: Image.Image) -> Tensor:
        return self._finish(center_crop(resize_shorter(image.convert("RGB"), self.resize_to), self.size))


# ---------------------------------------------------------------------------------------------------------------------
# Metadata files


def _read_optional(path: Path, ncols: int, what: str) -> dict[int, list[str]] | None:
    return _read_table(path, ncols, what) if path.is_file() else None


def _read_table(path: Path, ncols: int, what: str) -> dict[int, list[str]]:
    """Parse ``"<id> <field> ..."`` lines into ``{id: fields}``; the last field may hold spaces when ``ncols == 2``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found; a CUB-200-2011 root holds {_CONTENTS}")
    table: dict[int, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1) if ncols == 2 else line.split()
            if len(parts) != ncols:
                raise DataError(f"{path}, line {lineno}: expected {what}, got {line.strip()!r}")
            try:
                key = int(parts[0])
            except ValueError:
                raise DataError(f"{path}, line {lineno}: expected an integer id first, got {line.strip()!r}") from None
            if key in table:
                raise DataError(f"{path}, line {lineno}: id {key} appears twice")
            table[key] = [p.strip() for p in parts[1:]]
    return table


def _int_field(path: Path, key: int, value: str, allowed: range) -> int:
    try:
        v = int(value)
    except ValueError:
        v = allowed.start - 1
    if v not in allowed:
        raise DataError(f"{path}: id {key}: expected an integer in {allowed.start}-{allowed.stop - 1}, got {value!r}")
    return v


def _check_same_ids(base: Path, ids: set[int], other: Path, other_ids: set[int]) -> None:
    if ids != other_ids:
        only_base, only_other = sorted(ids - other_ids)[:5], sorted(other_ids - ids)[:5]
        raise DataError(
            f"{other}: image ids disagree with {base} (ids only in {base.name}: {only_base}, "
            f"only in {other.name}: {only_other}; first five shown)"
        )


class CUB200(Dataset[tuple[Tensor, int]]):
    """CUB-200-2011 bird species, one split, with the paper's Inception-style transforms.

    Args:
        root: The ``CUB_200_2011`` directory (holding ``images.txt`` and ``images/``).
        split: ``"train"`` or ``"test"`` (``train_test_split.txt``).
        size: Output side, 224 or 448 in the paper.
        transform: Maps a PIL RGB image to a tensor. Default: :class:`CUBTrainTransform` for ``"train"``,
            :class:`CUBTestTransform` for ``"test"``, built from the arguments below.
        resize_ratio: Shorter side before cropping, relative to ``size`` (256/224).
        mean: RGB mean for normalisation (ImageNet's), or ``None`` for images in [0, 1].
        std: RGB standard deviation, or ``None``.
        generator: Random source of the default train transform (see the module note on DataLoader workers).
        check_files: Check at construction that every image of the split exists.

    Items are ``(image, label)``: image ``(3, size, size)`` float32, label an int in 0-199.

    Attributes:
        samples: ``(path, label)`` per item, in image id order.
        image_ids: The ``images.txt`` id of each item.
        classes: Class names from ``classes.txt`` (index = label), or ``None`` without that file.
        boxes: ``(N, 4)`` float32 ``(x, y, width, height)`` boxes in original pixels from ``bounding_boxes.txt``, or
            ``None`` without that file.

    Raises:
        FileNotFoundError: ``root``, ``images.txt``, ``train_test_split.txt``, ``image_class_labels.txt`` or an image
            listed for the split is missing; the message names the path.
        ValueError: A metadata line is malformed, the files disagree on the image ids, or a class is out of range;
            the message names the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        size: int = 448,
        *,
        transform: Callable[[Image.Image], Tensor] | None = None,
        resize_ratio: float = _RESIZE_RATIO,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        generator: torch.Generator | None = None,
        check_files: bool = True,
    ) -> None:
        check_choice(split, "split", CUB_SPLITS)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"{self.root}: CUB-200-2011 directory not found; it should hold {_CONTENTS}")
        if transform is None:
            if split == "train":
                transform = CUBTrainTransform(size, resize_ratio, mean=mean, std=std, generator=generator)
            else:
                transform = CUBTestTransform(size, resize_ratio, mean=mean, std=std)
        self.transform = transform
        self.split = split

        paths = {name: self.root / name for name in _REQUIRED}
        images = _read_table(paths["images.txt"], 2, "'<id> <relative path>'")
        is_train = _read_table(paths["train_test_split.txt"], 2, "'<id> <1 train | 0 test>'")
        class_of = _read_table(paths["image_class_labels.txt"], 2, "'<id> <class id>'")
        _check_same_ids(paths["images.txt"], set(images), paths["train_test_split.txt"], set(is_train))
        _check_same_ids(paths["images.txt"], set(images), paths["image_class_labels.txt"], set(class_of))

        names = _read_optional(self.root / "classes.txt", 2, "'<class id> <name>'")
        self.classes: list[str] | None = None
        num_classes = _NUM_CLASSES
        if names is not None:
            num_classes = len(names)
            if set(names) != set(range(1, num_classes + 1)):
                raise DataError(f"{self.root / 'classes.txt'}: class ids should be 1-{num_classes}, each once")
            self.classes = [names[k][0] for k in range(1, num_classes + 1)]
        self.num_classes = num_classes

        split_path, labels_path = paths["train_test_split.txt"], paths["image_class_labels.txt"]
        in_train = {k: _int_field(split_path, k, v[0], range(2)) for k, v in is_train.items()}
        label_of = {k: _int_field(labels_path, k, v[0], range(1, num_classes + 1)) - 1 for k, v in class_of.items()}
        ids = [k for k in sorted(images) if in_train[k] == (split == "train")]
        labels = [label_of[k] for k in ids]
        self.image_ids = ids
        self.samples = [(self.root / "images" / images[k][0], label) for k, label in zip(ids, labels, strict=True)]
        if check_files:
            for path, _ in self.samples:
                if not path.is_file():
                    raise DataNotFoundError(
                        f"{path}: image listed in {paths['images.txt']} not found; images/ should hold each listed file"
                    )

        boxes = _read_optional(self.root / "bounding_boxes.txt", 5, "'<id> <x> <y> <width> <height>'")
        self.boxes: Tensor | None = None
        if boxes is not None:
            _check_same_ids(paths["images.txt"], set(images), self.root / "bounding_boxes.txt", set(boxes))
            try:
                self.boxes = torch.tensor([[float(v) for v in boxes[k]] for k in ids], dtype=torch.float32)  # (N, 4)
            except ValueError as err:
                raise DataError(f"{self.root / 'bounding_boxes.txt'}: expected numbers: {err}") from None
            self.boxes = self.boxes.reshape(len(ids), 4)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb), label
