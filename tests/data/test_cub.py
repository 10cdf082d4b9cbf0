"""CUB-200-2011 loader and transforms on a tiny dataset written in the standard folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchstn.data.cub import (
    CUB200,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CUBTestTransform,
    CUBTrainTransform,
    center_crop,
    normalize,
    random_crop,
    resize_shorter,
    to_tensor,
)
from torchstn.errors import OptionError

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# (id, class id 1-3, is_train, (width, height)); ids deliberately not in folder order.
IMAGES = [
    (1, 1, 1, (60, 40)),
    (2, 1, 0, (40, 50)),
    (3, 2, 1, (50, 50)),
    (4, 2, 0, (64, 48)),
    (5, 3, 1, (45, 70)),
    (6, 3, 0, (70, 45)),
    (7, 1, 1, (52, 38)),
]


def rel_path(image_id: int, cls: int) -> str:
    return f"{CLASSES[cls - 1]}/{CLASSES[cls - 1].split('.')[1]}_{image_id:04d}.jpg"


def write_cub(root: Path, *, classes: bool = True, boxes: bool = True) -> Path:
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {"images": [], "split": [], "labels": [], "boxes": []}
    for image_id, cls, train, (w, h) in IMAGES:
        rel = rel_path(image_id, cls)
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / rel, quality=95)
        lines["images"].append(f"{image_id} {rel}")
        lines["split"].append(f"{image_id} {train}")
        lines["labels"].append(f"{image_id} {cls}")
        lines["boxes"].append(f"{image_id} 2.0 3.0 {w - 4}.0 {h - 5}.0")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    if classes:
        (root / "classes.txt").write_text("".join(f"{k} {name}\n" for k, name in enumerate(CLASSES, 1)))
    if boxes:
        (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    return root


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cub(tmp_path_factory.mktemp("CUB_200_2011"))


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_splits_labels_and_metadata(cub_root: Path) -> None:
    train = CUB200(cub_root, "train", 224)
    test = CUB200(cub_root, "test", 224)
    assert train.image_ids == [1, 3, 5, 7] and test.image_ids == [2, 4, 6]
    assert [label for _, label in train.samples] == [0, 1, 2, 0]  # 0-based
    assert [label for _, label in test.samples] == [0, 1, 2]
    assert train.samples[1][0] == cub_root / "images" / rel_path(3, 2)
    assert train.classes == CLASSES and train.num_classes == 3
    assert train.boxes is not None and train.boxes.shape == (4, 4)
    assert train.boxes[0].tolist() == [2.0, 3.0, 56.0, 35.0]
    _, label = test[1]
    assert label == 1 and isinstance(label, int)
    no_meta = CUB200(write_cub(cub_root.parent / "bare", classes=False, boxes=False), "test")
    assert no_meta.classes is None and no_meta.boxes is None and no_meta.num_classes == 200


@pytest.mark.parametrize("size", [224, 448])
@pytest.mark.parametrize("split", ["train", "test"])
def test_output_sizes(cub_root: Path, split: str, size: int) -> None:
    ds = CUB200(cub_root, split, size, generator=torch.Generator().manual_seed(0))
    for i in range(len(ds)):
        image, _ = ds[i]
        assert image.shape == (3, size, size) and image.dtype == torch.float32


def test_test_transform_is_deterministic_and_centred(cub_root: Path) -> None:
    ds = CUB200(cub_root, "test", 224, mean=None, std=None)
    torch.testing.assert_close(ds[0][0], ds[0][0])
    # Hand check: a 224 x 300 image resized with ratio 1 keeps its size; the centre crop drops 38 columns each side.
    image = noise_image(300, 224)
    out = CUBTestTransform(224, resize_ratio=1.0, mean=None, std=None)(image)
    torch.testing.assert_close(out, to_tensor(image)[:, :, 38:262])
    assert resize_shorter(image, 256).size == (343, 256)
    assert CUBTestTransform(448).resize_to == 512 and CUBTestTransform(224).resize_to == 256


def test_train_transform_is_random_but_seeded(cub_root: Path) -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        ds = CUB200(cub_root, "train", 224, generator=torch.Generator().manual_seed(seed))
        return [ds[i][0] for i in (0, 0, 1)]

    a, b, c = epoch(0), epoch(0), epoch(1)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)  # same seed, same draws
    assert not torch.equal(a[0], a[1])  # the same image twice: different crops or flips
    assert any(not torch.equal(x, z) for x, z in zip(a, c, strict=True))  # another seed, other draws


def test_random_crop_is_a_crop_of_the_resized_image() -> None:
    image = noise_image(48, 32)  # resize ratio 1 keeps it: crops are columns [x, x + 32) for x in 0-16
    t = CUBTrainTransform(
        32, resize_ratio=1.0, flip_p=0.0, mean=None, std=None, generator=torch.Generator().manual_seed(0)
    )
    full = to_tensor(image)
    lefts = set()
    for _ in range(8):
        out = t(image)
        matches = [x for x in range(17) if torch.equal(out, full[:, :, x : x + 32])]
        assert len(matches) == 1
        lefts.add(matches[0])
    assert len(lefts) > 1
    with pytest.raises(ValueError, match="at least that large"):
        random_crop(image, 40)


def test_flip_actually_flips() -> None:
    image = noise_image(80, 60)
    plain = CUBTrainTransform(224, flip_p=0.0, mean=None, std=None, generator=torch.Generator().manual_seed(3))(image)
    flipped = CUBTrainTransform(224, flip_p=1.0, mean=None, std=None, generator=torch.Generator().manual_seed(3))(image)
    torch.testing.assert_close(flipped, plain.flip(-1))
    assert not torch.equal(flipped, plain)


def test_normalisation(cub_root: Path) -> None:
    raw = CUB200(cub_root, "test", 224, mean=None, std=None)[0][0]
    assert raw.min() >= 0 and raw.max() <= 1
    norm = CUB200(cub_root, "test", 224)[0][0]
    torch.testing.assert_close(norm, normalize(raw, IMAGENET_MEAN, IMAGENET_STD))
    assert center_crop(noise_image(10, 10), 4).size == (4, 4)


def test_bad_options(cub_root: Path) -> None:
    with pytest.raises(OptionError, match="split"):
        CUB200(cub_root, "val")
    with pytest.raises(OptionError, match="resize_ratio"):
        CUB200(cub_root, "train", resize_ratio=0.5)
    with pytest.raises(OptionError, match="mean, std"):
        CUB200(cub_root, "train", std=None)
    with pytest.raises(OptionError, match="flip_p"):
        CUBTrainTransform(flip_p=2.0)


@pytest.mark.parametrize("name", ["images.txt", "train_test_split.txt", "image_class_labels.txt"])
def test_missing_metadata_file_is_named(tmp_path: Path, name: str) -> None:
    root = write_cub(tmp_path)
    (root / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name}: file not found; a CUB-200-2011 root holds images\.txt"):
        CUB200(root, "train")


def test_missing_root_and_image_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: CUB-200-2011 directory not found"):
        CUB200(tmp_path / "nowhere")
    root = write_cub(tmp_path / "cub")
    missing = root / "images" / rel_path(4, 2)
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing.name}: image listed in .*images\.txt not found"):
        CUB200(root, "test")
    assert len(CUB200(root, "train")) == 4  # the other split is complete


def test_inconsistent_metadata(tmp_path: Path) -> None:
    root = write_cub(tmp_path)
    labels = root / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("7 1\n", ""))
    with pytest.raises(ValueError, match=r"image_class_labels\.txt: image ids disagree .*only in images\.txt: \[7\]"):
        CUB200(root)
    labels.write_text(labels.read_text() + "7 4\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt: id 7: expected an integer in 1-3"):
        CUB200(root)
    labels.write_text(labels.read_text().replace("7 4\n", "7 1\n"))
    split = root / "train_test_split.txt"
    split.write_text(split.read_text() + "oops\n")
    with pytest.raises(ValueError, match=r"train_test_split\.txt, line 8"):
        CUB200(root)
    split.write_text(split.read_text().replace("oops\n", "3 0\n"))
    with pytest.raises(ValueError, match=r"train_test_split\.txt, line 8: id 3 appears twice"):
        CUB200(root)
