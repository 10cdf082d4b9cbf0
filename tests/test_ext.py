"""The fused CPU kernel (torchstn.ext): agreement with F.affine_grid + F.grid_sample, gradients, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchstn
from torchstn import ext
from torchstn.errors import NonFiniteError, OptionError
from torchstn.sampling import _fused
from torchstn.sampling._fused import FusedCPUBackend
from torchstn.transforms import Affine, Attention, Projective, Similarity, ThinPlateSpline, Translation

if not ext.available():
    if os.environ.get("TORCHSTN_REQUIRE_EXT") == "1":
        pytest.fail("the fused kernel does not load: build it with `make ext` (python -m torchstn.ext build)")
    pytest.skip("the fused kernel is not built (python -m torchstn.ext build)", allow_module_level=True)

PADDINGS = ("zeros", "border", "reflection")


def _theta(b: int, scale: float, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.eye(2, 3, dtype=dtype) + scale * torch.randn(b, 2, 3, generator=gen, dtype=dtype)


def _torch_path(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], padding: str, ac: bool) -> torch.Tensor:
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=ac)
    return F.grid_sample(x, grid, padding_mode=padding, align_corners=ac)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")  # torch's note on unit sizes
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("in_size", "out_size", "scale"),
    [((7, 9), (5, 11), 0.3), ((12, 10), (12, 10), 1.5), ((1, 6), (3, 4), 0.5), ((5, 5), (1, 1), 0.2)],
)
def test_fused_matches_torch_values_and_gradients(
    padding: str,
    align_corners: bool,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    scale: float,
    gen: torch.Generator,
) -> None:
    """Forward, input gradient and matrix gradient against torch's path, float64, many points outside the image."""
    x = torch.randn(3, 2, *in_size, generator=gen, dtype=torch.float64, requires_grad=True)
    theta = _theta(3, scale, gen).requires_grad_()
    ours = torchstn.warp(x, theta.reshape(3, 6), Affine(), out_size, padding=padding, align_corners=align_corners,
                         backend="fused")  # fmt: skip
    ref = _torch_path(x, theta, out_size, padding, align_corners)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad(ours, (x, theta), w)
    g_ref = torch.autograd.grad(ref, (x, theta), w)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_on_integer_coordinates(gen: torch.Generator) -> None:
    """Source points exactly on pixel centres and on the image's edges (floor boundaries, the -1 and W limits).

    Values and input gradients must agree. The matrix gradient is not compared here: on a kink of the bilinear
    kernel it is one-sided, and which side depends on the last bit of the coordinate, which the two paths round
    differently (torch's grid is a GEMM); the random-matrix test compares it away from kinks."""
    x = torch.randn(2, 3, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    # Scale 2 with align_corners=True maps output pixels onto every other input pixel centre, and the edges onto
    # the first and last centres; the translation then pushes half the points exactly onto -1 and W.
    theta = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[1.0, 0.0, 2.0 / 7], [0.0, 1.0, -2.0 / 5]]],
                         dtype=torch.float64, requires_grad=True)  # fmt: skip
    for padding in PADDINGS:
        ours = torchstn.warp(x, theta.reshape(2, 6), Affine(), padding=padding, align_corners=True, backend="fused")
        ref = _torch_path(x, theta, (6, 8), padding, True)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        (g_ours,) = torch.autograd.grad(ours.sum(), x)
        (g_ref,) = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding", PADDINGS)
def test_fused_gradcheck(padding: str, gen: torch.Generator) -> None:
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _theta(2, 0.3, gen).reshape(2, 6).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, p: torchstn.warp(x, p, Affine(), (4, 7), padding=padding, backend="fused"), (x, p)
    )


