"""Anti-aliased warps (``antialias=True``): exact where nothing shrinks, the footprint's average where it does,
gradients through the footprint, quality against a dense supersampling reference, compile and ONNX export."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import torchstn
import torchstn._antialias as antialias_module
from torchstn._antialias import SHRINK_TOLERANCE, antialiased_sample, footprint_level
from torchstn.errors import NonFiniteError, OptionError
from torchstn.geometry import affine_grid
from torchstn.modules import SerialSpatialTransformer, SpatialTransformer, conv_localisation
from torchstn.transforms import Affine, Attention, Projective, Similarity, ThinPlateSpline, Transform, Translation

from .helpers import assert_close

FAMILIES: list[Transform] = [Affine(), Attention(), Similarity(), Translation(), Projective(), ThinPlateSpline((3, 3))]
PADDINGS = ["zeros", "border", "reflection", "fill"]
ANGLE = 0.4


def _fill(padding: str) -> float | None:
    return 0.3 if padding == "fill" else None


def _rotation(t: Transform, dtype: torch.dtype) -> Tensor:
    """Parameters of a pure rotation by ``ANGLE`` (a zoom-in for the families without one), square images."""
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    if isinstance(t, Affine):
        rows = [c, -s, 0.05, s, c, -0.03]
    elif isinstance(t, Attention):
        rows = [0.8, 0.05, -0.03]  # no rotation in the family: a zoom in, which does not shrink either
    elif isinstance(t, Similarity):
        rows = [ANGLE, 0.0, 0.05, -0.03]
    elif isinstance(t, Translation):
        rows = [0.05, -0.03]
    elif isinstance(t, Projective):
        rows = [c, -s, 0.05, s, c, -0.03, 0.0, 0.0]
    else:  # a spline through rotated control points is the rotation
        pts = t.identity_params(1, dtype=torch.float64).view(-1, 2)
        rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
        return (pts @ rot).reshape(1, -1).to(dtype)
    return torch.tensor([rows], dtype=dtype)


def _off_identity(t: Transform, gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """Identity parameters a little perturbed (and the window ``scale`` times larger where the family can)."""
    p = t.identity_params(1, dtype=dtype)
    if isinstance(t, Affine | Projective):
        p[:, [0, 4]] *= scale
    elif isinstance(t, Attention):
        p[:, 0] *= scale
    elif isinstance(t, Similarity):
        p[:, 1] += math.log(scale)
    elif isinstance(t, ThinPlateSpline):
        p = p * scale
    return p + 0.03 * torch.randn(p.shape, generator=gen, dtype=dtype)


# --- where nothing shrinks, exactly the plain warp -----------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("t", FAMILIES, ids=repr)
@pytest.mark.parametrize("case", ["identity", "upsample2x", "rotation"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_no_shrink_is_the_plain_warp_bit_for_bit(
    gen: torch.Generator, t: Transform, padding: str, case: str, align_corners: bool
) -> None:
    x = torch.rand(2, 3, 16, 16, generator=gen)
    p = _rotation(t, x.dtype) if case == "rotation" else t.identity_params(1)
    size = (32, 32) if case == "upsample2x" else (16, 16)
    p = p.expand(2, -1)
    kw = {"padding": padding, "fill": _fill(padding), "backend": "torch", "align_corners": align_corners}
    out = torchstn.warp(x, p, t, size, antialias=True, **kw)  # type: ignore[arg-type]
    assert torch.equal(out, torchstn.warp(x, p, t, size, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("major_weight", [antialias_module.MAJOR_WEIGHT, 1.0])
def test_no_shrink_level_is_zero_and_a_shrink_has_its_log2(
    major_weight: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(antialias_module, "MAJOR_WEIGHT", major_weight)
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert footprint_level(affine_grid(theta, (16, 16)), (16, 16)).eq(0).all()
    assert footprint_level(affine_grid(theta, (32, 32)), (16, 16)).eq(0).all()  # upsampling
    level = footprint_level(affine_grid(theta, (4, 8)), (32, 32))  # 8x down the rows, 4x along them
    major, minor = math.log2(8 / (1 + SHRINK_TOLERANCE)), math.log2(4 / (1 + SHRINK_TOLERANCE))
    expected = major_weight * major + (1 - major_weight) * minor  # 1: the major axis alone (OpenGL's rule)
    torch.testing.assert_close(level, torch.full_like(level, expected))
    if major_weight == 1.0:
        torch.testing.assert_close(level, torch.full_like(level, math.log2(8 / (1 + SHRINK_TOLERANCE))))
    stretch = torch.tensor([[[0.25, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # upsampled 4x along the rows, 4x down them
    level = footprint_level(affine_grid(stretch, (8, 8)), (16, 16))  # the minor axis counts from 1, not 1/4
    torch.testing.assert_close(level, torch.full_like(level, major_weight * math.log2(4 / (1 + SHRINK_TOLERANCE))))


def test_projective_footprint_varies_per_pixel() -> None:
    t = Projective()
    grid = t.grid(torch.tensor([[1.0, 0, 0, 0, 1.0, 0, 0, 0.8]]), (16, 16))
    level = footprint_level(grid, (64, 64))  # (1, 16, 16): the far side shrinks more
    assert level[0, 0].mean() > level[0, -1].mean() + 0.5 or level[0, -1].mean() > level[0, 0].mean() + 0.5


# --- where it shrinks: footprint averages -----------------------------------------------------------------------


def test_a_shrink_averages_what_bilinear_skips() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., ::2] = 1.0  # one-pixel stripes
    grid = affine_grid(torch.tensor([[[1.0, 0.0, 0.0625], [0.0, 1.0, 0.0]]]), (4, 4))  # 4x, half a pixel across
    assert F.grid_sample(x, grid, padding_mode="border", align_corners=False).eq(1.0).all()  # aliased
    torch.testing.assert_close(antialiased_sample(x, grid, "border"), torch.full((1, 1, 4, 4), 0.5))


@pytest.mark.parametrize("padding", PADDINGS)
def test_weights_sum_to_one_and_padding_keeps_its_meaning(gen: torch.Generator, padding: str) -> None:
    x = torch.full((2, 3, 32, 32), 0.7)
    t = Attention()
    p = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.4, -0.2]])  # a 3x larger window: a shrink, padding all around
    out = torchstn.warp(x, p, t, (16, 16), padding=padding, fill=_fill(padding), antialias=True)  # type: ignore[arg-type]
    centre = out[..., 7:9, 7:9]
    torch.testing.assert_close(centre, torch.full_like(centre, 0.7))  # inside: a constant stays constant
    corner = out[..., :2, :2]
    expected = {"zeros": 0.0, "border": 0.7, "reflection": 0.7, "fill": 0.3}[padding]
    torch.testing.assert_close(corner, torch.full_like(corner, expected))  # far outside: the padding


@pytest.mark.parametrize("align_corners", [False, True])
def test_shapes_batch_channels_and_fill_per_channel(gen: torch.Generator, align_corners: bool) -> None:
    x = torch.rand(3, 5, 20, 13, generator=gen)
    t = Affine()
    p = _off_identity(t, gen, x.dtype, scale=1.5).expand(3, -1)
    out = torchstn.warp(
        x, p, t, (7, 9), padding="fill", fill=[0.1, 0.2, 0.3, 0.4, 0.5], align_corners=align_corners, antialias=True
    )
    assert out.shape == (3, 5, 7, 9) and torch.isfinite(out).all()
    # one image at a time gives the same outputs
    one = torchstn.warp(
        x[1:2], p[1:2], t, (7, 9), "bilinear", "fill", [0.1, 0.2, 0.3, 0.4, 0.5], align_corners, antialias=True
    )
    assert_close(out[1:2], one)


def test_reference_backend_reads_level_zero_with_the_reference_sampler(gen: torch.Generator) -> None:
    x = torch.rand(2, 2, 24, 24, generator=gen, dtype=torch.float64)
    t = Projective()
    p = _off_identity(t, gen, x.dtype, scale=2.0).expand(2, -1).contiguous()
    for padding in ("zeros", "reflection"):
        ref = torchstn.warp(x, p, t, (10, 10), padding=padding, backend="reference", antialias=True)
        assert_close(ref, torchstn.warp(x, p, t, (10, 10), padding=padding, antialias=True))


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("t", [Attention(), Projective()], ids=repr)
def test_direct_levels_equal_the_atlas(
    gen: torch.Generator, t: Transform, padding: str, align_corners: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager calls whose levels span few mip levels sample each level directly (``_direct``); the general path
    (always taken under compile and export) samples the atlas: the same footprint average, to rounding, for
    odd sizes too (levels rounded up), some pixels shrinking and some not."""
    x = torch.rand(2, 2, 27, 21, generator=gen, dtype=torch.float64)
    p = torch.cat((_off_identity(t, gen, x.dtype, scale=1.6), _off_identity(t, gen, x.dtype, scale=0.4)))
    grid = t.grid(p, (13, 12), src_size=(27, 21), align_corners=align_corners)
    level = footprint_level(grid, (27, 21), align_corners)
    assert (level == 0).any() and (level > 0).any()
    fill = _fill(padding)
    direct = antialiased_sample(x, grid, padding, align_corners, fill)
    monkeypatch.setattr(antialias_module, "_DIRECT_SPAN", 0)  # never direct: the atlas
    torch.testing.assert_close(direct, antialiased_sample(x, grid, padding, align_corners, fill))
    monkeypatch.setattr(antialias_module, "_DIRECT_SPAN", 99)  # always direct
    torch.testing.assert_close(direct, antialiased_sample(x, grid, padding, align_corners, fill))


