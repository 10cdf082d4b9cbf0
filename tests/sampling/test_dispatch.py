"""The one dispatch: non-finite grids and matrices, compile and export paths, dtype and device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import torchstn
from tests.helpers import assert_close
from tests.sampling._common import random_grid, random_input
from torchstn import NonFiniteError, sample

# --- non-finite grids -----------------------------------------------------------------------------------------


def test_nonfinite_grid_raises_by_default() -> None:
    x = torch.rand(1, 1, 4, 4)
    g = torch.zeros(1, 2, 2, 2)
    g[0, 1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="grid"):
        sample(x, g)
    g[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf"):
        sample(x, g)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_nonfinite_propagate_marks_exactly_the_bad_pixels(backend: str) -> None:
    x = torch.rand(1, 2, 4, 4)
    g = torch.zeros(1, 2, 2, 2)
    g[0, 1, 0, 1] = float("nan")
    out = sample(x, g, nonfinite="propagate", backend=backend)  # type: ignore[arg-type]
    assert torch.isnan(out[0, :, 1, 0]).all()
    assert torch.isfinite(out[0, :, 0]).all() and torch.isfinite(out[0, :, 1, 1]).all()


def test_torch_alone_reads_nan_as_plausible_garbage() -> None:
    """Documents why the check exists: with border/reflection padding grid_sample reads NaN as -1."""
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    g = torch.tensor([[[[float("nan"), 0.0]]]])
    left = torch.tensor([[[[-1.0, 0.0]]]])
    for padding in ("border", "reflection"):
        out = F.grid_sample(x, g, padding_mode=padding, align_corners=False)
        assert torch.equal(out, F.grid_sample(x, left, padding_mode=padding, align_corners=False))
    assert F.grid_sample(x, g, mode="nearest", align_corners=False).item() == 0.0


# --- export paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_compiled_sample_matches_eager(gen: torch.Generator, backend: str) -> None:
    x = random_input(gen, (2, 3, 6, 7), torch.float32)
    g = random_grid(gen, 2, 4, 5, torch.float32)

    def fn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return sample(x, g, padding="fill", fill=0.5, backend=backend, nonfinite="propagate")  # type: ignore[arg-type]

    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    assert_close(compiled(x, g), fn(x, g))


def test_compiled_warp_matches_eager(gen: torch.Generator) -> None:
    x = random_input(gen, (2, 1, 8, 8), torch.float32)
    t = torchstn.Similarity()
    p = t.identity_params(2) + 0.1 * torch.randn(2, 4, generator=gen)
    compiled = torch.compile(torchstn.warp, backend="eager")
    assert_close(compiled(x, p, t), torchstn.warp(x, p, t))


def test_sample_preserves_dtype_and_device(device: torch.device, dtype: torch.dtype) -> None:
    x = torch.rand(2, 3, 4, 5, device=device, dtype=dtype)
    g = torch.zeros(2, 6, 7, 2, device=device, dtype=dtype)
    out = sample(x, g)
    assert out.shape == (2, 3, 6, 7) and out.dtype == dtype and out.device.type == device.type
    assert math.isfinite(float(out.sum()))


# --- warp checks the transform matrix instead of the grid ------------------------------------------------------


@pytest.mark.parametrize("family", ["Affine", "Similarity", "Projective", "Attention"])
def test_warp_refuses_nonfinite_params_naming_them(family: str) -> None:
    import torchstn
    from torchstn import transforms

    t = getattr(transforms, family)()
    params = t.identity_params(3)
    params[1, 0] = float("nan")
    x = torch.rand(3, 1, 5, 5)
    with pytest.raises(NonFiniteError, match=r"params: 1 sample\(s\)"):
        torchstn.warp(x, params, t)
    out = torchstn.warp(x, params, t, nonfinite="propagate")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()


def test_warp_still_catches_a_grid_that_overflows_from_finite_params() -> None:
    import torchstn
    from torchstn.transforms import Affine, Projective

    big = torch.full((1, 6), 3e38)  # finite entries, but x * a + y * b + c overflows to inf
    with pytest.raises(NonFiniteError, match="grid"):
        torchstn.warp(torch.rand(1, 1, 4, 4), big, Affine())
    steep = Projective().identity_params(1)
    steep[0, 0] = 1e33  # finite, but divided by a denominator clamped to eps it exceeds float32's range
    steep[0, 6] = 4.0 / 3.0  # the denominator 4/3 x + 1 vanishes at the first pixel centre, x = -0.75
    assert torch.isinf(torchstn.projective_grid(Projective().matrix(steep), (4, 4))).any()
    with pytest.raises(NonFiniteError, match="params"):  # the transform's own grid names the finite params
        Projective().grid(steep, (4, 4))
    with pytest.raises(NonFiniteError, match="grid"):
        torchstn.warp(torch.rand(1, 1, 4, 4), steep, Projective())


def test_multi_head_transformer_refuses_nonfinite_params() -> None:
    from torchstn.modules import SpatialTransformer
    from torchstn.transforms import Affine

    st = SpatialTransformer(torch.nn.Identity(), Affine())
    params = Affine().identity_params(4).view(2, 2, 6).clone()
    params[1, 1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="params"):
        st.sample_with(torch.rand(2, 1, 5, 5), params)


# --- every device: the caches are per device and dtype, the fused CPU kernel is not taken elsewhere --------------


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_warp_on_device_matches_affine_grid_and_grid_sample(
    device: torch.device, dtype: torch.dtype, backend: str
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = random_input(gen, (3, 2, 9, 11), dtype).to(device)
    theta = (torch.eye(2, 3, dtype=dtype) + 0.2 * torch.randn(3, 2, 3, generator=gen, dtype=dtype)).to(device)
    for size in ((9, 11), (7, 5)):  # two sizes: two cached bases on this device
        out = torchstn.warp(x, theta.reshape(3, 6), torchstn.Affine(), size, padding="border", backend=backend)  # type: ignore[arg-type]
        grid = F.affine_grid(theta, [3, 2, *size], align_corners=False)
        expected = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        assert out.device == x.device and out.dtype == dtype
        assert_close(out, expected)


def test_thin_plate_spline_on_device_matches_cpu(device: torch.device) -> None:
    t = torchstn.ThinPlateSpline((3, 3))
    gen = torch.Generator().manual_seed(0)
    x = random_input(gen, (2, 1, 10, 12), torch.float32)
    p = t.identity_params(2) + 0.05 * torch.randn(2, t.num_params, generator=gen)
    on_cpu = torchstn.warp(x, p, t, (8, 8))
    on_device = torchstn.warp(x.to(device), p.to(device), t, (8, 8))  # the per-size matrices built on the device
    assert on_device.device.type == device.type
    assert_close(on_device.cpu(), on_cpu)
    assert all(key[2].type in ("cpu", device.type) for key in t._weights)


def test_fused_kernel_is_not_taken_off_the_cpu() -> None:
    from torchstn.sampling import SamplingOptions
    from torchstn.sampling._backend import SamplerCall
    from torchstn.sampling._fused import FusedCPUBackend

    x = torch.empty(2, 1, 8, 8, device="meta")  # any non-CPU device: no kernel, no data needed
    matrix = torch.empty(2, 2, 3, device="meta")
    call = SamplerCall(x, SamplingOptions(), "bilinear", (8, 8), transform=torchstn.Affine(), matrix=matrix)
    assert FusedCPUBackend().can_run(call) == "it runs on the CPU only, got meta"
