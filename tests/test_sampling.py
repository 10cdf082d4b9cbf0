"""Samplers: fast path vs reference, the paper's gradients, padding, non-finite grids, compile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchstn
from tests.helpers import assert_close
from torchstn import NonFiniteError, sample

PADDINGS = ["zeros", "border", "reflection"]


def _grid(gen: torch.Generator, b: int, h: int, w: int, dtype: torch.dtype, spread: float = 1.3) -> torch.Tensor:
    """Random grid covering the image and a margin around it, kept away from integer pixel positions."""
    g = (torch.rand(b, h, w, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    return g.to(dtype)


def _input(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)


# --- reference sampler == fast path -----------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_reference_matches_grid_sample_2d(
    gen: torch.Generator, mode: str, padding: str, align_corners: bool, dtype: torch.dtype
) -> None:
    x = _input(gen, (2, 3, 5, 7), dtype)
    g = _grid(gen, 2, 4, 6, dtype)
    fast = sample(x, g, mode, padding, align_corners=align_corners)  # type: ignore[arg-type]
    ref = sample(x, g, mode, padding, align_corners=align_corners, backend="reference")  # type: ignore[arg-type]
    assert_close(ref, fast, scale=10)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
def test_reference_matches_grid_sample_3d(gen: torch.Generator, mode: str, padding: str, align_corners: bool) -> None:
    x = _input(gen, (2, 2, 4, 5, 6), torch.float64)
    g = (torch.rand(2, 3, 4, 5, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 1.3
    fast = sample(x, g, mode, padding, align_corners=align_corners)  # type: ignore[arg-type]
    ref = sample(x, g, mode, padding, align_corners=align_corners, backend="reference")  # type: ignore[arg-type]
    assert_close(ref, fast)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_reference_gradients_match_grid_sample(
    gen: torch.Generator, mode: str, padding: str, align_corners: bool
) -> None:
    x = _input(gen, (2, 2, 5, 6), torch.float64).requires_grad_()
    g = _grid(gen, 2, 3, 4, torch.float64).requires_grad_()
    w = torch.rand(2, 2, 3, 4, generator=gen, dtype=torch.float64)
    grads = []
    for backend in ("torch", "reference"):
        out = sample(x, g, mode, padding, align_corners=align_corners, backend=backend)  # type: ignore[arg-type]
        grads.append(torch.autograd.grad((out * w).sum(), (x, g)))
    assert_close(grads[1][0], grads[0][0])
    assert_close(grads[1][1], grads[0][1], scale=100)


# --- gradients ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "fill"])
def test_gradcheck_input_and_grid(gen: torch.Generator, backend: str, mode: str, padding: str) -> None:
    x = _input(gen, (1, 2, 4, 5), torch.float64).requires_grad_()
    g = _grid(gen, 1, 3, 3, torch.float64, spread=0.9).requires_grad_()
    fill = [0.25, -1.0] if padding == "fill" else None

    def fn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return sample(x, g, mode, padding, fill, backend=backend)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, g))


def test_gradcheck_trilinear(gen: torch.Generator) -> None:
    x = _input(gen, (1, 1, 3, 4, 4), torch.float64).requires_grad_()
    g = ((torch.rand(1, 2, 2, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9).requires_grad_()
    for backend in ("torch", "reference"):
        assert torch.autograd.gradcheck(lambda x, g, b=backend: sample(x, g, "trilinear", backend=b), (x, g))


def test_reference_supports_double_backward(gen: torch.Generator) -> None:
    x = _input(gen, (1, 1, 4, 4), torch.float64).requires_grad_()
    g = _grid(gen, 1, 2, 3, torch.float64, spread=0.8).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, g: sample(x, g, backend="reference"), (x, g))


def _paper_gradients(u: np.ndarray, xs: float, ys: float) -> tuple[np.ndarray, float, float]:
    """Equations (6)-(7) of the paper, evaluated literally for one output point (pixel coordinates)."""
    h, w = u.shape
    d_u = np.zeros_like(u)
    d_x = d_y = 0.0
    for n in range(h):
        for m in range(w):
            kx, ky = max(0.0, 1 - abs(xs - m)), max(0.0, 1 - abs(ys - n))
            d_u[n, m] = kx * ky
            sx = 0.0 if abs(m - xs) >= 1 else (1.0 if m >= xs else -1.0)
            sy = 0.0 if abs(n - ys) >= 1 else (1.0 if n >= ys else -1.0)
            d_x += u[n, m] * ky * sx
            d_y += u[n, m] * kx * sy
    return d_u, d_x, d_y


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_gradients_follow_the_papers_equations(gen: torch.Generator, backend: str) -> None:
    h, w = 5, 6
    u = _input(gen, (1, 1, h, w), torch.float64).requires_grad_()
    pts = [(1.3, 2.7), (0.2, 0.9), (4.6, 3.1), (-0.4, 1.5)]  # pixel coordinates (x, y), off the integer kinks
    for px, py in pts:
        # align_corners=False: pixel p <-> normalised (2p + 1) / n - 1.
        g = torch.tensor([[[[(2 * px + 1) / w - 1, (2 * py + 1) / h - 1]]]], dtype=torch.float64, requires_grad=True)
        out = sample(u, g, backend=backend)  # type: ignore[arg-type]
        du, dg = torch.autograd.grad(out.sum(), (u, g))
        e_u, e_x, e_y = _paper_gradients(u.detach()[0, 0].numpy(), px, py)
        np.testing.assert_allclose(du[0, 0].numpy(), e_u, atol=1e-12)
        # d out / d normalised x = d out / d pixel x * (w / 2)
        np.testing.assert_allclose(dg[0, 0, 0].numpy(), [e_x * w / 2, e_y * h / 2], atol=1e-10)


def test_bilinear_hand_checkable_values() -> None:
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # pixel centres with align_corners=False: -0.5 and 0.5 along each axis.
    g = torch.tensor([[[[-0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [0.0, 0.5], [1.0, 0.5]]]])
    torch.testing.assert_close(sample(x, g), torch.tensor([[[[0.0, 1.0, 1.5, 2.5, 1.5]]]]))
    torch.testing.assert_close(sample(x, g, padding="border")[..., -1], torch.tensor([[[3.0]]]))


# --- padding with a constant ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fill_padding_is_a_constant_per_channel(gen: torch.Generator, mode: str, backend: str) -> None:
    x = _input(gen, (2, 3, 6, 6), torch.float64)
    fill = torch.tensor([0.5, -2.0, 7.0], dtype=torch.float64)
    g = _grid(gen, 2, 5, 5, torch.float64, spread=3.0)
    out = sample(x, g, mode, "fill", fill, backend=backend)  # type: ignore[arg-type]
    # Independent computation: pad the image with the constant far enough, then sample inside the padded frame.
    pad = 8
    padded = torch.cat([F.pad(x[:, c : c + 1], (pad,) * 4, value=float(fill[c])) for c in range(3)], dim=1)
    scale = torch.tensor([6 / (6 + 2 * pad)] * 2, dtype=torch.float64)
    expected = sample(padded, g * scale, mode, "border")  # type: ignore[arg-type]
    assert_close(out, expected, scale=1e3)


def test_fill_far_outside_is_exactly_the_fill(gen: torch.Generator) -> None:
    x = _input(gen, (2, 2, 4, 4), torch.float32)
    g = torch.full((2, 3, 3, 2), 5.0)
    out = sample(x, g, padding="fill", fill=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(out[:, :, 0, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_fill_equals_warping_a_validity_mask(gen: torch.Generator) -> None:
    x = _input(gen, (1, 1, 6, 7), torch.float64)
    g = _grid(gen, 1, 5, 5, torch.float64, spread=1.5)
    inside = sample(torch.ones_like(x), g)
    expected = sample(x, g) + 0.7 * (1 - inside)
    assert_close(sample(x, g, padding="fill", fill=0.7), expected)


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


# --- rounding convention of nearest --------------------------------------------------------------------------


def test_nearest_reads_the_pixel_containing_the_point() -> None:
    x = torch.arange(5.0).view(1, 1, 1, 5)
    xs = torch.tensor([-0.95, -0.65, -0.1, 0.1, 0.55, 0.95])
    g = torch.stack((xs, torch.zeros_like(xs)), -1).view(1, 1, -1, 2)
    for backend in ("torch", "reference"):
        out = sample(x, g, "nearest", backend=backend)  # type: ignore[arg-type]
        assert out.flatten().tolist() == [0.0, 0.0, 2.0, 2.0, 3.0, 4.0]


# --- export paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_compiled_sample_matches_eager(gen: torch.Generator, backend: str) -> None:
    x = _input(gen, (2, 3, 6, 7), torch.float32)
    g = _grid(gen, 2, 4, 5, torch.float32)

    def fn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return sample(x, g, padding="fill", fill=0.5, backend=backend, nonfinite="propagate")  # type: ignore[arg-type]

    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    assert_close(compiled(x, g), fn(x, g))


def test_compiled_warp_matches_eager(gen: torch.Generator) -> None:
    x = _input(gen, (2, 1, 8, 8), torch.float32)
    t = torchstn.Similarity()
    p = t.identity_params(2) + 0.1 * torch.randn(2, 4, generator=gen)
    compiled = torch.compile(torchstn.warp, backend="eager")
    assert_close(compiled(x, p, t), torchstn.warp(x, p, t))


def test_reference_sampler_is_plain_ops_for_export(gen: torch.Generator) -> None:
    """The reference backend traces to a graph without any grid_sampler operator."""
    x = _input(gen, (1, 1, 5, 5), torch.float32)
    g = _grid(gen, 1, 3, 3, torch.float32)

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return sample(x, g, backend="reference", nonfinite="propagate")

    ep = torch.export.export(M(), (x, g))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("grid_sampler" in t for t in targets)
    assert_close(ep.module()(x, g), sample(x, g))


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
    assert torch.isinf(Projective().grid(steep, (4, 4))).any()
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