# --- errors and non-finite grids ---------------------------------------------------------------------------------


def test_options_that_cannot_antialias_raise() -> None:
    x = torch.rand(1, 1, 8, 8)
    t = Affine()
    with pytest.raises(OptionError, match="mode='bilinear'"):
        torchstn.warp(x, t.identity_params(1), t, mode="nearest", antialias=True)
    with pytest.raises(OptionError, match="'fused'"):
        torchstn.warp(x, t.identity_params(1), t, backend="fused", antialias=True)
    with pytest.raises(OptionError, match="2D"):
        torchstn.warp(
            torch.rand(1, 1, 4, 4, 4), torchstn.Affine3D().identity_params(1), torchstn.Affine3D(), antialias=True
        )
    with pytest.raises(OptionError, match="mode='bilinear'"):  # validated when the module is built
        SpatialTransformer(conv_localisation((1, 24, 24), t), t, mode="bicubic", antialias=True)


def test_non_finite_grids_raise_or_propagate_at_their_pixels() -> None:
    x = torch.rand(1, 1, 16, 16)
    grid = affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]), (8, 8)).clone()
    grid[0, 3, 4, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="1 grid point"):
        torchstn.sample(x, grid, antialias=True)
    out = torchstn.sample(x, grid, nonfinite="propagate", antialias=True)
    assert out[0, 0, 3, 4].isnan() and torch.isfinite(out).sum() == 63