def test_fused_float32_against_float64(gen: torch.Generator) -> None:
    """float32 results against the float64 answer at SVHN's size: as close as torch's own float32 path, or closer
    (the matrix gradient is summed in float64)."""
    x64 = torch.rand(8, 3, 64, 64, generator=gen, dtype=torch.float64)
    t64 = _theta(8, 0.1, gen)
    w64 = torch.randn(8, 3, 64, 64, generator=gen, dtype=torch.float64)
    x32, t32 = x64.float().requires_grad_(), t64.float().requires_grad_()
    out32 = torchstn.warp(x32, t32.reshape(8, 6), Affine(), backend="fused")
    g32 = torch.autograd.grad(out32, (x32, t32), w64.float())
    x64.requires_grad_()
    t64.requires_grad_()
    ref = _torch_path(x64, t64, (64, 64), "zeros", False)
    g64 = torch.autograd.grad(ref, (x64, t64), w64)
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-5)
    xt, tt = x64.detach().float().requires_grad_(), t64.detach().float().requires_grad_()
    gt = torch.autograd.grad(_torch_path(xt, tt, (64, 64), "zeros", False), (xt, tt), w64.float())
    for ours, theirs, exact in zip(g32, gt, g64, strict=True):
        err = float((ours.double() - exact).norm() / exact.norm())
        assert err < 1e-5
        assert err <= float((theirs.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize("transform", [Attention(), Similarity(), Translation()], ids=repr)
def test_auto_takes_the_kernel_for_every_affine_family(transform: torchstn.Transform, gen: torch.Generator) -> None:
    x = torch.rand(4, 3, 9, 13, generator=gen, dtype=torch.float64)
    p = transform.identity_params(4, dtype=torch.float64) + 0.1 * torch.randn(
        4, transform.num_params, generator=gen, dtype=torch.float64
    )
    fused = torchstn.warp(x, p, transform, (7, 8), backend="fused")
    auto = torchstn.warp(x, p, transform, (7, 8))
    plain = torchstn.warp(x, p, transform, (7, 8), backend="torch")
    torch.testing.assert_close(fused, auto, rtol=0, atol=0)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)


def test_auto_uses_the_kernel(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    """backend='auto' goes through the kernel where it applies, and around it where it does not."""
    calls: list[str] = []
    real = FusedCPUBackend.run

    def spy(self: FusedCPUBackend, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append("fused")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FusedCPUBackend, "run", spy)
    x = torch.rand(2, 1, 8, 8, generator=gen)
    p = Affine().identity_params(2)
    torchstn.warp(x, p, Affine())
    assert calls == ["fused"]
    torchstn.warp(x, p, Affine(), mode="nearest")
    torchstn.warp(x, p, Affine(), nonfinite="propagate")
    torchstn.warp(x, p, Affine(), backend="torch")
    torchstn.warp(x, ThinPlateSpline().identity_params(2), ThinPlateSpline())
    assert calls == ["fused"]
    torchstn.warp(x.double(), Projective().identity_params(2, dtype=torch.float64), Projective())
    assert calls == ["fused", "fused"]
    st = torchstn.SpatialTransformer(torchstn.mlp_localisation((1, 8, 8), Affine()), Affine())
    st(x)
    assert calls == ["fused", "fused", "fused"]


def test_fill_padding_through_the_kernel(gen: torch.Generator) -> None:
    x = torch.rand(3, 3, 6, 7, generator=gen, dtype=torch.float64)
    p = _theta(3, 0.6, gen).reshape(3, 6)
    fill = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    ours = torchstn.warp(x, p, Affine(), padding="fill", fill=fill, backend="fused")
    plain = torchstn.warp(x, p, Affine(), padding="fill", fill=fill, backend="torch")
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)


def test_fused_refuses_what_it_cannot_run(gen: torch.Generator) -> None:
    x = torch.rand(2, 1, 8, 8, generator=gen)
    with pytest.raises(OptionError, match=r"backend: 'fused'.*2D matrix transforms"):
        torchstn.warp(x, ThinPlateSpline().identity_params(2), ThinPlateSpline(), backend="fused")
    vol = torch.rand(2, 1, 4, 4, 4, generator=gen)
    with pytest.raises(OptionError, match=r"backend: 'fused'.*2D matrix transforms"):
        torchstn.warp(vol, torchstn.Affine3D().identity_params(2), torchstn.Affine3D(), backend="fused")
    with pytest.raises(OptionError, match=r"backend: 'fused'.*bilinear"):
        torchstn.warp(x, Affine().identity_params(2), Affine(), mode="bicubic", backend="fused")
    with pytest.raises(OptionError, match=r"backend: 'fused'.*float32 or float64"):
        torchstn.warp(x.half(), Affine().identity_params(2).half(), Affine(), backend="fused")
    with pytest.raises(OptionError, match=r"backend: 'fused'.*propagate"):
        torchstn.warp(x, Affine().identity_params(2), Affine(), nonfinite="propagate", backend="fused")
    with pytest.raises(OptionError, match="fill"):
        torchstn.warp(x, Affine().identity_params(2), Affine(), padding="fill", backend="fused")
    for backend in ("fused", "auto"):  # bad options are named as on the grid path
        with pytest.raises(OptionError, match="padding"):
            torchstn.warp(x, Affine().identity_params(2), Affine(), padding="wrap", backend=backend)  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="nonfinite"):
            torchstn.warp(x, Affine().identity_params(2), Affine(), nonfinite="nan", backend=backend)  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="mode"):
            torchstn.warp(x, Affine().identity_params(2), Affine(), mode="area", backend=backend)  # type: ignore[arg-type]
    # a ready-made grid has no matrix for the kernel to sample from: "fused" insists, so sample() refuses it
    grid = torchstn.affine_grid(torch.eye(2, 3).expand(2, 2, 3), (8, 8))
    with pytest.raises(OptionError, match=r"backend: 'fused'.*matrix.*use warp"):
        torchstn.sample(x, grid, backend="fused")
    torch.testing.assert_close(torchstn.sample(x, grid, backend="auto"), torchstn.sample(x, grid, backend="torch"))


