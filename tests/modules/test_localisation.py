"""Localisation heads, bounds and the ready-made networks, including the paper's variants."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchstn import OptionError, ShapeError
from torchstn.modules import Bounds, LocalisationHead, LocalisationNet, conv_localisation, mlp_localisation
from torchstn.transforms import Affine, Attention, Projective, Similarity, ThinPlateSpline, Transform, Translation

FAMILIES: list[Transform] = [Affine(), Attention(), Similarity(), Translation(), Projective(), ThinPlateSpline()]


@pytest.mark.parametrize("t", FAMILIES, ids=repr)
def test_head_starts_at_the_identity_with_zero_weight(gen: torch.Generator, t: Transform) -> None:
    head = LocalisationHead(10, t)
    assert torch.count_nonzero(head.linear.weight) == 0
    torch.testing.assert_close(head(torch.randn(4, 10, generator=gen)), t.identity_params(4))


@pytest.mark.parametrize("t", FAMILIES, ids=repr)
def test_bounded_head_starts_at_the_identity(gen: torch.Generator, t: Transform) -> None:
    head = LocalisationHead(10, t, bounds=Bounds(translation=0.5, scale=(0.3, 1.5), point=1.5))
    torch.testing.assert_close(head(torch.randn(4, 10, generator=gen)), t.identity_params(4), atol=1e-6, rtol=0)


def test_bounds_keep_parameters_in_range(gen: torch.Generator) -> None:
    t = Similarity()
    head = LocalisationHead(4, t, bounds=Bounds(translation=0.4, scale=(0.5, 1.2)))
    with torch.no_grad():
        head.linear.weight.normal_(0, 100, generator=gen)  # wildly off
    p = head(torch.randn(256, 4, generator=gen))
    # Saturated in float32 the bounds are reached, never passed.
    assert p[:, 2:].abs().max() <= 0.4
    assert p[:, 1].min() >= math.log(0.5) - 1e-6 and p[:, 1].max() <= math.log(1.2) + 1e-6
    assert p[:, 0].abs().max() > 10  # the angle is not bounded


def test_bounds_validate_their_settings() -> None:
    with pytest.raises(OptionError, match="scale"):
        Bounds(scale=(1.0, 2.0))
    with pytest.raises(OptionError, match="translation"):
        Bounds(translation=0.0)
    with pytest.raises(OptionError, match="init"):
        LocalisationHead(3, Translation(), init=torch.tensor([0.9, 0.0]), bounds=Bounds(translation=0.5))


def test_heads_with_custom_initial_placements(gen: torch.Generator) -> None:
    init = torch.tensor([[0.5, -0.5, 0.0], [0.5, 0.5, 0.0]])
    head = LocalisationHead(6, Attention(), num_heads=2, init=init)
    out = head(torch.randn(3, 6, generator=gen))
    assert out.shape == (3, 2, 3)
    torch.testing.assert_close(out, init.expand(3, 2, 3))
    with pytest.raises(ShapeError, match="init"):
        LocalisationHead(6, Attention(), num_heads=3, init=init)


def test_paper_localisation_networks_have_the_papers_layers() -> None:
    # MNIST ST-CNN: on a 2x downsampled input, conv 20@5x5 -> maxpool 2 -> conv 20@5x5 -> FC 20 -> regression.
    net = conv_localisation((1, 42, 42), Affine(), downsample=2)
    kinds = [type(m).__name__ for m in net.backbone]
    assert kinds == ["AvgPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU"]
    convs = [m for m in net.backbone if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (20, (5, 5))]
    assert net(torch.rand(2, 1, 42, 42)).shape == (2, 6)
    # ST-FCN: three fully connected layers of 32 units.
    fcn = mlp_localisation((1, 28, 28), Projective())
    assert [m.out_features for m in fcn.backbone if isinstance(m, nn.Linear)] == [32, 32, 32]
    # Co-localisation: conv 8@9x9 stride 4 -> maxpool 2 -> FC 8 -> FC 8 -> FC 3.
    coloc = conv_localisation((1, 84, 84), Attention(), channels=(8,), kernel_size=9, stride=4, hidden=(8, 8))
    conv = next(m for m in coloc.backbone if isinstance(m, nn.Conv2d))
    assert (conv.out_channels, conv.kernel_size, conv.stride) == (8, (9, 9), (4, 4))
    assert coloc.head.linear.out_features == 3
    # SVHN: conv 32@5x5 -> maxpool -> conv 32@5x5 -> FC 32 -> FC 32.
    svhn = conv_localisation((3, 64, 64), Affine(), channels=(32, 32), hidden=(32, 32))
    assert svhn(torch.rand(1, 3, 64, 64)).shape == (1, 6)


def test_localisation_net_infers_feature_size() -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2))
    net = LocalisationNet(backbone, Affine(), input_shape=(3, 9, 9))
    assert net.head.linear.in_features == 16
    with pytest.raises(OptionError, match="feature_size"):
        LocalisationNet(backbone, Affine())


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ShapeError, match="input_shape"):
        conv_localisation((1, 8, 8), Affine(), downsample=2)


def test_channels_last_localisation_computes_the_same_values_and_gradients() -> None:
    torch.manual_seed(0)
    fast = conv_localisation((3, 20, 20), Affine(), channels=(8, 8), kernel_size=3, hidden=(8,))
    plain = conv_localisation((3, 20, 20), Affine(), channels=(8, 8), kernel_size=3, hidden=(8,), channels_last=False)
    nn.init.normal_(fast.head.linear.weight, std=0.1)  # a non-zero head, so the gradient reaches the backbone
    plain.load_state_dict(fast.state_dict())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = torch.rand(4, 3, 20, 20)
    out_fast, out_plain = fast(x), plain(x)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-6)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