# --- gradients -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("t", FAMILIES, ids=repr)
def test_gradcheck_input_and_params_through_the_footprint(gen: torch.Generator, t: Transform, padding: str) -> None:
    x = torch.rand(1, 1, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _off_identity(t, gen, torch.float64, scale=1.2).requires_grad_()  # 12 -> 5 px and a larger window

    def fn(x: Tensor, p: Tensor) -> Tensor:
        return torchstn.warp(x, p, t, (5, 5), padding=padding, fill=_fill(padding), antialias=True)  # type: ignore[arg-type]

    level = footprint_level(t.grid(p.detach(), (5, 5), src_size=(12, 12)), (12, 12))
    assert (level > 0.5).all()  # every pixel shrinks, between levels
    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-6, atol=1e-5)


def test_gradcheck_align_corners(gen: torch.Generator) -> None:
    t = Projective()
    x = torch.rand(1, 1, 13, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _off_identity(t, gen, torch.float64, scale=1.2).requires_grad_()

    def fn(x: Tensor, p: Tensor) -> Tensor:
        return torchstn.warp(x, p, t, (5, 4), padding="reflection", align_corners=True, antialias=True)

    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("padding", ["zeros", "reflection"])
def test_gradcheck_the_atlas_path(gen: torch.Generator, padding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The general path (the level atlas: compile, export, and eager calls spanning many levels) has its own
    gradcheck, some pixels shrinking and some not."""
    monkeypatch.setattr(antialias_module, "_DIRECT_SPAN", 0)
    t = Projective()
    x = torch.rand(1, 1, 13, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _off_identity(t, gen, torch.float64, scale=1.2).requires_grad_()

    def fn(x: Tensor, p: Tensor) -> Tensor:
        return torchstn.warp(x, p, t, (5, 4), padding=padding, antialias=True)

    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("t", "footprint"), [(Projective(), "footprint_level"), (Affine(), "affine_footprint_variance")], ids=repr
)
def test_the_footprint_carries_gradient_to_the_params(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch, t: Transform, footprint: str
) -> None:
    """The footprint's dependence on the parameters is part of the gradient (gradcheck above checks it is the
    right one): detaching the mip level (projective) or the prefilter's variance (affine) changes the
    parameters' gradient."""
    x = torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64)
    p = _off_identity(t, gen, torch.float64, scale=1.3).requires_grad_()

    def grad() -> Tensor:
        (g,) = torch.autograd.grad(torchstn.warp(x, p, t, (9, 9), antialias=True).square().sum(), p)
        return g

    full = grad()
    original = getattr(antialias_module, footprint)

    def detached_footprint(*a: object, **k: object) -> object:
        out = original(*a, **k)
        return tuple(v.detach() for v in out) if isinstance(out, tuple) else out.detach()

    monkeypatch.setattr(antialias_module, footprint, detached_footprint)
    detached = grad()
    assert (full - detached).abs().max() > 0.05 * full.abs().max()


