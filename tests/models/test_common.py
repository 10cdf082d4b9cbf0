"""The pieces every model family shares (torchstn.models.common)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchstn.models.common import SingleChannelConv2d


def test_single_channel_conv_equals_conv2d_values_and_gradients(gen: torch.Generator) -> None:
    fast = SingleChannelConv2d(5, 9).double()
    ref = nn.Conv2d(1, 5, 9, padding="same").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(3, 1, 11, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 5, 11, 13, generator=gen, dtype=torch.float64)
    grads = []
    for conv in (fast, ref):
        out = conv(x)
        grads.append((out, *torch.autograd.grad((out * w).sum(), (x, conv.weight, conv.bias))))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x: fast(x), (x[:1, :, :6, :7].detach().requires_grad_(),))


def test_generic_pieces_live_in_common_and_stay_importable() -> None:
    import torchstn.models as models
    from torchstn.models import common, mnist

    for name in ("STClassifier", "SingleChannelConv2d", "make_transform", "parameter_count"):
        assert getattr(models, name) is getattr(common, name) is getattr(mnist, name)
        assert getattr(common, name).__module__ == "torchstn.models.common"


def test_make_transform_names_the_choices() -> None:
    from torchstn.errors import OptionError
    from torchstn.models import make_transform

    with pytest.raises(OptionError, match="transform: expected one of aff, proj, tps, sim, att, got 'rot'"):
        make_transform("rot")
