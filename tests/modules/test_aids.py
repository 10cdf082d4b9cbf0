"""Training aids: identity prior, localisation learning rates, tilings."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from torchstn.errors import DTypeError, OptionError
from torchstn.modules import (
    SpatialTransformer,
    identity_penalty,
    localisation_param_groups,
    mlp_localisation,
    tiling_params,
)
from torchstn.transforms import Affine, Attention


def test_identity_penalty_is_zero_at_identity_and_pulls_towards_it() -> None:
    t = Affine()
    p = t.identity_params(4).requires_grad_()
    assert identity_penalty(p, t) == 0
    q = (t.identity_params(4) + 0.3).requires_grad_()
    identity_penalty(q, t).backward()
    assert q.grad is not None and (q.grad > 0).all()  # gradient descent moves q back towards the identity
    heads = t.identity_params(6).view(2, 3, 6)
    assert identity_penalty(heads, t) == 0


def test_param_groups_give_localisation_networks_their_own_rate() -> None:
    st1 = SpatialTransformer(mlp_localisation((1, 6, 6), Affine()), Affine())
    st2 = SpatialTransformer(mlp_localisation((1, 6, 6), Attention()), Attention())
    model = nn.Sequential(st1, st2, nn.Flatten(), nn.Linear(36, 3))
    groups = localisation_param_groups(model, 0.1, 1e-4, weight_decay=5e-4)
    loc = {id(p) for p in st1.localisation.parameters()} | {id(p) for p in st2.localisation.parameters()}
    assert {id(p) for p in groups[1]["params"]} == loc
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert groups[1]["lr"] == 0.1 * 1e-4 and groups[0]["weight_decay"] == 5e-4
    torch.optim.SGD(groups, lr=0.1)  # accepted as is


def test_param_groups_default_to_the_trainers_rate() -> None:
    from torchstn.train import DEFAULTS

    st = SpatialTransformer(mlp_localisation((1, 6, 6), Affine()), Affine())
    model = nn.Sequential(st, nn.Flatten(), nn.Linear(36, 3))
    groups = localisation_param_groups(model, 0.05)
    assert DEFAULTS["train"]["loc_lr_scale"] == 1.0
    assert [g["lr"] for g in groups] == [0.05, 0.05 * DEFAULTS["train"]["loc_lr_scale"]]
    assert inspect.signature(localisation_param_groups).parameters["localisation_lr_scale"].default == 1.0
    with pytest.raises(OptionError, match="localisation_lr_scale"):
        localisation_param_groups(model, 0.05, 0.0)
    with pytest.raises(OptionError, match=r"^lr"):
        localisation_param_groups(model, -1.0)
    with pytest.raises(DTypeError, match=r"^model"):
        localisation_param_groups(st.parameters(), 0.05)  # type: ignore[arg-type]


def test_tiling_windows_cover_the_image() -> None:
    p = tiling_params(2, 3)
    assert p.shape == (6, 3)
    torch.testing.assert_close(p[:, 0], torch.full((6,), 1 / 3))
    torch.testing.assert_close(p[:3, 1], torch.tensor([-2 / 3, 0.0, 2 / 3]))
    torch.testing.assert_close(p[::3, 2], torch.tensor([-0.5, 0.5]))