# --- quality -----------------------------------------------------------------------------------------------------


def _zone_plate(n: int) -> Tensor:
    r = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return (0.5 + 0.5 * torch.cos(math.pi * (x * x + y * y) / n)).view(1, 1, n, n)  # Nyquist at the edges


def _psnr(a: Tensor, b: Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize(("shrink", "gain"), [(2, 9.5), (4, 15.0)])
def test_zone_plate_is_closer_to_the_supersampled_reference(shrink: int, gain: float) -> None:
    n, sub = 128, 16
    x = _zone_plate(n)
    t = Affine()
    p = torch.tensor([[1.0, 0, 0.37 * 2 / n, 0, 1.0, 0.21 * 2 / n]], dtype=torch.float64)  # a sub-pixel phase
    m = n // shrink
    ref = F.avg_pool2d(torchstn.warp(x, p, t, (m * sub, m * sub), backend="torch"), sub)  # 16x16 box, float64
    plain = torchstn.warp(x, p, t, (m, m), backend="torch")
    ours = torchstn.warp(x, p, t, (m, m), antialias=True)
    assert _psnr(ours, ref) >= _psnr(plain, ref) + gain


def _checkerboard(n: int) -> Tensor:
    i = torch.arange(n) // 2
    return ((i.view(-1, 1) + i.view(1, -1)) % 2).to(torch.float64).view(1, 1, n, n)


@pytest.mark.parametrize("image", ["zone plate", "checkerboard"])
@pytest.mark.parametrize("t", [Projective(), ThinPlateSpline((3, 3))], ids=repr)
def test_per_pixel_footprints_are_closer_to_the_reference(image: str, t: Transform) -> None:
    """Projective and TPS warps shrink by a different amount at every pixel (measured at this size: +4.4 and
    +9.4 dB on the zone plate, +14.8 and +18.1 dB on the checkerboard)."""
    n, sub, m = 128, 16, 64
    x = _zone_plate(n) if image == "zone plate" else _checkerboard(n)
    if isinstance(t, Projective):
        p = torch.tensor([[1.0, 0, 0.006, 0, 1.0, 0.003, 0, 0.6]], dtype=torch.float64)
    else:
        gen = torch.Generator().manual_seed(0)
        p = t.identity_params(1, dtype=torch.float64) * 1.3 + 0.08 * torch.randn(
            1, 18, generator=gen, dtype=torch.float64
        )
    ref = F.avg_pool2d(torchstn.warp(x, p, t, (m * sub, m * sub), backend="torch"), sub)
    gain = _psnr(torchstn.warp(x, p, t, (m, m), antialias=True), ref) - _psnr(torchstn.warp(x, p, t, (m, m)), ref)
    assert gain >= (3.0 if image == "zone plate" else 10.0)


# --- modules, compile, export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [1, 2])
def test_module_matches_the_function(gen: torch.Generator, num_heads: int) -> None:
    t = Similarity()
    loc = conv_localisation((2, 24, 24), t, downsample=1, num_heads=num_heads)
    st = SpatialTransformer(loc, t, output_size=(8, 8), padding="border", antialias=True, combine="concat")
    with torch.no_grad():
        for w in loc.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=gen))
    x = torch.rand(3, 2, 24, 24, generator=gen)
    out, params = st(x, return_params=True)
    params = params.reshape(3, num_heads, -1)
    for k in range(num_heads):
        expected = torchstn.warp(x, params[:, k], t, (8, 8), padding="border", antialias=True)
        assert_close(out[:, 2 * k : 2 * k + 2], expected)
    assert "antialias=True" in repr(st)


