"""A small typed client of torchstn, checked by ``mypy --strict`` (``tests/typing/test_typing.py``).

``assert_type`` fails the check where a call's type differs from the one written; a ``type: ignore`` on a line
that must be an error fails it (``warn_unused_ignores``, part of strict) if that line type-checks after all.
The functions also run, as a test of the calls themselves.
"""

from __future__ import annotations

from typing import assert_type

import torch
from torch import Tensor

import torchstn
from torchstn.modules import (
    ParallelSpatialTransformer,
    SerialSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
)
from torchstn.transforms import Affine


def spatial_transformer_calls() -> Tensor:
    st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
    x = torch.rand(2, 1, 28, 28)
    assert_type(st(x), Tensor)
    assert_type(st(x, return_params=False), Tensor)
    assert_type(st(x, return_params=True), tuple[Tensor, Tensor])
    assert_type(st(x, None, True), tuple[Tensor, Tensor])
    assert_type(st(x, x, return_params=True), tuple[Tensor, Tensor])
    assert_type(st.forward(x), Tensor)
    assert_type(st.forward(x, return_params=True), tuple[Tensor, Tensor])
    flag: bool = bool(torch.rand(()) > 2)
    assert_type(st(x, return_params=flag), Tensor | tuple[Tensor, Tensor])
    out, theta = st(x, return_params=True)  # unpacks: a pair, not Tensor | tuple
    wrong: Tensor = st(x, return_params=True)  # type: ignore[assignment]
    assert isinstance(wrong, tuple)
    return out + theta.sum()


def container_calls() -> Tensor:
    x = torch.rand(2, 1, 28, 28)
    sts = [SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine()) for _ in range(2)]
    par = ParallelSpatialTransformer(sts)
    assert_type(par(x), Tensor)
    assert_type(par(x, return_params=True), tuple[Tensor, list[Tensor]])
    chain = SerialSpatialTransformer(sts)
    assert_type(chain(x), Tensor)
    assert_type(chain(x, return_params=True), tuple[Tensor, list[Tensor], Tensor | None])
    out, params, total = chain(x, return_params=True)
    assert total is not None and len(params) == 2
    return out


def warp_calls() -> Tensor:
    x = torch.rand(2, 1, 8, 8)
    theta = torch.eye(2, 3).expand(2, 2, 3)
    assert_type(torchstn.warp(x, theta), Tensor)  # transform=None: read from the matrix
    return torchstn.warp(x, Affine().identity_params(2), Affine())