def test_nonfinite_params_with_the_kernel(gen: torch.Generator) -> None:
    x = torch.rand(2, 1, 8, 8, generator=gen)
    p = Affine().identity_params(2)
    p[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="params"):
        torchstn.warp(x, p, Affine(), backend="fused")
    out = torchstn.warp(x, p, Affine(), backend="fused", nonfinite="ignore")  # the kernel reads NaN as outside
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-6)
    assert (out[1] == 0).all()
    huge = Affine().identity_params(2)
    huge[:, 0] = 1e30  # finite, far outside: every tap is padding, and nothing overflows an integer conversion
    assert (torchstn.warp(x, huge, Affine(), backend="fused") == 0).all()
    torch.testing.assert_close(
        torchstn.warp(x, huge, Affine(), padding="border", backend="fused"),
        torchstn.warp(x, huge, Affine(), padding="border", backend="torch"),
    )
    # reflection folds any finite coordinate back into the image (torch's own kernel converts the fold count to an
    # integer, undefined this far out, so there is nothing to compare with): values stay within the input's range
    reflected = torchstn.warp(x, huge, Affine(), padding="reflection", backend="fused")
    assert torch.isfinite(reflected).all()
    assert reflected.min() >= x.min() - 1e-6
    assert reflected.max() <= x.max() + 1e-6
    for padding in PADDINGS:  # a NaN point reads as outside whatever the padding
        out = torchstn.warp(x, p, Affine(), padding=padding, backend="fused", nonfinite="ignore")
        assert (out[1] == 0).all()


