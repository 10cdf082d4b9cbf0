"""Mixed precision: warp, sample and the modules under ``torch.autocast`` follow PyTorch's policy for grid_sample
(the parameters, matrix and grid in float32, the sampling in the dtype autocast gives ``F.grid_sample``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchstn
from torchstn import ext
from torchstn.errors import DTypeError
from torchstn.modules import LocalisationHead, SerialSpatialTransformer, SpatialTransformer, conv_localisation
from torchstn.sampling import SamplingOptions, _autocast, _backends
from torchstn.sampling._backend import SamplerCall
from torchstn.sampling._fused import FusedCPUBackend
from torchstn.transforms import Affine, Projective, Similarity, ThinPlateSpline

from ._common import random_input

BF16 = torch.bfloat16
# Against the float32 computation: bfloat16 keeps 8 significant bits, so parameters of size ~1 move by up to
# 2**-9 (a few hundredths of a pixel on these 16x16 images) and a bfloat16 input by 2**-9 of its value; with
# inputs in [0, 1] the outputs stay within 0.03 of float32 (measured: under 0.015).
BF16_ATOL = 3e-2
# A module's localisation network runs in bfloat16 too, so its parameters differ from float32's by its own
# rounding (measured: under 1e-2) and the outputs on random 28x28 images by more: within 0.1 (measured: 0.05).
MODULE_ATOL = 1e-1


def _theta(gen: torch.Generator, b: int) -> torch.Tensor:
    return (torch.eye(2, 3, dtype=torch.float64) + 0.2 * torch.randn(b, 2, 3, generator=gen, dtype=torch.float64)).to(
        torch.float32
    )


def _tutorial_net() -> nn.Module:
    """The PyTorch STN tutorial's shape of network, built with SpatialTransformer."""
    torch.manual_seed(0)
    st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
    with torch.no_grad():  # move off the identity so the warp matters
        st.localisation.head.linear.bias.add_(0.1 * torch.randn_like(st.localisation.head.linear.bias))
    return st


def test_grid_sample_is_float32_under_cpu_autocast() -> None:
    """The policy this module follows, as PyTorch has it (grid_sampler in autocast's float32 list)."""
    x, g = torch.rand(1, 1, 4, 4, dtype=BF16), torch.zeros(1, 2, 2, 2, dtype=BF16)
    with torch.autocast("cpu", dtype=BF16):
        assert F.grid_sample(x, g, align_corners=False).dtype == torch.float32
        assert _autocast.autocast_dtypes(x) == _autocast.AutocastDtypes("cpu", torch.float32, torch.float32)
    assert _autocast.autocast_dtypes(x) is None


@pytest.mark.parametrize("input_dtype", [torch.float32, BF16])
@pytest.mark.parametrize("backend", ["torch", "reference", "auto"])
def test_warp_under_autocast_equals_grid_sample_under_autocast(
    gen: torch.Generator, input_dtype: torch.dtype, backend: str
) -> None:
    x = random_input(gen, (3, 2, 16, 16), torch.float32).to(input_dtype)
    theta = _theta(gen, 3).to(BF16)  # what a localisation network's Linear gives under autocast
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.warp(x, theta.reshape(3, 6), Affine(), (12, 10), backend=backend)  # type: ignore[arg-type]
        grid = F.affine_grid(theta.float(), [3, 2, 12, 10], align_corners=False)
        assert grid.dtype == BF16  # F.affine_grid under CPU autocast rounds the grid itself: torchstn does not
        with torch.autocast("cpu", enabled=False):
            grid = F.affine_grid(theta.float(), [3, 2, 12, 10], align_corners=False)  # the grid in float32
        expected = F.grid_sample(x, grid, align_corners=False)  # autocast samples in float32
    assert out.dtype == expected.dtype == torch.float32
    # The same as the float32 warp of the cast tensors: bit for bit on the grid_sample path, to rounding on the
    # fused kernel and the reference sampler.
    same = torchstn.warp(x.float(), theta.float().reshape(3, 6), Affine(), (12, 10), backend=backend)  # type: ignore[arg-type]
    if backend == "torch":
        assert torch.equal(out, same)
    torch.testing.assert_close(out, same, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # torchstn's grid GEMM against F.affine_grid


def test_warp_under_autocast_is_close_to_float32(gen: torch.Generator) -> None:
    x = random_input(gen, (4, 3, 16, 16), torch.float32)
    theta = _theta(gen, 4).reshape(4, 6)
    for t, p in ((Affine(), theta), (Similarity(), 0.3 * torch.randn(4, 4, generator=gen))):
        reference = torchstn.warp(x, p, t, padding="fill", fill=0.5)
        for xin in (x, x.to(BF16)):
            with torch.autocast("cpu", dtype=BF16):
                out = torchstn.warp(xin, p.to(BF16), t, padding="fill", fill=0.5)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, reference, rtol=0, atol=BF16_ATOL)


