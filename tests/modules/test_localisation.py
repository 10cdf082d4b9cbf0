"""Localisation heads, bounds and the ready-made networks, including the paper's variants."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from torchstn import DTypeError, OptionError, ShapeError
from torchstn.modules import (
    Bounds,
    LocalisationHead,
    LocalisationNet,
    SpatialTransformer,
    conv_localisation,
    mlp_localisation,
)
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
    # Given neither feature_size nor input_shape, the head is lazy: the first forward infers its input size.
    lazy = LocalisationNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2)), Affine())
    assert isinstance(lazy.head.linear, nn.LazyLinear)
    torch.testing.assert_close(lazy(torch.rand(5, 3, 9, 9)), Affine().identity_params(5), rtol=0, atol=0)
    assert type(lazy.head.linear) is nn.Linear and lazy.head.linear.in_features == 16


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


# --- bounded control points on the image border ------------------------------------------------------------------

TPS_LAYOUTS = [ThinPlateSpline((4, 4)), ThinPlateSpline((2, 10)), ThinPlateSpline.fiducials(k=20, margin=0.05)]


@pytest.mark.parametrize("t", TPS_LAYOUTS, ids=repr)
def test_bounded_tps_transformer_starts_at_exactly_the_identity(gen: torch.Generator, t: ThinPlateSpline) -> None:
    bounds = Bounds(point=1.0)  # keep every control point inside the image, border included
    loc = conv_localisation((1, 16, 40), t, channels=(4,), kernel_size=3, hidden=(8,), bounds=bounds)
    st = SpatialTransformer(loc, t)
    x = torch.rand(3, 1, 16, 40, generator=gen)
    out, params = st(x, return_params=True)
    assert torch.equal(params, t.identity_params(3))  # bit for bit, edge points included
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_reflected_points_stay_in_the_closed_box_and_keep_their_gradient(gen: torch.Generator) -> None:
    t = ThinPlateSpline((4, 4))
    head = LocalisationHead(4, t, bounds=Bounds(point=1.0))
    # Every raw value maps into [-1, 1], and every value there is reached (the edges too).
    raw = torch.linspace(-7.0, 7.0, 561, dtype=torch.float64)
    folded = Bounds(point=1.0).apply(raw[:, None], ("point",))[:, 0]
    assert folded.abs().max() == 1.0 and folded.min() == -1.0 and folded.max() == 1.0
    inside = raw.abs() <= 1.0
    assert torch.equal(folded[inside], raw[inside])  # the identity map inside the box
    with torch.no_grad():
        head.linear.weight.normal_(0, 100, generator=gen)  # wildly off
    p = head(torch.randn(256, 4, generator=gen))
    assert p.abs().max() <= 1.0 and p.abs().max() > 0.99
    # A point starting on the border can move: the bias of its coordinate gets the loss's full gradient.
    fresh = LocalisationHead(4, t, bounds=Bounds(point=1.0))
    corner = fresh(torch.randn(2, 4, generator=gen))[:, 0]  # x of the top-left control point, at -1
    assert torch.equal(corner, torch.full((2,), -1.0))
    corner.sum().backward()
    assert fresh.linear.bias.grad is not None and fresh.linear.bias.grad[0] == 2.0


def test_tanh_point_mode_keeps_the_open_map() -> None:
    raw = torch.tensor([[-3.0, -0.2, 0.0, 0.7, 40.0]])
    roles = ("point",) * 5
    torch.testing.assert_close(
        Bounds(point=1.5, point_mode="tanh").apply(raw, roles), 1.5 * torch.tanh(raw), rtol=0, atol=0
    )
    fid = ThinPlateSpline.fiducials(k=8, margin=0.05)  # inset: strictly inside (-1, 1)
    head = LocalisationHead(3, fid, bounds=Bounds(point=1.0, point_mode="tanh"))
    torch.testing.assert_close(head(torch.rand(2, 3)), fid.identity_params(2), rtol=0, atol=1e-6)
    with pytest.raises(OptionError, match="point_mode='reflect'"):  # the grid's border points cannot start there
        LocalisationHead(3, ThinPlateSpline((4, 4)), bounds=Bounds(point=1.0, point_mode="tanh"))
    with pytest.raises(OptionError, match=r"inside or on the bounds \[-0.5, 0.5\]"):
        LocalisationHead(3, ThinPlateSpline((4, 4)), bounds=Bounds(point=0.5))
    with pytest.raises(OptionError, match="point_mode"):
        Bounds(point=1.0, point_mode="clamp")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="point"):
        Bounds(point=float("inf"))


# --- the PyTorch STN tutorial's localisation network, and lazy sizes ---------------------------------------------


def _tutorial_localisation() -> nn.Sequential:
    """The localisation network of the PyTorch spatial transformer tutorial (28x28 MNIST), written as it is."""
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=7),
        nn.MaxPool2d(2, stride=2),
        nn.ReLU(True),
        nn.Conv2d(8, 10, kernel_size=5),
        nn.MaxPool2d(2, stride=2),
        nn.ReLU(True),
        nn.Flatten(),
        nn.Linear(10 * 3 * 3, 32),
        nn.ReLU(True),
        nn.Linear(32, 3 * 2),
    )


TUTORIAL = {"channels": (8, 10), "kernel_size": (7, 5), "pool": (2, 2), "hidden": (32,)}


def test_conv_localisation_expresses_the_pytorch_tutorials_network(gen: torch.Generator) -> None:
    ours = conv_localisation((1, 28, 28), Affine(), **TUTORIAL)  # type: ignore[arg-type]
    theirs = _tutorial_localisation()
    shapes = [tuple(p.shape) for p in ours.parameters()]
    assert shapes == [tuple(p.shape) for p in theirs.parameters()]
    assert shapes == [(8, 1, 7, 7), (8,), (10, 8, 5, 5), (10,), (32, 90), (32,), (6, 32), (6,)]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 5520
    # The same function: with the tutorial's weights (and a non-zero head), the outputs agree.
    with torch.no_grad():
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            b.normal_(0, 0.2, generator=gen)
            a.copy_(b)
    x = torch.rand(4, 1, 28, 28, generator=gen)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_lazy_conv_localisation_infers_its_input_on_the_first_forward(
    gen: torch.Generator, channels_last: bool
) -> None:
    eager = conv_localisation((1, 28, 28), Affine(), **TUTORIAL, channels_last=channels_last)  # type: ignore[arg-type]
    lazy = conv_localisation(transform=Affine(), **TUTORIAL, channels_last=channels_last)  # type: ignore[arg-type]
    opt = torch.optim.SGD(lazy.parameters(), lr=0.1)  # built before the parameters exist
    x = torch.rand(5, 1, 28, 28, generator=gen)
    out = lazy(x)
    torch.testing.assert_close(out, Affine().identity_params(5), rtol=0, atol=0)  # the head starts at the identity
    assert [tuple(p.shape) for p in lazy.parameters()] == [tuple(p.shape) for p in eager.parameters()]
    assert lazy.state_dict().keys() == eager.state_dict().keys()
    assert [type(m) for m in lazy.modules()] == [type(m) for m in eager.modules()]
    convs = [m for m in lazy.modules() if isinstance(m, nn.Conv2d)]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert all(m.weight.is_contiguous(memory_format=fmt) for m in convs)
    assert convs[1].weight.is_contiguous(memory_format=torch.channels_last) == channels_last  # 8 channels in
    before = [p.detach().clone() for p in lazy.parameters()]
    (lazy(x) - torch.tensor([0.0, 0.1, 0.2, 0.0, 1.0, 0.0])).square().sum().backward()
    opt.step()
    assert not torch.equal(before[-1], lazy.head.linear.bias)  # the optimizer holds the materialised parameters
    lazy.load_state_dict(eager.state_dict())
    torch.testing.assert_close(lazy(x), eager(x))


def test_lazy_networks_on_other_inputs() -> None:
    mlp = mlp_localisation(transform=Projective(), hidden=(16,))
    assert mlp(torch.rand(2, 3, 7, 9)).shape == (2, 8) and mlp.backbone[1].in_features == 3 * 7 * 9
    loaded = conv_localisation(None, Affine(), channels=(4,), kernel_size=3, hidden=(8,))
    loaded.load_state_dict(
        conv_localisation((2, 12, 12), Affine(), channels=(4,), kernel_size=3, hidden=(8,)).state_dict()
    )
    assert loaded(torch.rand(1, 2, 12, 12)).shape == (1, 6)
    small = conv_localisation(transform=Affine(), channels=(4, 4), kernel_size=5)
    with pytest.raises(ShapeError, match=r"^x: .*\(2, 1, 8, 8\)"):
        small(torch.rand(2, 1, 8, 8))
    late = mlp_localisation(transform=Affine(), hidden=(4,))
    with torch.inference_mode():  # materialised in inference mode, the parameters still train later
        late(torch.rand(2, 1, 5, 5))
    late(torch.rand(2, 1, 5, 5)).sum().backward()
    assert all(p.grad is not None for p in late.head.parameters())


BUILDER_CASES: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "conv-no-transform": (lambda: conv_localisation((1, 28, 28)), OptionError, "transform"),
    "conv-transform-type": (lambda: conv_localisation((1, 28, 28), "affine"), DTypeError, "transform"),
    "conv-shape-2d": (lambda: conv_localisation((28, 28), Affine()), ShapeError, "input_shape"),
    "conv-shape-zero": (lambda: conv_localisation((1, 0, 28), Affine()), OptionError, "input_shape"),
    "conv-shape-float": (lambda: conv_localisation((1, 28.0, 28), Affine()), DTypeError, "input_shape"),
    "conv-no-channels": (lambda: conv_localisation((1, 28, 28), Affine(), channels=()), ShapeError, "channels"),
    "conv-channels-zero": (lambda: conv_localisation((1, 28, 28), Affine(), channels=(0,)), OptionError, "channels"),
    "conv-kernels-length": (
        lambda: conv_localisation((1, 28, 28), Affine(), kernel_size=(5,)),
        ShapeError,
        "kernel_size",
    ),
    "conv-kernel-zero": (lambda: conv_localisation((1, 28, 28), Affine(), kernel_size=0), OptionError, "kernel_size"),
    "conv-kernel-float": (lambda: conv_localisation((1, 28, 28), Affine(), kernel_size=2.5), DTypeError, "kernel_size"),
    "conv-pools-length": (lambda: conv_localisation((1, 28, 28), Affine(), pool=(2, 2, 2)), ShapeError, "pool"),
    "conv-pool-zero": (lambda: conv_localisation((1, 28, 28), Affine(), pool=(2, 0)), OptionError, "pool"),
    "conv-stride-zero": (lambda: conv_localisation((1, 28, 28), Affine(), stride=0), OptionError, "stride"),
    "conv-hidden-zero": (lambda: conv_localisation((1, 28, 28), Affine(), hidden=(0,)), OptionError, "hidden"),
    "conv-hidden-int": (lambda: conv_localisation((1, 28, 28), Affine(), hidden=20), DTypeError, "hidden"),
    "conv-downsample-zero": (lambda: conv_localisation((1, 28, 28), Affine(), downsample=0), OptionError, "downsample"),
    "conv-channels-last": (
        lambda: conv_localisation((1, 28, 28), Affine(), channels_last="yes"),
        DTypeError,
        "channels_last",
    ),
    "conv-heads-zero": (lambda: conv_localisation((1, 28, 28), Affine(), num_heads=0), OptionError, "num_heads"),
    "conv-too-small": (lambda: conv_localisation((1, 8, 8), Affine()), ShapeError, "input_shape"),
    "mlp-no-transform": (lambda: mlp_localisation((1, 28, 28)), OptionError, "transform"),
    "mlp-shape-zero": (lambda: mlp_localisation((1, 0), Affine()), OptionError, "input_shape"),
    "mlp-hidden-str": (lambda: mlp_localisation((1, 28, 28), Affine(), hidden="32"), DTypeError, "hidden"),
    "net-backbone": (lambda: LocalisationNet("conv", Affine(), 8), DTypeError, "backbone"),
    "net-shape-fails": (
        lambda: LocalisationNet(nn.Conv2d(3, 4, 5), Affine(), input_shape=(3, 2, 2)),
        ShapeError,
        "input_shape",
    ),
    "head-features": (lambda: LocalisationHead(0, Affine()), OptionError, "in_features"),
    "head-bounds": (lambda: LocalisationHead(4, Affine(), bounds=0.5), DTypeError, "bounds"),
}


@pytest.mark.parametrize("case", BUILDER_CASES.values(), ids=BUILDER_CASES.keys())
def test_builders_name_the_bad_argument(case: tuple[Callable[[], Any], type[Exception], str]) -> None:
    make, error, name = case
    with pytest.raises(error, match=f"^{name}"):
        make()


@pytest.mark.parametrize("mode", ["reflect", "tanh"])
def test_gradcheck_bounded_points(gen: torch.Generator, mode: str) -> None:
    bounds = Bounds(point=0.8, translation=0.5, point_mode=mode)  # type: ignore[arg-type]
    roles = ("point", "translation", "point", "linear")
    raw = torch.tensor([[0.3, -0.4, 1.1, 2.0], [-2.9, 0.2, 0.5, -1.0]], dtype=torch.float64)  # off the folds
    raw = (raw + 0.01 * torch.randn(raw.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda r: bounds.apply(r, roles), (raw,))