def test_heads_with_a_fill_per_image(gen: torch.Generator) -> None:
    t = Attention()
    loc = conv_localisation((1, 24, 24), t, downsample=1, num_heads=2)
    fill = torch.tensor([[0.2], [0.9]])  # (B, C)
    st = SpatialTransformer(loc, t, output_size=(6, 6), padding="fill", fill=fill, antialias=True)
    x = torch.rand(2, 1, 24, 24, generator=gen)
    out, params = st(x, return_params=True)  # (2, 2, 1, 6, 6)
    for k in range(2):
        expected = torchstn.warp(x, params[:, k], t, (6, 6), padding="fill", fill=fill, antialias=True)
        assert_close(out[:, k], expected)


def test_serial_composition_antialiases_the_composed_warp(gen: torch.Generator) -> None:
    t = Affine()
    stages = [SpatialTransformer(conv_localisation((1, 24, 24), t), t, output_size=(8, 8), antialias=True)]
    chain = SerialSpatialTransformer(stages, compose=True)
    x = torch.rand(2, 1, 24, 24, generator=gen)
    expected = torchstn.warp(x, t.identity_params(2), t, (8, 8), antialias=True)
    assert_close(chain(x), expected)


def test_compiled_matches_eager(gen: torch.Generator) -> None:
    x = torch.rand(2, 3, 20, 20, generator=gen)
    t = Projective()
    p = _off_identity(t, gen, x.dtype, scale=1.5).expand(2, -1).contiguous()
    grid = t.grid(p, (8, 8))
    compiled = torch.compile(antialiased_sample, backend="eager", fullgraph=True)
    assert_close(compiled(x, grid, "reflection"), antialiased_sample(x, grid, "reflection"))
    warp = torch.compile(torchstn.warp, backend="eager")
    assert_close(warp(x, p, t, (8, 8), antialias=True), torchstn.warp(x, p, t, (8, 8), antialias=True))


@pytest.mark.slow
def test_inductor_compiled_matches_eager(gen: torch.Generator) -> None:
    x = torch.rand(2, 3, 20, 20, generator=gen)
    grid = Projective().grid(_off_identity(Projective(), gen, x.dtype, scale=1.5).expand(2, -1).contiguous(), (8, 8))
    compiled = torch.compile(antialiased_sample, fullgraph=True)
    assert_close(compiled(x, grid, "border"), antialiased_sample(x, grid, "border"), scale=10)


@pytest.mark.parametrize("t", [Affine(), ThinPlateSpline((3, 3))], ids=repr)
def test_onnx_export_matches_eager(tmp_path: Path, gen: torch.Generator, t: Transform) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from torchstn.export import export_onnx

    st = SpatialTransformer(conv_localisation((1, 24, 24), t), t, output_size=(8, 8), padding="border", antialias=True)
    with torch.no_grad():
        for w in st.parameters():
            w.add_(0.02 * torch.randn(w.shape, generator=gen))
    export_onnx(st.eval(), torch.rand(2, 1, 24, 24, generator=gen), tmp_path / "aa.onnx")  # checks against eager
    assert (tmp_path / "aa.onnx").exists()


# --- affine warps: the separable footprint prefilter -----------------------------------------------------------


def test_box_width_and_kernel_have_the_variance_asked_for() -> None:
    v = torch.linspace(0.0, 12.0, 97, dtype=torch.float64)
    k = antialias_module.box_kernel(antialias_module.box_width(v), 8)
    m = torch.arange(-8, 9, dtype=torch.float64)
    assert_close(k.sum(-1), torch.ones_like(v))
    torch.testing.assert_close((k * m * m).sum(-1), v, atol=1e-12, rtol=0.0)
    assert torch.equal(antialias_module.box_kernel(torch.ones(1, dtype=torch.float64), 2)[0], torch.eye(5)[2].double())