def test_second_order_gradients_are_refused(gen: torch.Generator) -> None:
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    p = Affine().identity_params(2, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(torchstn.warp(x, p, Affine(), backend="fused").sum(), p, create_graph=True)
    with pytest.raises(torchstn.errors.UnsupportedError, match=r"first-order gradients only.*reference"):
        torch.autograd.grad(g.sum(), x)
    # without create_graph the backward builds no graph at all
    (g,) = torch.autograd.grad(torchstn.warp(x, p, Affine(), backend="fused").sum(), p)
    assert g.grad_fn is None


def test_results_do_not_depend_on_the_thread_count(gen: torch.Generator) -> None:
    x = torch.rand(6, 3, 20, 24, generator=gen, requires_grad=True)
    p = _theta(6, 0.2, gen, torch.float32).reshape(6, 6).requires_grad_()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torchstn.warp(x, p, Affine(), backend="fused")
            results.append((out, *torch.autograd.grad(out.square().sum(), (x, p))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_inference_mode_then_training(gen: torch.Generator) -> None:
    """The cached target coordinates are built outside inference mode, so a later autograd call can save them."""
    _fused._coords_cache.clear()
    x = torch.rand(2, 1, 11, 13, generator=gen)
    p = Affine().identity_params(2)
    with torch.inference_mode():
        torchstn.warp(x, p, Affine(), backend="fused")
    p = p.clone().requires_grad_()
    torchstn.warp(x, p, Affine(), backend="fused").sum().backward()
    assert p.grad is not None


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHSTN_EXT_DIR", str(tmp_path))
    assert ext.cache_root() == tmp_path
    assert ext.build_dir().parent == tmp_path
    monkeypatch.delenv("TORCHSTN_EXT_DIR")
    if sys.prefix != sys.base_prefix:  # the test suite runs in the project's virtual environment
        assert ext.cache_root().is_relative_to(sys.prefix)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ext.cache_root() == tmp_path / "xdg" / "torchstn" / "ext"


def test_build_key_and_status_command(tmp_path: object) -> None:
    key = ext.build_dir()
    assert key.name.startswith("torchstn_ext-")
    assert key == ext.build_dir()  # stable within a machine
    done = subprocess.run([sys.executable, "-m", "torchstn.ext", "status"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "loads" in done.stdout
    env = {**os.environ, "TORCHSTN_EXT": "0"}
    off = subprocess.run(
        [sys.executable, "-m", "torchstn.ext", "status"], capture_output=True, text=True, check=False, env=env
    )
    assert off.returncode == 1
    assert "disabled" in off.stdout


def _python_with_cache(code: str, cache: Path) -> str:
    """Run ``code`` in a fresh interpreter whose kernel cache is ``cache``; return its output (it must succeed)."""
    env = {**os.environ, "TORCHSTN_EXT_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_missing_build_is_not_compiled_implicitly(tmp_path: Path) -> None:
    """With an empty cache directory, warp keeps working on F.grid_sample and compiles nothing."""
    code = (
        "import torch, torchstn; from torchstn import ext; "
        "x = torch.rand(1, 1, 4, 4); p = torchstn.Affine().identity_params(1); "
        "out = torchstn.warp(x, p, torchstn.Affine()); "
        "assert torch.allclose(out, x, atol=1e-6); assert not ext.available(); print('ok')"
    )
    assert _python_with_cache(code, tmp_path) == "ok"
    assert list(os.scandir(str(tmp_path))) == []


@pytest.mark.parametrize("combine", ["stack", "concat"])
def test_heads_share_one_input_in_the_kernel(combine: str, gen: torch.Generator) -> None:
    """N matrices per image (a multi-head transformer): values and gradients, the input's summed over the heads,
    against the grid path; padding='fill' with a per-sample fill exercises the heads' fill expansion."""
    loc = torchstn.mlp_localisation((2, 9, 10), Attention(), num_heads=3)
    (head,) = (m for m in loc.modules() if isinstance(m, torchstn.LocalisationHead))
    with torch.no_grad():  # move the heads apart, and make them depend on the input
        head.linear.bias.add_(0.3 * torch.randn(head.linear.bias.shape, generator=gen))
        head.linear.weight.add_(0.05 * torch.randn(head.linear.weight.shape, generator=gen))
    fill = torch.rand(4, 2, generator=gen, dtype=torch.float64)
    kw = {"output_size": (5, 6), "combine": combine, "padding": "fill", "fill": fill}
    fused = torchstn.SpatialTransformer(loc, Attention(), backend="fused", **kw).double()  # type: ignore[arg-type]
    plain = torchstn.SpatialTransformer(loc, Attention(), backend="torch", **kw).double()  # type: ignore[arg-type]
    x = torch.rand(4, 2, 9, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    a, b = fused(x), plain(x)
    assert a.shape == b.shape == ((4, 3, 2, 5, 6) if combine == "stack" else (4, 6, 5, 6))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    w = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    leaves = (x, *loc.parameters())
    for ga, gb in zip(torch.autograd.grad(a, leaves, w), torch.autograd.grad(b, leaves, w), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)


def test_composed_chain_through_the_kernel(gen: torch.Generator) -> None:
    """A serial chain (compose=True) samples the input once per stage with the composed matrix: through the kernel
    when every stage so far is affine, equal to the grid path in values and gradients; a projective stage falls
    back to the grid."""

    def chain(backend: str, second: torchstn.Transform) -> torchstn.SerialSpatialTransformer:
        torch.manual_seed(3)
        stages = []
        for t in (Similarity(), second):
            loc = torchstn.mlp_localisation((1, 12, 12), t, hidden=(8,))
            (head,) = (m for m in loc.modules() if isinstance(m, torchstn.LocalisationHead))
            with torch.no_grad():
                head.linear.weight.normal_(0.0, 0.02)
            stages.append(torchstn.SpatialTransformer(loc, t, backend=backend))  # type: ignore[arg-type]
        return torchstn.SerialSpatialTransformer(stages, compose=True).double()

    x = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    for second in (Attention(), Projective()):
        fused, plain = chain("fused", second), chain("torch", second)
        a, b = fused(x), plain(x)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        ga = torch.autograd.grad(a.square().sum(), (x, *fused.parameters()))
        gb = torch.autograd.grad(b.square().sum(), (x, *plain.parameters()))
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)


def _homographies(b: int, gen: torch.Generator, scale: float) -> torch.Tensor:
    p = Projective().identity_params(b, dtype=torch.float64)
    p[:, :6] += 0.2 * torch.randn(b, 6, generator=gen, dtype=torch.float64)
    p[:, 6:] += scale * torch.randn(b, 2, generator=gen, dtype=torch.float64)
    return p


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("scale", [0.05, 1.5])  # 1.5: the horizon crosses the output, denominators change sign
def test_projective_through_the_kernel(padding: str, align_corners: bool, scale: float, gen: torch.Generator) -> None:
    """Values and gradients (input and the 8 parameters) against the grid path (projective_grid + grid_sample).

    Near the horizon source points lie far outside (|coordinate| up to ~1e5 here); reflection folds them back with
    fmod, which carries the coordinate's rounding (1e-16 relative) into the result, hence 1e-8 and not 1e-12."""
    x = torch.randn(3, 2, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _homographies(3, gen, scale).requires_grad_()
    kw = {"padding": padding, "align_corners": align_corners}
    a = torchstn.warp(x, p, Projective(), (7, 10), backend="fused", **kw)  # type: ignore[arg-type]
    b = torchstn.warp(x, p, Projective(), (7, 10), backend="torch", **kw)  # type: ignore[arg-type]
    tol = 1e-8 if padding == "reflection" and scale > 1 else 1e-12
    torch.testing.assert_close(a, b, rtol=0, atol=tol)
    w = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    for ga, gb in zip(torch.autograd.grad(a, (x, p), w), torch.autograd.grad(b, (x, p), w), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=max(tol, 1e-9))


def test_projective_clamped_denominator(gen: torch.Generator) -> None:
    """A denominator exactly 0 at one output column is clamped to +eps, as safe_denominator does, with no
    gradient through it; the kernel agrees with the grid path there too."""
    x = torch.rand(1, 1, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    col = torchstn.geometry.normalized_coords(8, dtype=torch.float64)[3]
    # den = x - col: zero at output column 3, negative left of it, positive right of it
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    m = Projective().matrix(p).clone()
    m[:, 2, 2] = -col
    p = Projective().params_from_matrix(m / m[:, 2:, 2:])  # last entry normalised to 1 (a scaled homography)
    p = p.requires_grad_()
    for padding in PADDINGS:
        a = torchstn.warp(x, p, Projective(), padding=padding, backend="fused", nonfinite="ignore")
        b = torchstn.warp(x, p, Projective(), padding=padding, backend="torch", nonfinite="ignore")
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        for ga, gb in zip(torch.autograd.grad(a.sum(), (x, p)), torch.autograd.grad(b.sum(), (x, p)), strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-9)


def test_projective_gradcheck(gen: torch.Generator) -> None:
    x = torch.randn(2, 1, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _homographies(2, gen, 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torchstn.warp(x, p, Projective(), (4, 7), backend="fused"), (x, p))


def test_a_broken_build_warns_and_falls_back(tmp_path: Path) -> None:
    """A library file that does not load (truncated, another machine's) gives one warning, then the grid path."""
    code = (
        "import warnings, torch, torchstn; from torchstn import ext; "
        "lib = ext.build_dir() / 'torchstn_ext.so'; lib.parent.mkdir(parents=True); lib.write_bytes(b'not a library'); "
        "x = torch.rand(1, 1, 4, 4); p = torchstn.Affine().identity_params(1)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = torchstn.warp(x, p, torchstn.Affine()); torchstn.warp(x, p, torchstn.Affine())\n"
        "assert torch.allclose(out, x, atol=1e-6)\n"
        "msgs = [str(m.message) for m in w if 'grid path' in str(m.message)]\n"
        "assert len(msgs) == 1 and 'could not load' in msgs[0], msgs\n"
        "print('ok')"
    )
    assert _python_with_cache(code, tmp_path) == "ok"


def test_the_build_finds_ninja_beside_the_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ninja from PyPI lives in the environment's bin/, which need not be on PATH (make calls .venv/bin/python
    without activating the environment): the build puts it first. A failed compile raises with the compiler's
    output and leaves nothing behind."""
    seen: dict[str, str] = {}

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = kwargs["env"]
        assert isinstance(env, dict)
        seen["path"] = env["PATH"]
        return subprocess.CompletedProcess(cmd, 1, "", "error: the compiler said no")

    monkeypatch.setattr(ext.subprocess, "run", fake_run)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ext.ExtensionBuildError, match="the compiler said no"):
        ext._compile(tmp_path / "build", verbose=False)
    assert seen["path"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fill", [1e6, 1e8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_fill_through_the_kernel_is_exact(fill: float, dtype: torch.dtype, gen: torch.Generator) -> None:
    """The kernel builds padding='fill' as the grid path does (the image with zeros plus the fill times a sampled
    validity mask): output pixels that read only the image equal zero padding exactly, those reading only padding
    equal the fill, the rest agree with the grid path to rounding of |fill| (issue 17, defect 8)."""
    x = torch.rand(3, 2, 9, 11, generator=gen, dtype=dtype)
    p = (_theta(3, 0.15, gen) * 1.4).reshape(3, 6).to(dtype)  # zoomed out: a border of padding around the image
    zeros = torchstn.warp(x, p, Affine(), backend="fused")
    ones = torchstn.warp(torch.ones_like(x[:, :1]), p, Affine(), backend="fused", nonfinite="ignore")
    out = torchstn.warp(x, p, Affine(), padding="fill", fill=fill, backend="fused")
    inside = ((1 - ones).abs() <= 32 * torch.finfo(dtype).eps).expand_as(out)
    outside = (ones == 0).expand_as(out)
    assert inside.sum() > 50 and outside.sum() > 10
    assert torch.equal(out[inside], zeros[inside])
    assert (out[outside] == fill).all()
    grid_path = torchstn.warp(x, p, Affine(), padding="fill", fill=fill, backend="torch")
    torch.testing.assert_close(out, grid_path, rtol=0, atol=64 * torch.finfo(dtype).eps * fill)


# --- the separable filter of the anti-aliasing prefilter (csrc/separable_filter.cpp) ---------------------------


@pytest.mark.parametrize(("kx", "ky"), [(5, 3), (1, 7), (3, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_separable_filter_matches_tensor_ops(gen: torch.Generator, kx: int, ky: int, dtype: torch.dtype) -> None:
    """The compiled filter against the tensor-op path (the two run the same sums in other orders), forward and
    the three gradients; gradcheck in float64."""
    from torchstn import _antialias

    x = torch.randn(3, 2, 11, 9, generator=gen, dtype=dtype, requires_grad=True)
    wx = torch.rand(3, kx, generator=gen, dtype=dtype, requires_grad=True)
    wy = torch.rand(3, ky, generator=gen, dtype=dtype, requires_grad=True)
    ours = _antialias._SeparableFilter.apply(x, wx, wy)
    ref = _antialias._filter_axis(_antialias._filter_axis(x, wx, -1), wy, -2)
    tol = {"rtol": 0.0, "atol": 1e-12 if dtype == torch.float64 else 1e-5}
    torch.testing.assert_close(ours, ref, **tol)
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    for a, b in zip(torch.autograd.grad(ours, (x, wx, wy), g), torch.autograd.grad(ref, (x, wx, wy), g), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-10 if dtype == torch.float64 else 1e-4)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(_antialias._SeparableFilter.apply, (x, wx, wy))


def test_antialias_uses_the_compiled_filter_and_agrees_with_the_tensor_ops(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchstn import _antialias

    x = torch.rand(2, 3, 30, 30, generator=gen, dtype=torch.float64)
    p = Affine().identity_params(2, dtype=torch.float64) * torch.tensor([1.6, 0.2, 1, 0.1, 1.3, 1], dtype=torch.float64)
    calls: list[int] = []
    real = _antialias._SeparableFilter.apply
    monkeypatch.setattr(_antialias._SeparableFilter, "apply", lambda *a: calls.append(1) or real(*a))
    ours = torchstn.warp(x, p, Affine(), (12, 12), antialias=True, padding="border")
    assert calls
    monkeypatch.setattr(_antialias, "_compiled_filter_runs", lambda *a: False)
    ops = torchstn.warp(x, p, Affine(), (12, 12), antialias=True, padding="border", backend="torch")
    torch.testing.assert_close(ours, ops, rtol=0.0, atol=1e-12)


# --- the one-pass prefilter of axis-aligned warps (csrc/axis_resample.cpp) -------------------------------------

# Attention windows, one per image (a 31x37 input read to 13x9): near the identity (not at it: its sample points
# would sit on pixel centres, where bilinear has kinks and the two paths may take either side), a zoom in
# (upsamples: its plain sample), a window 2.7x the input, one that shrinks less along y than along x, one far
# outside the image and one overlapping the edges.
_WINDOWS = [
    [1.03, 0.011, -0.007],
    [0.2, 0.13, -0.21],
    [2.7, 0.31, -0.17],
    [1.13, -0.62, 0.37],
    [1.6, 2.9, -2.4],
    [0.93, 0.71, 0.83],
]


def _axis_params(t: Attention | Translation, dtype: torch.dtype) -> torch.Tensor:
    p = torch.tensor(_WINDOWS, dtype=dtype)
    return p if isinstance(t, Attention) else p[:, 1:] * 1.7


@pytest.mark.parametrize("t", [Attention(), Translation()], ids=repr)
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection", "fill"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_axis_aligned_prefilter_equals_the_full_resolution_filter(
    gen: torch.Generator,
    t: Attention | Translation,
    padding: str,
    align_corners: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``antialias=True`` on an axis-aligned family takes the one-pass kernel, which builds the kernels itself and
    filters only what it reads: its output and both gradients equal the full-resolution filter's (the path every
    other affine family takes) in float64, the images that do not shrink keep their plain sample bit for bit,
    and float32 agrees with float64."""
    from torchstn import _antialias

    x = torch.rand(6, 2, 31, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    p = _axis_params(t, torch.float64).requires_grad_()
    size = (13, 9)
    fill = 0.3 if padding == "fill" else None
    kw = {"antialias": True, "padding": padding, "align_corners": align_corners, "fill": fill}
    calls: list[int] = []
    real = _antialias._AxisWarp.apply
    monkeypatch.setattr(_antialias._AxisWarp, "apply", lambda *a: calls.append(1) or real(*a))
    ours = torchstn.warp(x, p, t, size, **kw)
    assert calls
    g = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, (x, p), g)
    monkeypatch.setattr(type(t), "axis_aligned", False)
    full = torchstn.warp(x, p, t, size, **kw)
    torch.testing.assert_close(ours, full, rtol=0.0, atol=1e-12)
    for a, b in zip(ours_grads, torch.autograd.grad(full, (x, p), g), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-10)
    monkeypatch.undo()
    plain = torchstn.warp(x, p, t, size, **(kw | {"antialias": False}))
    if isinstance(t, Attention):  # the identity window on a 31x37 input read to 13x9 shrinks; a zoom in does not
        assert torch.equal(ours[1], plain[1])
    else:  # a translation never shrinks a same-size output: every image is its plain sample
        same = torchstn.warp(x, p, t, **kw)
        assert torch.equal(same, torchstn.warp(x, p, t, **(kw | {"antialias": False})))
    single = torchstn.warp(x.detach().float(), p.detach().float(), t, size, **kw)
    torch.testing.assert_close(single, ours.detach().float(), rtol=0.0, atol=2e-5)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_axis_aligned_prefilter_gradcheck(gen: torch.Generator, padding: str, align_corners: bool) -> None:
    """The compiled backward against finite differences, the kernels' dependence on the scale included (windows
    drawn at random, away from the sample positions' integer crossings, where bilinear has kinks)."""
    x = torch.rand(3, 2, 11, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    p = torch.stack((0.6 + 2.0 * u[:, 0], 2.4 * u[:, 1] - 1.2, 2.4 * u[:, 2] - 1.2), -1).requires_grad_()

    def f(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return torchstn.warp(x, p, Attention(), (5, 4), antialias=True, padding=padding, align_corners=align_corners)

    assert torch.autograd.gradcheck(f, (x, p))


def test_axis_aligned_prefilter_with_heads_matches_one_head_at_a_time(gen: torch.Generator) -> None:
    from torchstn.modules import SpatialTransformer, conv_localisation

    t = Attention()
    loc = conv_localisation((2, 40, 40), t, downsample=1, num_heads=2)
    st = SpatialTransformer(loc, t, output_size=(12, 12), padding="border", antialias=True, combine="concat")
    with torch.no_grad():
        for w in loc.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=gen))
    x = torch.rand(3, 2, 40, 40, generator=gen)
    out, params = st(x, return_params=True)
    params = params.reshape(3, 2, -1)
    for k in range(2):
        expected = torchstn.warp(x, params[:, k], t, (12, 12), padding="border", antialias=True)
        torch.testing.assert_close(out[:, 2 * k : 2 * k + 2], expected, rtol=0.0, atol=1e-6)
