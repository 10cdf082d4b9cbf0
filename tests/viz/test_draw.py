"""torchstn.viz.draw: sheets, transformer drawings, boxes, and files written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from tests.viz._helpers import has_colour, set_bias, two_head_attention
from torchstn.errors import ShapeError
from torchstn.modules import (
    ParallelSpatialTransformer,
    SpatialTransformer,
    mlp_localisation,
)
from torchstn.transforms import Affine, Affine3D, Attention, ThinPlateSpline
from torchstn.viz import (
    HEAD_COLOURS,
    TransformerRecord,
    attention_boxes,
    capture,
    control_point_pixels,
    draw_boxes,
    draw_record,
    plot_curves,
    save_transformer_pictures,
    sheet,
)


def test_draw_record_size_and_head_colours(images: Tensor) -> None:
    [rec] = capture(two_head_attention(), images)
    img = draw_record(rec, max_items=5, zoom=2, ncols=3, margin=0.25)
    m = 7  # round(0.25 * 28)
    cell_w = (28 + 2 * m) * 2 + 2 * (28 * 2 + 2 + 4) + 4
    cell_h = (28 + 2 * m) * 2 + 4
    assert img.mode == "RGB"
    assert img.size == (3 * cell_w + 4, 14 + 2 * cell_h + 4)
    assert has_colour(img, HEAD_COLOURS[0]) and has_colour(img, HEAD_COLOURS[1])
    assert draw_record(rec, max_items=1, title="").size == ((28 + 2 * m) * 3 + 2 * (28 * 3 + 6) + 8, 42 * 3 + 8)


def test_draw_record_feature_maps_and_small_outputs(gen: torch.Generator) -> None:
    t = Attention()
    st = SpatialTransformer(mlp_localisation((5, 24, 24), t), t, output_size=(8, 8))
    set_bias(st, torch.tensor([1 / 3, 0.2, -0.1]))
    [rec] = capture(st, torch.randn(3, 5, 24, 24, generator=gen))  # normalised, many channels
    img = draw_record(rec, zoom=1, margin=0.0, title="")
    assert img.size == (4 + 3 * (24 + 24 + 2 + 4 + 4), 24 + 2 + 4 + 4)  # the 8x8 output enlarged 3x


def test_draw_record_rejects_volumes() -> None:
    t = Affine3D()
    vol = torch.rand(1, 1, 4, 6, 6)
    rec = TransformerRecord("v", vol, vol, t.identity_params(1), t)
    with pytest.raises(ShapeError, match="2D"):
        draw_record(rec)


def test_save_transformer_pictures(st_cnn: nn.Module, images: Tensor, tmp_path: Path) -> None:
    a = math.radians(30)
    set_bias(st_cnn.transformer, torch.tensor([math.cos(a), -math.sin(a), 0.1, math.sin(a), math.cos(a), 0.0]))  # type: ignore[arg-type]
    [path] = save_transformer_pictures(st_cnn, images, tmp_path / "pics", epoch=2, max_items=4, zoom=2)
    assert path == tmp_path / "pics" / "transformer_epoch0002.png"
    with Image.open(path) as img:
        [rec] = capture(st_cnn, images)
        assert img.size == draw_record(rec, max_items=4, zoom=2).size
        assert has_colour(img.convert("RGB"), HEAD_COLOURS[0])
    assert not list(path.parent.glob("*.tmp"))


def test_save_transformer_pictures_names_each_module(images: Tensor, tmp_path: Path) -> None:
    t = Affine()
    sts = [SpatialTransformer(mlp_localisation((1, 28, 28), t), t) for _ in range(2)]
    model = nn.Sequential(ParallelSpatialTransformer(sts))
    paths = save_transformer_pictures(model, images, tmp_path)
    assert [p.name for p in paths] == ["0_transformers_0.png", "0_transformers_1.png"]
    assert all(p.is_file() for p in paths)


def test_draw_boxes(images: Tensor) -> None:
    pred = attention_boxes(torch.tensor([[0.5, 0.0, 0.0]]).expand(6, 3), (28, 28))
    true = torch.tensor([[4, 4, 24, 24]]).expand(6, 4)
    img = draw_boxes(images, pred, true, ncols=3, zoom=2)
    assert img.size == sheet(images, ncols=3, zoom=2).size
    assert has_colour(img, (0, 220, 0)) and has_colour(img, (255, 60, 60))
    with pytest.raises(ShapeError, match="pred_boxes"):
        draw_boxes(images, pred[:2])


def test_concurrent_writers_of_one_picture_neither_crash_nor_leave_temporaries(tmp_path: Path) -> None:
    """Two writers of the same target (two ``torchstn data`` runs at once) use unique temporary names."""
    import threading

    from torchstn._io import stale_temporaries
    from torchstn.viz import save_sheet

    target = tmp_path / "sheet.png"
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        try:
            for _ in range(15):
                save_sheet(target, x)
                plot_curves([{"epoch": 0, "loss": 1.0 + seed}, {"epoch": 1, "loss": 0.5}], tmp_path / "curves.png")
        except BaseException as err:  # pragma: no cover - the failure this test is about
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stale_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "sheet.png"]
    Image.open(target).verify()


def test_one_colour_mapping_for_sheets_and_drawings(gen: torch.Generator) -> None:
    """Sheets and transformer drawings share one ``_to_rgb``: uint8 and [0, 1] floats give the same pixels."""
    from torchstn.viz.draw import _to_rgb

    x = torch.rand(2, 1, 5, 5, generator=gen)
    as_uint8 = (x * 255).round().to(torch.uint8)
    np.testing.assert_array_equal(_to_rgb(x), _to_rgb(as_uint8))
    np.testing.assert_array_equal(_to_rgb(x)[..., 0], (x[:, 0].numpy() * 255).round().astype(np.uint8))
    two = _to_rgb(torch.stack((torch.ones(5, 5), torch.zeros(5, 5)))[None])  # red and green, blue empty
    assert (two[0, ..., 0] == 255).all() and (two[0, ..., 1:] == 0).all()
    many = _to_rgb(torch.rand(1, 6, 5, 5, generator=gen), lo=torch.tensor([0.0]), hi=torch.tensor([1.0]))
    assert (many[..., 0] == many[..., 1]).all()  # more than 3 channels: the mean, grey
    assert (_to_rgb(torch.full((1, 1, 2, 2), float("nan"))) == 0).all()
    tile = sheet(x[:1], ncols=1, zoom=1)
    np.testing.assert_array_equal(np.asarray(tile)[2:7, 2:7], _to_rgb(x[:1])[0])  # the sheet shows exactly these


def _tps_record(params: Tensor, tps: ThinPlateSpline, size: tuple[int, int] = (32, 100)) -> TransformerRecord:
    x = torch.zeros(params.shape[0], 1, *size)
    return TransformerRecord("rectifier", x, x.clone(), params, tps)


def test_control_point_pixels_are_the_source_positions_in_pixels() -> None:
    tps = ThinPlateSpline.fiducials(k=20, margin=0.05)
    ident = tps.identity_params(2, dtype=torch.float64)
    px = control_point_pixels(tps, ident, (32, 100))
    assert px is not None and px.shape == (2, 20, 2)
    # x = -0.9 is 0.05 * 100 = 5 pixels in from the left edge, i.e. at 4.5 in pixel-centre coordinates.
    torch.testing.assert_close(px[0, 0], torch.tensor([4.5, 0.05 * 32 - 0.5], dtype=torch.float64))
    torch.testing.assert_close(px[0, 19], torch.tensor([94.5, 0.95 * 32 - 0.5], dtype=torch.float64))
    corners = control_point_pixels(tps, ident, (32, 100), align_corners=True)
    assert corners is not None
    torch.testing.assert_close(corners[0, 0], torch.tensor([0.05 * 99, 0.05 * 31], dtype=torch.float64))
    heads = control_point_pixels(tps, ident.view(1, 2, 40), (32, 100))  # (B, N, 2K) -> (B, N, K, 2)
    assert heads is not None and heads.shape == (1, 2, 20, 2)
    assert control_point_pixels(Affine(), Affine().identity_params(1), (28, 28)) is None


def test_draw_record_marks_each_fiducial_where_it_reads_the_input() -> None:
    tps = ThinPlateSpline.fiducials(k=20, margin=0.05)
    params = tps.identity_params(1).clone()
    params[0, 1] += 0.2  # the first top fiducial moved down
    rec = _tps_record(params, tps)
    kw = {"zoom": 2, "margin": 0.1, "mesh": 0, "title": ""}
    with_dots = np.asarray(draw_record(rec, points=True, **kw)).astype(int)
    without = np.asarray(draw_record(rec, points=False, **kw)).astype(int)
    assert with_dots.shape == without.shape
    pixels = control_point_pixels(tps, params, (32, 100))
    assert pixels is not None
    m, pad = 10, 4  # round(0.1 * 100) margin pixels, cell padding
    centres = (pixels[0] + 0.5 + m) * 2 + pad  # canvas pixels (the first cell sits at (pad, pad))
    changed = np.argwhere((with_dots != without).any(-1))  # (n, 2) as (row, col)
    assert len(changed) > 0
    for cx, cy in centres.tolist():
        r, c = round(cy), round(cx)
        assert tuple(with_dots[r, c]) == HEAD_COLOURS[0], (cx, cy)  # a dot in the head's colour on each point
    d = np.sqrt(((changed[:, None, ::-1] - centres.numpy()[None]) ** 2).sum(-1)).min(1)
    assert d.max() <= 3.0  # nothing else changed: every changed pixel is within a dot's radius
    assert has_colour(Image.fromarray(with_dots.astype(np.uint8)), (255, 255, 255))  # the white ring


def test_draw_record_draws_no_points_for_matrix_families(images: Tensor) -> None:
    t = Affine()
    rec = TransformerRecord("aff", images, images, t.identity_params(len(images)), t)
    assert np.array_equal(np.asarray(draw_record(rec, points=True)), np.asarray(draw_record(rec, points=False)))
    with pytest.raises(TypeError, match="points"):
        draw_record(rec, points="yes")  # type: ignore[arg-type]


def test_sheet_captions_digit_sequences_without_the_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageDraw

    texts: list[str] = []
    real = ImageDraw.ImageDraw.text

    def record(self: ImageDraw.ImageDraw, xy: object, text: str, *args: object, **kwargs: object) -> None:
        texts.append(text)
        real(self, xy, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    labels = torch.tensor([[7, 0, 5, 10, 10], [1, 2, 3, 4, 5]])
    img = sheet(torch.zeros(2, 1, 8, 20), labels=labels)
    assert texts == ["705", "12345"] and img.size[0] > 0
    texts.clear()
    sheet(torch.zeros(2, 1, 8, 8), labels=torch.tensor([3, 10]))  # class labels: as they are
    assert texts == ["3", "10"]