def _explicit_prefilter(x: Tensor, p: Tensor, size: tuple[int, int], padding: str, align_corners: bool) -> Tensor:
    """The same filter written out independently: the 2D outer-product kernel applied by ``F.conv2d`` to the input
    padded by ``F.pad`` (or extended by explicit reflection), then ``F.grid_sample`` on an ``F.affine_grid`` of the
    matrix moved to the padded image's pixel frame."""
    (h, w), (oh, ow) = x.shape[-2:], size
    m = Affine().matrix(p)[:, :2]
    vx, vy = antialias_module.affine_footprint_variance(m, (h, w), size, align_corners)
    outs = []
    for b in range(x.shape[0]):
        r = max(1, math.ceil((float(antialias_module.box_width(torch.maximum(vx[b], vy[b]))) - 1) / 2))
        kx = antialias_module.box_kernel(antialias_module.box_width(vx[b : b + 1]), r)[0]
        ky = antialias_module.box_kernel(antialias_module.box_width(vy[b : b + 1]), r)[0]
        kernel = (ky[:, None] * kx[None, :]).view(1, 1, 2 * r + 1, 2 * r + 1).expand(x.shape[1], 1, -1, -1)
        xb = x[b : b + 1]
        if padding == "reflection":
            if align_corners:
                ext = F.pad(xb, (r, r, r, r), mode="reflect")
            else:  # about the edges: x[-1] = x[0]
                ext = torch.cat((xb[..., :r].flip(-1), xb, xb[..., -r:].flip(-1)), -1)
                ext = torch.cat((ext[..., :r, :].flip(-2), ext, ext[..., -r:, :].flip(-2)), -2)
            filtered = F.conv2d(ext, kernel, groups=x.shape[1])  # (1, C, h, w)
            mb = m[b : b + 1]
        else:
            mode = "constant" if padding == "zeros" else "replicate"
            filtered = F.conv2d(F.pad(xb, (2 * r,) * 4, mode=mode), kernel, groups=x.shape[1])  # the band
            hh, ww = h + 2 * r, w + 2 * r
            n = (torch.tensor([w - 1, h - 1]) if align_corners else torch.tensor([w, h])).double()
            nn_ = (torch.tensor([ww - 1, hh - 1]) if align_corners else torch.tensor([ww, hh])).double()
            mb = m[b : b + 1] * (n / nn_).view(1, 2, 1)
        grid = F.affine_grid(mb, [1, x.shape[1], oh, ow], align_corners=align_corners)
        outs.append(F.grid_sample(filtered, grid, padding_mode=padding, align_corners=align_corners))
    return torch.cat(outs)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_prefilter_equals_the_filter_written_out(
    gen: torch.Generator, padding: str, align_corners: bool
) -> None:
    x = torch.rand(2, 2, 30, 26, generator=gen, dtype=torch.float64)
    c, s = math.cos(0.5), math.sin(0.5)
    p = torch.tensor([[2.1 * c, -2.1 * s, 0.1, 2.1 * s, 2.1 * c, -0.2], [1.7, 0.3, 0.6, 0.0, 1.2, 0.4]]).double()
    ours = torchstn.warp(x, p, Affine(), (11, 9), antialias=True, padding=padding, align_corners=align_corners)
    torch.testing.assert_close(ours, _explicit_prefilter(x, p, (11, 9), padding, align_corners), atol=1e-12, rtol=0.0)


