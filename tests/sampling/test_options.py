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
