"""Pictures of what the transformers learnt: capture, outlines, boxes, drawings, GIFs and curves."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from torchstn.errors import OptionError, ShapeError
from torchstn.models import create_model
from torchstn.modules import (
    ParallelSpatialTransformer,
    SerialSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
    mlp_localisation,
    tiling_params,
)
from torchstn.transforms import Affine, Affine3D, Attention, Similarity, ThinPlateSpline, Transform
from torchstn.viz import (
    HEAD_COLOURS,
    EpochAnimator,
    TransformerRecord,
    attention_boxes,
    capture,
    draw_boxes,
    draw_record,
    grid_outline,
    plot_curves,
    save_transformer_pictures,
    sheet,
)


@pytest.fixture
def images(gen: torch.Generator) -> Tensor:
    return torch.rand(6, 1, 28, 28, generator=gen)


@pytest.fixture(scope="module")
def _st_cnn_once() -> nn.Module:
    return create_model("st_cnn_aff", input_shape=(1, 28, 28))


@pytest.fixture
def st_cnn(_st_cnn_once: nn.Module) -> nn.Module:
    """A fresh copy per test (building the model sizes its classifier, which takes a while)."""
    return copy.deepcopy(_st_cnn_once)


def two_head_attention(channels: int = 1, size: int = 28, combine: str = "stack") -> SpatialTransformer:
    t = Attention()
    loc = conv_localisation((channels, size, size), t, num_heads=2, init=tiling_params(1, 2))
    return SpatialTransformer(loc, t, combine=combine)  # type: ignore[arg-type]


def set_bias(st: SpatialTransformer, params: Tensor) -> None:
    """Make the (zero-weight) head output ``params`` for every input."""
    with torch.no_grad():
        st.localisation.head.linear.bias.copy_(params.reshape(-1))  # type: ignore[union-attr, operator]


def border(x0: float, y0: float, x1: float, y1: float) -> Tensor:
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def has_colour(img: Image.Image, rgb: tuple[int, int, int]) -> bool:
    return bool((np.asarray(img) == np.array(rgb, dtype=np.uint8)).all(-1).any())


# --- capture ----------------------------------------------------------------------------------------------------


def test_capture_records_the_transformer_at_identity(st_cnn: nn.Module, images: Tensor) -> None:
    records = capture(st_cnn, images)
    assert len(records) == 1
    rec = records[0]
    assert rec.name == "transformer"
    assert isinstance(rec.transform, Affine)
    assert rec.align_corners is False
    assert rec.input.shape == rec.output.shape == (6, 1, 28, 28)
    assert rec.params.shape == (6, 6)
    assert rec.num_heads == 1
    assert rec.src_size == (28, 28)
    assert rec.head_outputs.shape == (6, 1, 1, 28, 28)
    torch.testing.assert_close(rec.params, Affine().identity_params(6))
    torch.testing.assert_close(rec.input, images)
    torch.testing.assert_close(rec.output, images, atol=1e-5, rtol=0)  # identity reproduces the input


def test_capture_restores_modes_and_removes_hooks(st_cnn: nn.Module, images: Tensor) -> None:
    st_cnn.train()
    st_cnn.get_submodule("classifier").eval()  # a mixed state must survive, not be flattened by model.train()
    before = {name: m.training for name, m in st_cnn.named_modules()}
    capture(st_cnn, images)
    assert {name: m.training for name, m in st_cnn.named_modules()} == before
    assert all(not m._forward_hooks for m in st_cnn.modules())


def test_capture_runs_in_eval_mode_without_grad(images: Tensor) -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    st = SpatialTransformer(nn.Sequential(Probe(), mlp_localisation((1, 28, 28), Affine())), Affine())
    st.train()
    [rec] = capture(st, images)
    assert seen == [(False, False)]
    assert st.training and not rec.output.requires_grad


def test_capture_cleans_up_on_error(images: Tensor) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = SpatialTransformer(mlp_localisation((1, 28, 28), Affine()), Affine())

        def forward(self, x: Tensor) -> Tensor:
            self.st(x)
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, images)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("combine", ["stack", "concat"])
def test_capture_multi_head(images: Tensor, combine: str) -> None:
    st = two_head_attention(combine=combine)
    [rec] = capture(st, images)
    assert rec.num_heads == 2
    assert rec.params.shape == (6, 2, 3)
    torch.testing.assert_close(rec.params, tiling_params(1, 2).expand(6, 2, 3))
    assert rec.head_outputs.shape == (6, 2, 1, 28, 28)
    stacked = capture(two_head_attention(combine="stack"), images)[0].head_outputs
    torch.testing.assert_close(rec.head_outputs, stacked)


def test_capture_names_parallel_and_serial_transformers(images: Tensor) -> None:
    def st(t: Transform) -> SpatialTransformer:
        return SpatialTransformer(mlp_localisation((1, 28, 28), t), t)

    par = nn.Sequential(ParallelSpatialTransformer([st(Affine()), st(Attention())]))
    assert [r.name for r in capture(par, images)] == ["0.transformers.0", "0.transformers.1"]
    chain = SerialSpatialTransformer([st(Affine()), st(Attention())], compose=False)
    assert [r.name for r in capture(chain, images)] == ["stages.0", "stages.1"]


def test_capture_composed_chain_is_one_record(images: Tensor) -> None:
    a, b = Attention(), Similarity()
    sa = SpatialTransformer(mlp_localisation((1, 28, 28), a), a)
    sb = SpatialTransformer(mlp_localisation((1, 28, 28), b), b)
    set_bias(sa, torch.tensor([0.5, 0.2, 0.0]))
    set_bias(sb, torch.tensor([0.3, 0.1, 0.0, -0.1]))
    chain = SerialSpatialTransformer([sa, sb], compose=True)
    [rec] = capture(chain, images)
    assert rec.name == "" and isinstance(rec.transform, Affine)
    total = a.matrix(sa.last_params, src_size=(28, 28)) @ b.matrix(sb.last_params, src_size=(28, 28))  # type: ignore[arg-type]
    torch.testing.assert_close(rec.params, total[:, :2].reshape(-1, 6))
    torch.testing.assert_close(rec.output, chain(images))


# --- outlines and boxes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(28, 28), (20, 30)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_outline_at_identity_is_the_image_border(size: tuple[int, int], align_corners: bool) -> None:
    h, w = size
    [quad] = grid_outline(Affine(), Affine().identity_params(2), size, align_corners)
    assert quad.shape == (2, 5, 2)
    torch.testing.assert_close(quad[1], border(-0.5, -0.5, w - 0.5, h - 0.5))


def test_outline_of_a_centred_half_size_attention() -> None:
    [quad] = grid_outline(Attention(), torch.tensor([[0.5, 0.0, 0.0]]), (28, 28))
    torch.testing.assert_close(quad[0], border(6.5, 6.5, 20.5, 20.5))  # 14 pixels, 7..20, centred


def test_outline_keeps_head_dimensions() -> None:
    [quad] = grid_outline(Attention(), tiling_params(1, 2).expand(3, 2, 3), (28, 28))
    assert quad.shape == (3, 2, 5, 2)
    torch.testing.assert_close(quad[0, 0], border(-0.5, 6.5, 13.5, 20.5))  # left half
    torch.testing.assert_close(quad[0, 1], border(13.5, 6.5, 27.5, 20.5))  # right half


def test_outline_follows_a_rotation() -> None:
    # 90 degrees in pixel space on a 20x30 image: the output's top-left corner, (-15, -10) pixels from the centre
    # (14.5, 9.5), samples the input at R (-15, -10) = (10, -15) from the centre.
    [quad] = grid_outline(Similarity(), torch.tensor([[math.pi / 2, 0.0, 0.0, 0.0]]), (20, 30))
    torch.testing.assert_close(quad[0, 0], torch.tensor([24.5, -5.5]), atol=1e-4, rtol=0)


def test_tps_mesh_at_identity_is_the_regular_grid() -> None:
    tps = ThinPlateSpline((4, 4))
    lines = grid_outline(tps, tps.identity_params(1), (28, 28), samples=9)
    assert len(lines) == 14  # default: 7 horizontal + 7 vertical
    ticks = torch.linspace(-0.5, 27.5, 7)
    along = torch.linspace(-0.5, 27.5, 9)
    for k, v in enumerate(ticks):
        torch.testing.assert_close(lines[k][0], torch.stack((along, v.expand(9)), -1), atol=1e-4, rtol=0)
        torch.testing.assert_close(lines[7 + k][0], torch.stack((v.expand(9), along), -1), atol=1e-4, rtol=0)
    [closed] = grid_outline(tps, tps.identity_params(1), (28, 28), mesh=0, samples=5)
    assert closed.shape == (1, 17, 2)
    torch.testing.assert_close(closed[0, ::4], border(-0.5, -0.5, 27.5, 27.5), atol=1e-4, rtol=0)


def test_outline_rejects_bad_arguments() -> None:
    with pytest.raises(OptionError, match="mesh"):
        grid_outline(Affine(), Affine().identity_params(1), (28, 28), mesh=1)
    with pytest.raises(OptionError, match="2D"):
        grid_outline(Affine3D(), Affine3D().identity_params(1), (28, 28))
    with pytest.raises(ShapeError, match="params"):
        grid_outline(Affine(), torch.zeros(1, 3), (28, 28))


def test_attention_boxes_hand_checked() -> None:
    params = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.5, -0.5], [28 / 84, 0.0, 0.0]])
    expected = torch.tensor([[0, 0, 84, 84], [21, 21, 63, 63], [42, 0, 84, 42], [28, 28, 56, 56]]).float()
    torch.testing.assert_close(attention_boxes(params, (84, 84)), expected)
    # non-square, and align_corners=True: the identity still covers the whole image
    torch.testing.assert_close(attention_boxes(params[:1], (20, 30), True), torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    assert attention_boxes(tiling_params(2, 2).expand(5, 4, 3), (40, 40)).shape == (5, 4, 4)


@pytest.mark.parametrize("align_corners", [False, True])
def test_attention_boxes_agree_with_outline(gen: torch.Generator, align_corners: bool) -> None:
    params = torch.cat((0.2 + torch.rand(4, 1, generator=gen), torch.rand(4, 2, generator=gen) - 0.5), -1)
    [quad] = grid_outline(Attention(), params, (30, 40), align_corners, output_size=(10, 12))
    lo, hi = quad.amin(1) + 0.5, quad.amax(1) + 0.5  # pixel centres -> pixel edges
    boxes = attention_boxes(params, (30, 40), align_corners, output_size=(10, 12))
    torch.testing.assert_close(boxes, torch.cat((lo, hi), -1))


# --- drawings ---------------------------------------------------------------------------------------------------


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


# --- animation and curves ---------------------------------------------------------------------------------------


def test_epoch_animator_writes_a_looping_gif(st_cnn: nn.Module, images: Tensor, tmp_path: Path) -> None:
    anim = EpochAnimator(max_items=2, zoom=1)
    for epoch in range(3):
        anim.add(st_cnn, images, epoch)
    assert anim.num_frames == {"transformer": 3}
    [path] = anim.save(tmp_path / "st.gif", duration_ms=100)
    assert path == tmp_path / "st.gif"
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 3  # type: ignore[attr-defined]
        assert gif.info["loop"] == 0
        assert gif.size == anim.frames["transformer"][0].size


def test_epoch_animator_one_gif_per_transformer(images: Tensor, tmp_path: Path) -> None:
    par = ParallelSpatialTransformer([two_head_attention(), two_head_attention()], combine="stack")
    anim = EpochAnimator(max_items=2, zoom=1)
    anim.add(par, images, 0)
    anim.add(par, images, 1)
    paths = anim.save(tmp_path / "run" / "st.gif")
    assert [p.name for p in paths] == ["st_transformers_0.gif", "st_transformers_1.gif"]
    for p in paths:
        with Image.open(p) as gif:
            assert gif.n_frames == 2  # type: ignore[attr-defined]
    with pytest.raises(OptionError, match="no frames"):
        EpochAnimator().save(tmp_path / "empty.gif")


def test_plot_curves(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    rows: list[dict[str, object]] = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "train_error": 50.0 / (e + 1), "lr": 0.01 * 0.5**e} for e in range(5)
    ]
    for row in rows[1:]:
        row["test_error"] = 60.0 / float(row["epoch"])  # type: ignore[arg-type]
    rows[2]["note"] = "text is ignored"
    path = plot_curves(rows, tmp_path / "curves" / "curves.png", title="run")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1500, 360)  # three panels: loss, error, lr
    assert plt.get_fignums() == figures
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ShapeError, match="log_rows"):
        plot_curves([], tmp_path / "none.png")


# --- files ------------------------------------------------------------------------------------------------------


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


def test_capture_of_a_composed_chain_keeps_what_the_caller_asked_for(images: Tensor) -> None:
    """The chain is made to return its composed matrix for the record; its caller still gets what it asked."""
    t = Affine()
    chain = SerialSpatialTransformer(
        [SpatialTransformer(conv_localisation((1, 28, 28), t), t) for _ in range(2)], compose=True
    )

    class Caller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chain = chain

        def forward(self, x: Tensor) -> Tensor:
            out, params, total = self.chain(x, return_params=True)
            assert len(params) == 2 and total.shape == (x.shape[0], 3, 3)
            plain = self.chain(x)
            assert isinstance(plain, Tensor)
            return out

    records = capture(Caller(), images)
    assert [r.name for r in records] == ["chain", "chain"]
    _, _, total = chain(images, return_params=True)
    torch.testing.assert_close(records[0].params, total[:, :2].reshape(-1, 6).detach())
    assert not chain._forward_hooks and not chain._forward_pre_hooks