def test_sample_under_autocast_accepts_mixed_dtypes_as_grid_sample_does(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 8, 8), torch.float32)
    g = (torch.rand(2, 5, 5, 2, generator=gen) * 2.4 - 1.2).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.sample(x, g, padding="border")
        expected = F.grid_sample(x, g, padding_mode="border", align_corners=False)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    with pytest.raises(DTypeError, match="grid: expected the dtype of input"):  # outside autocast: as before
        torchstn.sample(x, g)


def test_spatial_transformer_under_autocast() -> None:
    """The issue's failing case: the tutorial's network under CPU bfloat16 autocast, forward and backward."""
    st = _tutorial_net()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    reference = st(x)
    with torch.autocast("cpu", dtype=BF16):
        out, params = st(x, return_params=True)
    assert params.dtype == BF16 and out.dtype == torch.float32
    # Sampled from the bfloat16 parameters in float32: the float32 warp of those parameters, to rounding.
    torch.testing.assert_close(out, torchstn.warp(x, params.detach().float(), Affine()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference, rtol=0, atol=MODULE_ATOL)
    out.square().mean().backward()
    grads = [p.grad for p in st.localisation.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def test_multi_head_under_autocast(gen: torch.Generator) -> None:
    t = Affine()
    torch.manual_seed(0)
    loc = nn.Sequential(nn.Flatten(), LocalisationHead(64, t, num_heads=3))
    with torch.no_grad():
        loc[1].linear.bias.add_(0.1 * torch.randn_like(loc[1].linear.bias))
    st = SpatialTransformer(loc, t, output_size=(6, 6))
    x = random_input(gen, (2, 1, 8, 8), torch.float32)
    reference = st(x)
    with torch.autocast("cpu", dtype=BF16):
        out, params = st(x, return_params=True)
    assert out.shape == (2, 3, 1, 6, 6) and out.dtype == torch.float32
    for k in range(3):
        one = torchstn.warp(x, params[:, k].detach().float(), t, (6, 6))
        torch.testing.assert_close(out[:, k], one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference, rtol=0, atol=MODULE_ATOL)


def test_serial_chain_under_autocast_composes_in_float32(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    stages = [SpatialTransformer(conv_localisation((1, 28, 28), t), t) for t in (Affine(), Projective())]
    for st in stages:
        with torch.no_grad():
            st.localisation.head.linear.bias.add_(0.05 * torch.randn_like(st.localisation.head.linear.bias))
    chain = SerialSpatialTransformer(stages)
    x = random_input(gen, (2, 1, 28, 28), torch.float32)
    reference = chain(x)
    with torch.autocast("cpu", dtype=BF16):
        out, params, total = chain(x, return_params=True)
    assert all(p.dtype == BF16 for p in params)
    assert total is not None and total.dtype == torch.float32 and out.dtype == torch.float32
    m = Affine().matrix(params[0].detach().float()) @ Projective().matrix(params[1].detach().float())
    torch.testing.assert_close(total.detach(), m)  # the product formed in float32, not bfloat16
    torch.testing.assert_close(out, reference, rtol=0, atol=MODULE_ATOL)


def test_thin_plate_spline_under_autocast(gen: torch.Generator) -> None:
    t = ThinPlateSpline((3, 3))
    x = random_input(gen, (2, 1, 12, 12), torch.float32)
    p = t.identity_params(2) + 0.05 * torch.randn(2, t.num_params, generator=gen)
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.warp(x, p.to(BF16), t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torchstn.warp(x, p.to(BF16).float(), t), rtol=1e-6, atol=1e-6)


def test_autocast_casts_only_what_autocast_casts() -> None:
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.warp(x, Affine().identity_params(1, dtype=BF16), Affine())  # bf16 -> the input's float64
        assert out.dtype == torch.float64
        with pytest.raises(DTypeError, match=r"params: expected the dtype and device of input \(torch.float64"):
            torchstn.warp(x, Affine().identity_params(1, dtype=torch.float32), Affine())


@pytest.mark.skipif(not ext.available(), reason="the fused kernel is not built")
def test_fused_kernel_under_autocast_gets_float32() -> None:
    x = torch.rand(2, 1, 8, 8)
    theta = (Affine().identity_params(2) + 0.1 * torch.randn(2, 6)).to(BF16)
    taken: list[str] = []
    original = _backends.choose

    def spy(call: SamplerCall) -> object:
        backend = original(call)
        taken.append(backend.name)
        assert call.input.dtype == torch.float32 and call.matrix is not None and call.matrix.dtype == torch.float32
        return backend

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("torchstn.sampling._dispatch.choose", spy)
        with torch.autocast("cpu", dtype=BF16):
            out = torchstn.warp(x, theta, Affine())
    assert taken == ["fused"]
    assert torch.equal(out, torchstn.warp(x, theta.float(), Affine(), backend="fused"))


def test_sampling_narrower_than_the_grid(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    """Were autocast to give grid_sample a low-precision dtype, the grid would still be built in float32 and only
    the sampling run in that dtype (the fused float32 kernel then steps aside, saying why)."""
    monkeypatch.setitem(_autocast._SAMPLE_DTYPES, ("cpu", BF16, torch.float32, torch.float32), BF16)
    x = random_input(gen, (2, 1, 8, 8), torch.float32)
    theta = (Affine().identity_params(2) + 0.1 * torch.randn(2, 6, generator=gen)).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.warp(x, theta, Affine())
    assert out.dtype == BF16
    grid = torchstn.affine_grid(theta.float().view(2, 2, 3), (8, 8)).to(BF16)
    assert torch.equal(out, F.grid_sample(x.to(BF16), grid, align_corners=False))
    call = SamplerCall(x.to(BF16), SamplingOptions(), "bilinear", (8, 8), transform=Affine())
    call.matrix, call.grid_finite = theta.float().view(2, 2, 3), True  # a float32 matrix for a bfloat16 input
    reason = FusedCPUBackend().can_run(call)
    assert reason is not None and "float32 or float64" in reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outside_autocast_nothing_changes(gen: torch.Generator, dtype: torch.dtype) -> None:
    x = random_input(gen, (2, 1, 8, 8), dtype)
    p = (Affine().identity_params(2, dtype=dtype) + 0.1 * torch.randn(2, 6, generator=gen, dtype=dtype)).to(dtype)
    with torch.autocast("cpu", dtype=BF16, enabled=False):
        out = torchstn.warp(x, p, Affine(), backend="torch")
    expected = F.grid_sample(x, torchstn.affine_grid(p.view(2, 2, 3), (8, 8)), align_corners=False)
    assert out.dtype == dtype and torch.equal(out, expected)
    with pytest.raises(DTypeError, match="params: expected the dtype and device of input"):
        torchstn.warp(x, p.to(BF16), Affine())


def test_autocast_on_device(device: torch.device) -> None:
    """bfloat16 autocast on the device (CPU always, CUDA where available): float32 output, close to float32."""
    torch.manual_seed(0)
    st = _tutorial_net().to(device)
    x = torch.rand(4, 1, 28, 28, device=device)
    reference = st(x)
    with torch.autocast(device.type, dtype=BF16):
        out = st(x)
        half = torchstn.warp(x.half(), Affine().identity_params(4, device=device, dtype=torch.float16), Affine())
        g = (torch.rand(4, 5, 6, 2, device=device) * 2 - 1).half()
        sampled = torchstn.sample(x.half(), g)  # a given grid: as F.grid_sample under autocast takes the pair
        expected = F.grid_sample(x.half(), g, align_corners=False)  # CPU: float32; CUDA ("promote"): float16
    assert out.dtype == torch.float32 and out.device.type == device.type
    torch.testing.assert_close(out, reference, rtol=0, atol=MODULE_ATOL)
    assert half.dtype == torch.float32  # float16 input, float32 grid: float32 on both devices
    torch.testing.assert_close(half, x, rtol=0, atol=1e-3)
    assert sampled.dtype == expected.dtype and torch.equal(sampled, expected)


def test_compiled_warp_under_autocast_matches_eager(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 8, 8), torch.float32)
    p = (Affine().identity_params(2) + 0.1 * torch.randn(2, 6, generator=gen)).to(BF16)
    compiled = torch.compile(lambda x, p: torchstn.warp(x, p, Affine()), backend="eager")
    with torch.autocast("cpu", dtype=BF16):
        out = compiled(x, p)
        expected = torchstn.warp(x, p, Affine(), backend="torch")  # a compiled graph takes the grid path
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_antialiased_warp_under_autocast(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 32, 32), torch.float32)
    theta = torch.eye(2, 3).expand(2, 2, 3).to(BF16)  # a (B, 2, 3) theta: a 4x shrink to 8x8
    with torch.autocast("cpu", dtype=BF16):
        out = torchstn.warp(x, theta, output_size=(8, 8), padding="fill", fill=0.5, antialias=True)
    assert out.dtype == torch.float32
    expected = torchstn.warp(x, theta.float(), output_size=(8, 8), padding="fill", fill=0.5, antialias=True)
    assert torch.equal(out, expected)
