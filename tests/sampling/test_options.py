"""SamplingOptions: one validated, frozen object, built once (a module builds it in __init__)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from torchstn import Affine, SpatialTransformer
from torchstn.errors import DTypeError, OptionError, STNError
from torchstn.sampling import SamplingOptions

BAD: list[tuple[dict[str, Any], type[STNError], str]] = [
    ({"mode": "bogus"}, OptionError, "mode"),
    ({"mode": 1}, OptionError, "mode"),
    ({"padding": "wrap"}, OptionError, "padding"),
    ({"backend": "cuda"}, OptionError, "backend"),
    ({"nonfinite": "nan"}, OptionError, "nonfinite"),
    ({"padding": "fill"}, OptionError, "fill"),
    ({"fill": 0.5}, OptionError, "fill"),
    ({"padding": "fill", "fill": float("inf")}, OptionError, "fill"),
    ({"padding": "fill", "fill": "grey"}, DTypeError, "fill"),
    ({"align_corners": "False"}, DTypeError, "align_corners"),
    ({"align_corners": 1}, DTypeError, "align_corners"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_options_fail_when_built(kwargs: dict[str, Any], error: type[STNError], name: str) -> None:
    with pytest.raises(error, match=rf"^{name}: "):
        SamplingOptions(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_a_module_with_a_bad_option_fails_at_construction(
    kwargs: dict[str, Any], error: type[STNError], name: str
) -> None:
    with pytest.raises(error, match=rf"^{name}: "):
        SpatialTransformer(torch.nn.Identity(), Affine(), **kwargs)


def test_options_are_frozen_and_module_attributes_revalidate() -> None:
    st = SpatialTransformer(torch.nn.Identity(), Affine(), padding="fill", fill=0.5)
    assert st.options == st.options and st.mode == "bilinear" and st.fill == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.options.mode = "nearest"  # type: ignore[misc]
    st.mode = "nearest"
    assert st.options.mode == "nearest" and st.options.fill == 0.5
    with pytest.raises(OptionError, match=r"^mode: "):
        st.mode = "bogus"  # type: ignore[assignment]
    assert st.mode == "nearest"  # unchanged by the refused assignment


def test_kernel_names_the_mode_per_dimension() -> None:
    assert SamplingOptions(mode="trilinear").kernel(3) == "bilinear"
    assert SamplingOptions(mode="bicubic").kernel(2) == "bicubic"
    with pytest.raises(OptionError, match=r"^mode: 'bicubic' needs a 4D input"):
        SamplingOptions(mode="bicubic").kernel(3)
    with pytest.raises(OptionError, match=r"^mode: 'trilinear' needs a 5D input"):
        SamplingOptions(mode="trilinear").kernel(2)


# --- antialias is an option like the others: validated once, when the options (or a module) are built --------


def test_antialias_is_validated_with_the_options() -> None:
    assert SamplingOptions(antialias=True).antialias is True
    with pytest.raises(OptionError, match=r"antialias: needs mode='bilinear', got mode='bicubic'"):
        SamplingOptions(mode="bicubic", antialias=True)
    with pytest.raises(OptionError, match=r"backend: 'fused' cannot run antialias=True"):
        SamplingOptions(backend="fused", antialias=True)
    with pytest.raises(DTypeError, match="antialias: expected a bool"):
        SamplingOptions(antialias=1)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="antialias: needs a 2D transform, got a 3D one"):
        SamplingOptions(antialias=True).check_antialias(3)


def test_antialias_module_option_and_the_fused_kernel_steps_aside() -> None:
    from torchstn.modules import conv_localisation
    from torchstn.sampling._backend import SamplerCall
    from torchstn.sampling._fused import FusedCPUBackend
    from torchstn.transforms import Affine, Affine3D

    t = Affine()
    st = SpatialTransformer(conv_localisation((1, 28, 28), t), t, antialias=True)
    assert st.antialias and st.options.antialias and "antialias=True" in repr(st)
    st.antialias = False
    assert not st.options.antialias
    with pytest.raises(OptionError, match="antialias: needs a 2D transform"):
        SpatialTransformer(torch.nn.Identity(), Affine3D(), antialias=True)
    x = torch.rand(1, 1, 8, 8)
    call = SamplerCall(x, SamplingOptions(antialias=True), "bilinear", (4, 4), transform=t)
    call.matrix, call.grid_finite = t.identity_params(1).view(1, 2, 3), True
    reason = FusedCPUBackend().can_run(call)
    assert reason is not None and "antialias" in reason