def test_flicker_under_a_sub_pixel_sweep_is_five_times_lower() -> None:
    """The zone plate moved by a quarter source pixel per frame under a 4x shrink: the output's energy changes
    from frame to frame at least 5x less than plain bilinear's (benchmarks/bench_antialias.py measures it)."""
    n, frames = 128, 12
    x = _zone_plate(n)
    energy: dict[str, list[float]] = {"plain": [], "ours": []}
    for k in range(frames):
        shift = 0.25 * k * 2 / n
        p = torch.tensor([[1.0, 0, shift, 0, 1.0, 0.7 * shift]], dtype=torch.float64)
        energy["plain"].append(float(torchstn.warp(x, p, Affine(), (n // 4, n // 4), backend="torch").var()))
        energy["ours"].append(float(torchstn.warp(x, p, Affine(), (n // 4, n // 4), antialias=True).var()))
    flicker = {k: sum(abs(b - a) for a, b in itertools.pairwise(e)) / sum(e) for k, e in energy.items()}
    assert flicker["plain"] >= 5 * flicker["ours"], flicker


def test_affine_compiled_matches_eager_and_a_mixed_batch_keeps_its_plain_images(gen: torch.Generator) -> None:
    x = torch.rand(3, 2, 24, 24, generator=gen)
    t = Affine()
    p = t.identity_params(3)
    p[0, [0, 4]] = 2.5  # this one shrinks, the others are the identity
    eager = torchstn.warp(x, p, t, (24, 24), antialias=True, padding="border")
    assert torch.equal(eager[1:], torchstn.warp(x, p, t, (24, 24), padding="border")[1:])
    warp = torch.compile(torchstn.warp, backend="eager")
    compiled = warp(x, p, t, (24, 24), antialias=True, padding="border")
    assert_close(compiled, eager)
    plain_compiled = warp(x, p, t, (24, 24), padding="border")  # the graph's plain sample (the grid path)
    assert torch.equal(compiled[1:], plain_compiled[1:])


def test_coloc_attention_takes_the_option(gen: torch.Generator) -> None:
    from torchstn.models import create_model

    plain, aa = create_model("coloc_attention"), create_model("coloc_attention", antialias=True)
    aa.load_state_dict(plain.state_dict())
    assert aa.options.antialias and not plain.options.antialias
    x = torch.rand(2, 1, 84, 84, generator=gen)
    expected = torchstn.warp(x, aa.localisation(x), Attention(), (28, 28), antialias=True)
    assert_close(aa(x), expected)
    assert torch.equal(aa(x), plain(x))  # the start crop (28 of 84 px, to 28 px) does not shrink: the same output


@pytest.mark.parametrize("t", [Affine(), Projective()], ids=repr)
def test_antialias_runs_on_every_device_and_agrees_with_the_cpu(device: torch.device, t: Transform) -> None:
    """On CUDA the prefilter runs in tensor ops and the plain sample on the grid path: the same numbers as the CPU's
    compiled filter and fused kernel, to float32 rounding."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 40, 36, generator=gen)
    p = _off_identity(t, gen, torch.float32, scale=1.7).expand(2, -1).contiguous()
    cpu = torchstn.warp(x, p, t, (12, 10), antialias=True, padding="border")
    out = torchstn.warp(x.to(device), p.to(device), t, (12, 10), antialias=True, padding="border")
    assert out.device.type == device.type
    assert_close(out.cpu(), cpu, scale=10)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_a_footprint_wider_than_twice_the_input_takes_the_mipmap(gen: torch.Generator, padding: str) -> None:
    """A window hundreds of times the image: the prefilter's kernels, band and tables would grow with the
    footprint (a 1e4x window read to 3x3 asks for kernels of 840,000 taps), so such a batch takes the mip-map,
    whose cost does not depend on the shrink: the same output as the projective family (always the mip-map) on
    the same matrices."""
    x = torch.rand(2, 2, 84, 84, generator=gen, dtype=torch.float64)
    windows = torch.tensor([[1e4, 0.1, -0.2], [1.5, 0.0, 0.0]], dtype=torch.float64)  # one wide, one ordinary
    s, tx, ty = windows.unbind(-1)
    zero = torch.zeros_like(s)
    as_affine = torch.stack((s, zero, tx, zero, s, ty), -1)
    as_projective = torch.cat((as_affine, torch.zeros(2, 2, dtype=torch.float64)), -1)
    expected = torchstn.warp(x, as_projective, Projective(), (3, 3), antialias=True, padding=padding)
    for t, p in ((Attention(), windows), (Affine(), as_affine)):
        out = torchstn.warp(x, p, t, (3, 3), antialias=True, padding=padding)
        torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-12)
    assert torch.isfinite(expected).all()
    for dtype in (torch.float32, torch.float64):  # a window too wide for the dtype's variance (inf in float32)
        huge = torch.tensor([[1e30, 0.1, 0.0]], dtype=dtype)
        for t, p in ((Attention(), huge), (Affine(), huge[:, [0, 1, 1, 1, 0, 2]] * torch.tensor([1, 0, 1, 0, 1, 1]))):
            out = torchstn.warp(x[:1].to(dtype), p.to(dtype), t, (3, 3), antialias=True, padding=padding)
            assert torch.isfinite(out).all()


def test_only_the_axis_aligned_families_say_so(gen: torch.Generator) -> None:
    """``axis_aligned`` lets the one-pass kernel ignore the matrix's off-diagonal entries: they must be zero for
    every parameter value of a family that sets it, and no family with a rotation or shear may set it."""
    for t in (Attention(), Translation()):
        assert t.axis_aligned
        m = t.sampler_matrix(torch.randn(16, t.num_params, generator=gen), (20, 30))
        assert torch.equal(m[:, 0, 1], torch.zeros(16)) and torch.equal(m[:, 1, 0], torch.zeros(16))
    for t in (Affine(), Similarity(), Projective()):
        assert not t.axis_aligned
