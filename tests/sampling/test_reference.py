"""The reference sampler (equation (3) in plain ops) against F.grid_sample: values, the paper's gradients,
double backward, the rounding of nearest, export without a grid-sampler operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import assert_close
from tests.sampling._common import random_grid, random_input
from torchstn import sample

PADDINGS = ["zeros", "border", "reflection"]

# --- reference sampler == fast path -----------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_reference_matches_grid_sample_2d(
    gen: torch.Generator, mode: str, padding: str, align_corners: bool, dtype: torch.dtype
) -> None:
    x = random_input(gen, (2, 3, 5, 7), dtype)
    g = random_grid(gen, 2, 4, 6, dtype)
    fast = sample(x, g, mode, padding, align_corners=align_corners)  # type: ignore[arg-type]
    ref = sample(x, g, mode, padding, align_corners=align_corners, backend="reference")  # type: ignore[arg-type]
    assert_close(ref, fast, scale=10)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
def test_reference_matches_grid_sample_3d(gen: torch.Generator, mode: str, padding: str, align_corners: bool) -> None:
    x = random_input(gen, (2, 2, 4, 5, 6), torch.float64)
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
    x = random_input(gen, (2, 2, 5, 6), torch.float64).requires_grad_()
    g = random_grid(gen, 2, 3, 4, torch.float64).requires_grad_()
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
def test_gradcheck_input_andrandom_grid(gen: torch.Generator, backend: str, mode: str, padding: str) -> None:
    x = random_input(gen, (1, 2, 4, 5), torch.float64).requires_grad_()
    g = random_grid(gen, 1, 3, 3, torch.float64, spread=0.9).requires_grad_()
    fill = [0.25, -1.0] if padding == "fill" else None

    def fn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return sample(x, g, mode, padding, fill, backend=backend)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, g))


def test_gradcheck_trilinear(gen: torch.Generator) -> None:
    x = random_input(gen, (1, 1, 3, 4, 4), torch.float64).requires_grad_()
    g = ((torch.rand(1, 2, 2, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9).requires_grad_()
    for backend in ("torch", "reference"):
        assert torch.autograd.gradcheck(lambda x, g, b=backend: sample(x, g, "trilinear", backend=b), (x, g))


def test_reference_supports_double_backward(gen: torch.Generator) -> None:
    x = random_input(gen, (1, 1, 4, 4), torch.float64).requires_grad_()
    g = random_grid(gen, 1, 2, 3, torch.float64, spread=0.8).requires_grad_()
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
    u = random_input(gen, (1, 1, h, w), torch.float64).requires_grad_()
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


# --- rounding convention of nearest --------------------------------------------------------------------------


def test_nearest_reads_the_pixel_containing_the_point() -> None:
    x = torch.arange(5.0).view(1, 1, 1, 5)
    xs = torch.tensor([-0.95, -0.65, -0.1, 0.1, 0.55, 0.95])
    g = torch.stack((xs, torch.zeros_like(xs)), -1).view(1, 1, -1, 2)
    for backend in ("torch", "reference"):
        out = sample(x, g, "nearest", backend=backend)  # type: ignore[arg-type]
        assert out.flatten().tolist() == [0.0, 0.0, 2.0, 2.0, 3.0, 4.0]


def test_reference_sampler_is_plain_ops_for_export(gen: torch.Generator) -> None:
    """The reference backend traces to a graph without any grid_sampler operator."""
    x = random_input(gen, (1, 1, 5, 5), torch.float32)
    g = random_grid(gen, 1, 3, 3, torch.float32)

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return sample(x, g, backend="reference", nonfinite="propagate")

    ep = torch.export.export(M(), (x, g))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("grid_sampler" in t for t in targets)
    assert_close(ep.module()(x, g), sample(x, g))
