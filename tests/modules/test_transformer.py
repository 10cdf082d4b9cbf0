"""SpatialTransformer and its parallel and serial containers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchstn
from tests.helpers import assert_close
from torchstn import ext
from torchstn.errors import DTypeError, ShapeError
from torchstn.modules import (
    LocalisationNet,
    ParallelSpatialTransformer,
    SerialSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
    mlp_localisation,
    tiling_params,
)
from torchstn.transforms import (
    Affine,
    Affine3D,
    Attention,
    Projective,
    Similarity,
    ThinPlateSpline,
    Transform,
    Translation,
)

FAMILIES_2D: list[Transform] = [Affine(), Attention(), Similarity(), Translation(), Projective(), ThinPlateSpline()]


def _st(t: Transform, shape: tuple[int, int, int] = (2, 12, 16), **kw: object) -> SpatialTransformer:
    return SpatialTransformer(conv_localisation(shape, t, channels=(4, 4), kernel_size=3, hidden=(8,)), t, **kw)  # type: ignore[arg-type]


# --- identity at initialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", FAMILIES_2D, ids=repr)
def test_every_transformer_is_the_identity_at_init(gen: torch.Generator, t: Transform) -> None:
    st = _st(t)
    x = torch.rand(3, 2, 12, 16, generator=gen)
    out, params = st(x, return_params=True)
    torch.testing.assert_close(params, t.identity_params(3))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_3d_transformer_is_the_identity_at_init(gen: torch.Generator) -> None:
    t = Affine3D()
    loc = LocalisationNet(nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5 * 6, 8), nn.ReLU()), t, 8)
    st = SpatialTransformer(loc, t, output_size=(3, 5, 4))
    x = torch.rand(2, 2, 4, 5, 6, generator=gen)
    assert st(x).shape == (2, 2, 3, 5, 4)
    torch.testing.assert_close(SpatialTransformer(loc, t)(x), x, rtol=0, atol=1e-5)


# --- module == functional ------------------------------------------------------------------------------------


def test_module_agrees_with_the_functional_path(gen: torch.Generator) -> None:
    t = Similarity()
    st = _st(t, output_size=(6, 8), mode="bicubic", padding="fill", fill=0.25)
    with torch.no_grad():
        st.localisation.head.linear.weight.normal_(0, 0.05, generator=gen)  # off the identity
    x = torch.rand(2, 2, 12, 16, generator=gen)
    loc = torch.rand(2, 2, 12, 16, generator=gen)
    out, params = st(x, loc_input=loc, return_params=True)
    expected = torchstn.warp(x, st.localisation(loc), t, (6, 8), "bicubic", "fill", 0.25)
    torch.testing.assert_close(out, expected)
    assert st.last_params is not None and torch.equal(st.last_params, params.detach())


# --- gradients -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", FAMILIES_2D, ids=repr)
def test_every_parameter_gets_a_finite_gradient(gen: torch.Generator, t: Transform) -> None:
    st = _st(t)
    x = torch.rand(4, 2, 12, 16, generator=gen)
    target = torch.rand(4, 2, 12, 16, generator=gen)
    opt = torch.optim.SGD(st.parameters(), lr=0.1)
    moved = {name: False for name, _ in st.named_parameters()}
    for _ in range(3):  # the head's weight starts at zero, so the backbone's gradient is zero on step 1
        opt.zero_grad()
        (st(x) - target).square().mean().backward()
        for name, p in st.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            moved[name] |= bool(p.grad.abs().sum() > 0)
        opt.step()
    assert all(moved.values()), [name for name, m in moved.items() if not m]


# --- end-to-end: a known warp is recovered through the sampler --------------------------------------------------


def _blobs(gen: torch.Generator, n: int, size: int) -> torch.Tensor:
    """Smooth images with content inside the central disc and a black background."""
    c = torchstn.geometry.normalized_coords(size)
    y, x = torch.meshgrid(c, c, indexing="ij")
    imgs = torch.zeros(n, 1, size, size)
    for _ in range(4):
        centre = (torch.rand(n, 2, generator=gen) - 0.5) * 0.8
        d2 = (x - centre[:, 0, None, None]) ** 2 + (y - centre[:, 1, None, None]) ** 2
        imgs[:, 0] += torch.exp(-d2 / (2 * 0.15**2))
    return imgs


@pytest.mark.parametrize("t", [Affine(), Projective(), ThinPlateSpline((3, 3))], ids=repr)
def test_training_recovers_a_known_warp(t: Transform) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    size = 24
    images = _blobs(gen, 64, size)
    known = torch.tensor(
        [[math.cos(0.3) * 0.9, -math.sin(0.3) * 0.9, 0.1, math.sin(0.3) * 0.9, math.cos(0.3) * 0.9, -0.1]]
    )
    distorted = torchstn.warp(images, known.expand(64, 6), Affine())
    st = SpatialTransformer(mlp_localisation((1, size, size), t, hidden=(16,)), t)
    opt = torch.optim.Adam(st.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = (st(distorted) - images).square().mean()
        loss.backward()
        opt.step()
    # The exact answer: undo the known warp, i.e. sample with its inverse.
    inverse = torchstn.invert(known.view(1, 2, 3))
    with torch.no_grad():
        params = st.localisation(distorted)
        grid = t.grid(params, (size, size))
    expected = torchstn.affine_grid(inverse, (size, size)).expand_as(grid)
    centre = slice(size // 4, -size // 4)  # where the content is
    err = (grid - expected)[:, centre, centre].abs().max().item()
    assert err < 0.05, f"recovered grid is {err:.3f} (normalised units) from the exact inverse"
    if not isinstance(t, ThinPlateSpline):
        matrix = t.matrix(params)  # type: ignore[attr-defined]
        torch.testing.assert_close(matrix[:, :2], inverse.expand(64, 2, 3), atol=0.03, rtol=0)


# --- several transformers ----------------------------------------------------------------------------------------


def test_shared_localisation_with_heads_tiles_and_stacks(gen: torch.Generator) -> None:
    t = Attention()
    init = tiling_params(2, 2)
    loc = conv_localisation((3, 16, 16), t, channels=(4,), kernel_size=3, hidden=(8,), num_heads=4, init=init)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    st = SpatialTransformer(loc, t, output_size=(8, 8))
    out, params = st(x, return_params=True)
    assert out.shape == (2, 4, 3, 8, 8) and params.shape == (2, 4, 3)
    # Head k at init shows exactly tile k of the image.
    tiles = [x[:, :, :8, :8], x[:, :, :8, 8:], x[:, :, 8:, :8], x[:, :, 8:, 8:]]
    for k, tile in enumerate(tiles):
        torch.testing.assert_close(out[:, k], tile, rtol=0, atol=1e-5)
    cat = SpatialTransformer(loc, t, output_size=(8, 8), combine="concat")(x)
    torch.testing.assert_close(cat, out.reshape(2, 12, 8, 8))


@pytest.mark.parametrize("out_size", [(8, 8), (16, 32)])  # 16x32 grids are 4 KiB rows: the batch-strided layout
def test_heads_equal_separate_warps(gen: torch.Generator, out_size: tuple[int, int]) -> None:
    t = Affine()
    loc = conv_localisation((1, 16, 16), t, channels=(4,), kernel_size=3, hidden=(8,), num_heads=3)
    with torch.no_grad():
        loc.head.linear.weight.normal_(0, 0.1, generator=gen)
    st = SpatialTransformer(loc, t, output_size=out_size).eval()
    x = torch.rand(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        out, params = st(x, return_params=True)
        for k in range(3):
            torch.testing.assert_close(out[:, k], torchstn.warp(x, params[:, k], t, out_size), rtol=0, atol=1e-5)


def test_parallel_independent_transformers(gen: torch.Generator) -> None:
    sts = [_st(Affine()), _st(Projective())]
    x = torch.rand(2, 2, 12, 16, generator=gen)
    out = ParallelSpatialTransformer(sts)(x)
    assert out.shape == (2, 4, 12, 16)
    torch.testing.assert_close(out, torch.cat((x, x), 1), rtol=0, atol=1e-5)
    stacked, params = ParallelSpatialTransformer(sts, combine="stack")(x, return_params=True)
    assert stacked.shape == (2, 2, 2, 12, 16) and [p.shape[-1] for p in params] == [6, 8]


def _perturb(st: SpatialTransformer, gen: torch.Generator, scale: float = 0.05) -> SpatialTransformer:
    with torch.no_grad():
        st.localisation.head.linear.weight.normal_(0, scale, generator=gen)
        st.localisation.head.linear.bias.add_(torch.randn(st.localisation.head.linear.bias.shape, generator=gen) * 0.1)
    return st


def test_serial_composed_chain_equals_the_product_of_its_matrices(gen: torch.Generator) -> None:
    stages = [_perturb(_st(Affine()), gen), _perturb(_st(Similarity()), gen), _perturb(_st(Projective()), gen)]
    chain = SerialSpatialTransformer(stages, compose=True)
    x = torch.rand(2, 2, 12, 16, generator=gen, dtype=torch.float64)
    chain.double()
    out, params, total = chain(x, return_params=True)
    mats = [st.transform.matrix(p, src_size=(12, 16)) for st, p in zip(stages, params, strict=True)]  # type: ignore[attr-defined]
    assert_close(total, mats[0] @ mats[1] @ mats[2])
    expected = torchstn.sample(x, torchstn.projective_grid(total, (12, 16)))
    assert_close(out, expected)
    # Stage 2 saw the input resampled once by stage 1's matrix.
    seen = torchstn.warp(x, params[0], Affine())
    assert_close(params[1], stages[1].localisation(seen))


def test_serial_chain_is_the_identity_at_init(gen: torch.Generator) -> None:
    x = torch.rand(2, 2, 12, 16, generator=gen)
    for compose in (True, False):
        stages = [_st(Affine()), _st(Attention())]
        torch.testing.assert_close(SerialSpatialTransformer(stages, compose)(x), x, rtol=0, atol=1e-5)
    chain = SerialSpatialTransformer([_st(Affine()), _st(ThinPlateSpline())], compose=False)
    torch.testing.assert_close(chain(x), x, rtol=0, atol=1e-5)


def test_serial_compose_rejects_splines() -> None:
    with pytest.raises(ValueError, match=r"transformers\[1\]"):
        SerialSpatialTransformer([_st(Affine()), _st(ThinPlateSpline())], compose=True)


def test_composing_blurs_less_than_resampling(gen: torch.Generator) -> None:
    """Two half-pixel shifts composed read the input once; chained, they average neighbours twice."""
    x = torch.rand(1, 1, 16, 16, generator=gen)
    stages = []
    for _ in range(2):
        st = _st(Translation(), (1, 16, 16))
        with torch.no_grad():
            st.localisation.head.linear.bias.copy_(torch.tensor([1 / 16, 0.0]))  # half a pixel
        stages.append(st)
    composed = SerialSpatialTransformer(stages, compose=True)(x)
    chained = SerialSpatialTransformer(stages, compose=False)(x)
    one_pixel = torch.roll(x, -1, dims=-1)
    inner = (slice(None), slice(None), slice(None), slice(0, 14))
    torch.testing.assert_close(composed[inner], one_pixel[inner], rtol=0, atol=1e-5)
    assert (chained[inner] - one_pixel[inner]).abs().max() > 0.01


# --- nn.Module plumbing -------------------------------------------------------------------------------------------


def test_state_dict_round_trip(gen: torch.Generator) -> None:
    a = _perturb(_st(ThinPlateSpline()), gen)
    b = _st(ThinPlateSpline())
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 2, 12, 16, generator=gen)
    torch.testing.assert_close(a(x), b(x))


def test_repr_names_the_transform_and_settings() -> None:
    text = repr(_st(Similarity(), output_size=(6, 6)))
    assert "Similarity()" in text and "output_size=(6, 6)" in text and "LocalisationHead" in text


@pytest.mark.parametrize("num_heads", [1, 3])
def test_compiled_transformer_matches_eager(gen: torch.Generator, num_heads: int) -> None:
    t = Affine()
    loc = conv_localisation((2, 12, 16), t, channels=(4,), kernel_size=3, hidden=(8,), num_heads=num_heads)
    st = _perturb(SpatialTransformer(loc, t, output_size=(6, 8)), gen)
    x = torch.rand(2, 2, 12, 16, generator=gen)
    compiled = torch.compile(st, backend="eager")
    torch.testing.assert_close(compiled(x), st(x))


# --- the multi-head path checks what warp checks (issue 14; issue 17, defect 1) -----------------------------------

HEAD_BACKENDS = [
    "auto",
    "torch",
    pytest.param("fused", marks=pytest.mark.skipif(not ext.available(), reason="no kernel")),
]


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_heads_refuse_a_batch_that_disagrees_with_the_input(backend: str) -> None:
    """The fused path checked only that B*N divides the image batch: st(x_B4, loc_input=x_B2) with 2 heads mixed
    images across heads, and sample_with(x_B2, params (1, 2, 6)) returned a batch of 1. Every path raises."""
    loc = mlp_localisation((1, 6, 6), Affine(), num_heads=2)
    st = SpatialTransformer(loc, Affine(), backend=backend)  # type: ignore[arg-type]
    x4, x2 = torch.rand(4, 1, 6, 6), torch.rand(2, 1, 6, 6)
    with pytest.raises(ShapeError, match=r"^params: expected B=4"):
        st(x4, loc_input=x2)
    with pytest.raises(ShapeError, match=r"^params: expected B=2"):
        st.sample_with(x2, Affine().identity_params(2).view(1, 2, 6))


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
def test_heads_check_the_parameters_as_warp_does(backend: str) -> None:
    """(B, N, P) parameters skipped warp's checks: a float64/float32 mix reached the kernel's "one dtype for all
    tensors", a wrong P gave a reshape error."""
    st = SpatialTransformer(torch.nn.Identity(), Affine(), backend=backend)  # type: ignore[arg-type]
    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(DTypeError, match=r"^params: expected the dtype and device of input"):
        st.sample_with(x, Affine().identity_params(4, dtype=torch.float64).view(2, 2, 6))
    with pytest.raises(ShapeError, match=r"^params: expected shape \(B,N,6\)"):
        st.sample_with(x, torch.zeros(2, 2, 5))
    with pytest.raises(DTypeError, match=r"^params: expected a floating-point tensor"):
        st.sample_with(x, torch.zeros(2, 2, 6, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"^params: expected \(B, P\) or \(B, N, P\)"):
        st.sample_with(x, torch.zeros(2, 2, 2, 6))


class _Fixed(torch.nn.Module):
    """A localisation network that predicts the same parameters for every input."""

    def __init__(self, params: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("p", params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.p.expand(x.shape[0], -1)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_composed_homography_uses_the_chains_eps(backend: str, gen: torch.Generator) -> None:
    """A projective stage followed by an affine one: the composed homography keeps the projective stage's eps (it
    used the current stage's, the affine default 1e-6). The denominator 0.8 x + 1 is below eps=0.9 on the left half."""
    from torchstn.geometry import projective_grid

    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.8, 0.0]], dtype=torch.float64)
    a = torch.tensor([[0.9, 0.1, 0.05, -0.1, 0.9, 0.0]], dtype=torch.float64)
    stages = [
        SpatialTransformer(_Fixed(h), Projective(eps=0.9), backend=backend),  # type: ignore[arg-type]
        SpatialTransformer(_Fixed(a), Affine(), backend=backend),  # type: ignore[arg-type]
    ]
    chain = SerialSpatialTransformer(stages, compose=True)
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    out, _, total = chain(x, return_params=True)
    assert total is not None
    expected = F.grid_sample(x, projective_grid(total, (8, 8), False, 0.9), align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    wrong = F.grid_sample(x, projective_grid(total, (8, 8), False, 1e-6), align_corners=False)
    assert (out - wrong).abs().max() > 1e-3  # the eps matters for this chain


# --- on every device -------------------------------------------------------------------------------------------


def test_modules_on_device(device: torch.device) -> None:
    """A transformer, a multi-head one and a composed chain moved to the device: forward and backward there."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28, device=device)
    single = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine()).to(device)
    heads = SpatialTransformer(conv_localisation((1, 28, 28), Affine(), num_heads=2), Affine(), combine="concat")
    chain = SerialSpatialTransformer(
        [SpatialTransformer(conv_localisation((1, 28, 28), t), t) for t in (Affine(), Projective())]
    )
    for module, shape in ((single, (2, 1, 28, 28)), (heads.to(device), (2, 2, 28, 28)), (chain.to(device), None)):
        out = module(x)
        assert out.device == x.device and out.shape == (shape or x.shape)
        assert torch.allclose(out[:, :1], x, atol=1e-5)  # identity at initialisation, on the device too
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.device == x.device for p in module.parameters())


# --- the transform given twice must agree ------------------------------------------------------------------------


def test_transform_mismatch_is_caught_at_construction_naming_both() -> None:
    from torchstn.errors import OptionError

    with pytest.raises(OptionError, match=r"transform: SpatialTransformer was given Projective\(eps=1e-06\) \(8 "
                       r"parameters\) but its localisation network regresses Affine\(\) \(6 parameters, "
                       r"localisation\.head\.transform\)"):  # fmt: skip
        SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Projective())
    # The same count of parameters with another meaning: a thin-plate spline's other control points.
    with pytest.raises(OptionError, match=r"ThinPlateSpline.*localisation\.head\.transform"):
        SpatialTransformer(mlp_localisation((1, 8, 8), ThinPlateSpline((2, 3))), ThinPlateSpline((3, 2)))
    # Found inside any wrapper: the one LocalisationHead of the network.
    wrapped = nn.Sequential(nn.Identity(), conv_localisation((1, 28, 28), Attention()))
    with pytest.raises(OptionError, match=r"localisation\.1\.head\.transform"):
        SpatialTransformer(wrapped, Similarity())


def test_agreeing_transforms_are_accepted() -> None:
    # Another instance of the family, another eps (the clamp is the sampler's business, not the regression's).
    st = SpatialTransformer(conv_localisation((1, 28, 28), Projective(eps=1e-3)), Projective())
    assert st(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    SpatialTransformer(mlp_localisation((1, 8, 8), ThinPlateSpline((3, 3))), ThinPlateSpline((3, 3)))
    SpatialTransformer(nn.Sequential(nn.Flatten(), nn.Linear(64, 6)), Affine())  # no head: nothing to compare
