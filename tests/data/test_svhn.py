"""SVHN loaders on tiny files written in the real on-disk formats.

``digitStruct.mat`` is written as MATLAB v7.3 does: an HDF5 file behind a 512-byte MATLAB header, a ``digitStruct``
group of ``(N, 1)`` reference datasets, names as ``(L, 1)`` uint16 character codes, bbox fields as ``(1, 1)`` doubles
for a one-digit image and ``(K, 1)`` references to ``(1, 1)`` doubles for a ``K``-digit image, all referenced
objects under ``#refs#``. The cropped-digit files are MATLAB v5 files written with ``scipy.io.savemat``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py  # type: ignore[import-untyped]
import numpy as np
import pytest
import scipy.io  # type: ignore[import-untyped]
import torch
from PIL import Image

from torchstn.data.svhn import (
    NO_DIGIT,
    SVHNMultiDigit,
    SVHNRecord,
    crop_region,
    encode_digits,
    load_svhn_cropped,
    preprocess_svhn_split,
    read_digit_struct,
    svhn_crop,
)
from torchstn.errors import OptionError

# (left, top, width, height, file label); label 10 is the digit 0.
Digit = tuple[float, float, float, float, int]

# The bright-rectangle image: two digits whose union box is x in [40, 60), y in [20, 60) of a 100 x 80 image.
W, H = 100, 80
ENTRIES: list[tuple[str, list[Digit]]] = [
    ("1.png", [(10, 5, 8, 15, 5)]),
    ("2.png", [(40, 20, 10, 40, 1), (50, 20, 10, 40, 10)]),
    ("3.png", [(5 + 6 * k, 30, 6, 12, k + 1) for k in range(6)]),  # six digits: too long
    ("4.png", [(20, 10, 7, 14, 3), (27, 11, 7, 14, 10), (34, 12, 7, 14, 9)]),
]


def write_digit_struct(path: Path, entries: list[tuple[str, list[Digit]]]) -> None:
    """Write ``entries`` as a MATLAB v7.3 ``digitStruct.mat``."""
    counter = itertools.count()
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def dataset(data: np.ndarray, matlab_class: str) -> h5py.Dataset:
            ds = refs.create_dataset(f"r{next(counter)}", data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            return ds

        root = f.create_group("digitStruct")
        root.attrs["MATLAB_class"] = np.bytes_("struct")
        name_refs, bbox_refs = [], []
        for name, digits in entries:
            name_refs.append(dataset(np.array([[ord(c)] for c in name], dtype=np.uint16), "char").ref)  # (L, 1)
            group = refs.create_group(f"r{next(counter)}")
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            for j, key in enumerate(("left", "top", "width", "height", "label")):
                values = [float(d[j]) for d in digits]
                if len(values) == 1:
                    ds = group.create_dataset(key, data=np.array([[values[0]]]))  # (1, 1) double
                else:
                    scalars = [[dataset(np.array([[v]]), "double").ref] for v in values]
                    ds = group.create_dataset(key, data=np.array(scalars, dtype=h5py.ref_dtype))  # (K, 1) refs
                ds.attrs["MATLAB_class"] = np.bytes_("double" if len(values) == 1 else "cell")
            bbox_refs.append(group.ref)
        root.create_dataset("name", data=np.array([[r] for r in name_refs], dtype=h5py.ref_dtype))  # (N, 1)
        root.create_dataset("bbox", data=np.array([[r] for r in bbox_refs], dtype=h5py.ref_dtype))  # (N, 1)
    with path.open("r+b") as fh:  # MATLAB's text header inside the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 HDF5 schema 1.00 .")


def bright_rectangle_image() -> Image.Image:
    """Black 100 x 80 image, white over the union box of entry ``2.png``."""
    a = np.zeros((H, W, 3), dtype=np.uint8)
    a[20:60, 40:60] = 255
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("svhn")
    split = root / "train"
    split.mkdir()
    write_digit_struct(split / "digitStruct.mat", ENTRIES)
    rng = np.random.default_rng(0)
    for name, _ in ENTRIES:
        image = (
            bright_rectangle_image() if name == "2.png" else Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8))
        )
        image.save(split / name)
    return root


def test_read_digit_struct_handles_scalar_and_reference_fields(svhn_root: Path) -> None:
    records = read_digit_struct(svhn_root / "train" / "digitStruct.mat")
    assert [r.name for r in records] == ["1.png", "2.png", "3.png", "4.png"]
    assert records[0] == SVHNRecord("1.png", ((10.0, 5.0, 8.0, 15.0),), (5,))
    assert records[1] == SVHNRecord("2.png", ((40.0, 20.0, 10.0, 40.0), (50.0, 20.0, 10.0, 40.0)), (1, 0))  # 10 -> 0
    assert records[2].labels == (1, 2, 3, 4, 5, 6)
    assert records[3].labels == (3, 0, 9)
    assert records[3].boxes[2] == (34.0, 12.0, 7.0, 14.0)


def test_crop_region_expands_the_union_box_by_30_percent_centred() -> None:
    boxes = [(40.0, 20.0, 10.0, 40.0), (50.0, 20.0, 10.0, 40.0)]  # union: x 40-60, y 20-60
    assert crop_region(boxes, (W, H)) == pytest.approx((37.0, 14.0, 63.0, 66.0))
    assert crop_region(boxes, (W, H), expand=0.0) == pytest.approx((40.0, 20.0, 60.0, 60.0))
    assert crop_region(boxes, (W, H), square=True) == pytest.approx((24.0, 14.0, 76.0, 66.0))
    assert crop_region([(0.0, 0.0, 10.0, 10.0)], (50, 50)) == pytest.approx((0.0, 0.0, 11.5, 11.5))  # clamped
    assert crop_region([(45.0, 45.0, 10.0, 10.0)], (50, 50)) == pytest.approx((43.5, 43.5, 50.0, 50.0))
    assert crop_region([(200.0, 200.0, 5.0, 5.0)], (50, 50)) == (0.0, 0.0, 50.0, 50.0)  # wholly outside


@pytest.mark.parametrize("size", [64, 128])
def test_crop_puts_the_union_box_where_expected(size: int) -> None:
    boxes = [(40.0, 20.0, 10.0, 40.0), (50.0, 20.0, 10.0, 40.0)]
    out = svhn_crop(bright_rectangle_image(), boxes, size)
    assert out.shape == (3, size, size) and out.dtype == torch.uint8
    # Crop (37, 14)-(63, 66) is 26 x 52 pixels: the white box starts 3/26 and 6/52 in and ends 23/26 and 46/52 in,
    # i.e. at 7.38 and 56.6 of 64 in both axes. Bilinear blurring keeps the half-intensity crossing at the edge.
    lo, hi = size * 3 / 26, size * 23 / 26
    bright = out[0].float() > 127.5
    cols = bright.any(0).nonzero().flatten()
    rows = bright.any(1).nonzero().flatten()
    for idx in (cols, rows):
        assert abs(idx[0].item() + 0.5 - lo) <= 1 and abs(idx[-1].item() + 0.5 - hi) <= 1
    inner = slice(round(lo) + 3, round(hi) - 3)
    assert (out[:, inner, inner] == 255).all()
    assert (out[:, : round(lo) - 3] == 0).all() and (out[:, round(hi) + 3 :] == 0).all()


def test_encode_digits_pads_with_the_no_digit_class() -> None:
    assert encode_digits([1, 0]).tolist() == [1, 0, NO_DIGIT, NO_DIGIT, NO_DIGIT]
    assert encode_digits([0]).tolist() == [0, 10, 10, 10, 10]  # digit 0 is class 0, padding is class 10
    assert encode_digits([9, 8, 7, 6, 5]).tolist() == [9, 8, 7, 6, 5]
    with pytest.raises(ValueError, match="1 to 5 digits"):
        encode_digits([1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="0-9"):
        encode_digits([10])


def test_dataset_items_and_dropping_long_numbers(svhn_root: Path) -> None:
    ds = SVHNMultiDigit(svhn_root, "train")
    assert len(ds) == 3 and ds.num_dropped == 1  # the six-digit 3.png is left out
    assert [r.name for r in ds.records] == ["1.png", "2.png", "4.png"]
    image, labels, length = ds[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert labels.dtype == torch.long and labels.tolist() == [1, 0, 10, 10, 10]
    assert length.dtype == torch.long and length.item() == 2
    assert ds[2][1].tolist() == [3, 0, 9, 10, 10]
    torch.testing.assert_close(image, svhn_crop(bright_rectangle_image(), ds.records[1].boxes).float() / 255)
    assert SVHNMultiDigit(svhn_root, "train", size=128)[0][0].shape == (3, 128, 128)
    flipped = SVHNMultiDigit(svhn_root, "train", transform=lambda x: x.flip(-1))
    torch.testing.assert_close(flipped[0][0], ds[0][0].flip(-1))


def test_long_numbers_raise_on_request(svhn_root: Path) -> None:
    with pytest.raises(ValueError, match=r"more than 5 digits \(first: 3.png, 6 digits\)"):
        SVHNMultiDigit(svhn_root, "train", too_long="raise")
    ds = SVHNMultiDigit(svhn_root, "train", max_digits=6)
    assert len(ds) == 4 and ds.num_dropped == 0 and ds[2][1].tolist() == [1, 2, 3, 4, 5, 6]


def test_preprocess_split_matches_the_dataset(svhn_root: Path) -> None:
    images, labels, lengths = preprocess_svhn_split(svhn_root, "train")
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.shape == (3, 5) and labels.dtype == torch.long
    assert lengths.tolist() == [1, 2, 3]
    ds = SVHNMultiDigit(svhn_root, "train")
    for i in range(3):
        torch.testing.assert_close(images[i].float() / 255, ds[i][0])
        assert labels[i].tolist() == ds[i][1].tolist()
    as_float = preprocess_svhn_split(svhn_root, "train", dtype=torch.float32, num_threads=2)
    assert as_float.images.dtype == torch.float32
    torch.testing.assert_close(as_float.images, images.float() / 255)


def test_bad_options() -> None:
    with pytest.raises(OptionError, match="split"):
        SVHNMultiDigit("/nonexistent", "validation")
    with pytest.raises(OptionError, match="too_long"):
        SVHNMultiDigit("/nonexistent", "train", too_long="truncate")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="expand"):
        SVHNMultiDigit("/nonexistent", "train", expand=-0.1)


def test_missing_split_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test: SVHN split directory not found.*digitStruct\.mat"):
        SVHNMultiDigit(tmp_path, "test")


def test_missing_digit_struct_names_it(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train/digitStruct\.mat: file not found.*1\.png"):
        SVHNMultiDigit(tmp_path, "train")


def test_missing_image_names_it(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    write_digit_struct(tmp_path / "train" / "digitStruct.mat", ENTRIES[:2])
    bright_rectangle_image().save(tmp_path / "train" / "1.png")
    with pytest.raises(FileNotFoundError, match=r"train/2\.png: image named in digitStruct\.mat not found"):
        SVHNMultiDigit(tmp_path, "train")


def test_digit_struct_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "digitStruct.mat"
    scipy.io.savemat(path, {"digitStruct": np.zeros(3)})  # a MATLAB v5 file, not v7.3
    with pytest.raises(ValueError, match=r"digitStruct\.mat: not an HDF5 file"):
        read_digit_struct(path)


def test_hdf5_without_digit_struct(tmp_path: Path) -> None:
    path = tmp_path / "digitStruct.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"digitStruct\.mat: no 'digitStruct' group"):
        read_digit_struct(path)


def test_malformed_bbox_names_the_record(tmp_path: Path) -> None:
    path = tmp_path / "digitStruct.mat"
    write_digit_struct(path, ENTRIES[:2])
    with h5py.File(path, "r+") as f:
        del f[f["digitStruct/bbox"][1, 0]]["label"]
    with pytest.raises(ValueError, match=r"digitStruct\.mat: record 1: malformed entry"):
        read_digit_struct(path)


def test_bad_label_value(tmp_path: Path) -> None:
    path = tmp_path / "digitStruct.mat"
    write_digit_struct(path, [("1.png", [(1, 1, 5, 5, 11)])])
    with pytest.raises(ValueError, match=r"record 0 \(1.png\): digit label 11.0 is not one of 1-10"):
        read_digit_struct(path)


def test_load_cropped_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)  # (H, W, C, N) as in train_32x32.mat
    y = np.array([[1], [10], [3], [10], [9], [5], [2]], dtype=np.uint8)  # (N, 1), 10 is the digit 0
    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(path, {"X": x, "y": y})
    images, labels = load_svhn_cropped(path)
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.long and labels.tolist() == [1, 0, 3, 0, 9, 5, 2]
    assert images[4, 2, 5, 17] == x[5, 17, 2, 4]  # images[n, c, h, w] == X[h, w, c, n]
    assert torch.equal(images[3], torch.from_numpy(x[..., 3]).permute(2, 0, 1))


def test_cropped_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train_32x32\.mat: file not found"):
        load_svhn_cropped(tmp_path / "train_32x32.mat")
    bad = tmp_path / "extra_32x32.mat"
    bad.write_text("not a mat file")
    with pytest.raises(ValueError, match=r"extra_32x32\.mat: cannot read as a MATLAB v5 file"):
        load_svhn_cropped(bad)
    wrong = tmp_path / "train_32x32.mat"
    scipy.io.savemat(wrong, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"train_32x32\.mat: X should have shape \(32, 32, 3, N\)"):
        load_svhn_cropped(wrong)
    v73 = tmp_path / "digitStruct.mat"
    write_digit_struct(v73, ENTRIES[:1])
    with pytest.raises(ValueError, match=r"digitStruct\.mat: cannot read"):
        load_svhn_cropped(v73)
