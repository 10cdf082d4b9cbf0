"""The backend registry: each backend says whether it can run a call and why not; auto takes the first that can."""

from __future__ import annotations

import pytest
import torch

import torchstn
from torchstn import Affine, ThinPlateSpline, ext
from torchstn.errors import OptionError
from torchstn.sampling import SamplingOptions, _backends
from torchstn.sampling._backend import SamplerCall
from torchstn.sampling._fused import FusedCPUBackend
from torchstn.sampling._reference import ReferenceBackend
from torchstn.sampling._torch import TorchBackend


def test_registry_order_and_names() -> None:
    names = [b.name for b in _backends.backends()]
    assert names == ["fused", "torch", "reference"]
    for name in names:
        assert _backends.get_backend(name).name == name
    assert not FusedCPUBackend.reads_grid and not FusedCPUBackend.traceable
    assert TorchBackend.reads_grid and ReferenceBackend.reads_grid and ReferenceBackend.traceable


def _call(transform: torchstn.Transform | None, **options: object) -> SamplerCall:
    x = torch.rand(2, 1, 6, 6)
    opts = SamplingOptions(**options)  # type: ignore[arg-type]
    if transform is None:
        return SamplerCall(x, opts, opts.kernel(2), (6, 6), grid=torch.zeros(2, 6, 6, 2))
    p = transform.identity_params(2)
    call = SamplerCall(x, opts, opts.kernel(2), (6, 6), transform=transform, params=p)
    call.matrix = transform.sampler_matrix(p, (6, 6))
    call.grid_finite = call.matrix is not None
    return call


def test_each_backend_says_why_it_cannot_run() -> None:
    fused = _backends.get_backend("fused")
    assert "ready-made grid" in str(fused.can_run(_call(None)))
    assert "2D matrix transforms" in str(fused.can_run(_call(ThinPlateSpline())))
    assert "bilinearly" in str(fused.can_run(_call(Affine(), mode="nearest")))
    assert "propagate" in str(fused.can_run(_call(Affine(), nonfinite="propagate")))
    unproven = _call(Affine())
    unproven.grid_finite = False
    if ext.available():
        assert fused.can_run(_call(Affine())) is None
        assert "too large to prove" in str(fused.can_run(unproven))
    for name in ("torch", "reference"):  # the grid samplers run everything
        assert _backends.get_backend(name).can_run(_call(None)) is None
        assert _backends.get_backend(name).can_run(_call(ThinPlateSpline())) is None


def test_auto_takes_the_first_backend_that_can() -> None:
    expected = "fused" if ext.available() else "torch"
    assert _backends.choose(_call(Affine())).name == expected
    assert _backends.choose(_call(Affine(), mode="bicubic")).name == "torch"
    assert _backends.choose(_call(None)).name == "torch"
    assert _backends.choose(_call(None, backend="reference")).name == "reference"


def test_sample_refuses_the_fused_backend() -> None:
    """``backend="fused"`` insists on the kernel (README, Sampling): given a grid, which has no matrix to sample
    from, sample() raises saying to use warp, whether or not the kernel is built (it used to read the grid with
    F.grid_sample quietly)."""
    x = torch.rand(2, 1, 8, 8)
    grid = torchstn.affine_grid(torch.eye(2, 3).expand(2, 2, 3), (8, 8))
    with pytest.raises(OptionError, match=r"^backend: 'fused' cannot run this call: .*matrix.*\(use warp\)"):
        torchstn.sample(x, grid, backend="fused")
