"""The SVHN and CUB models: shapes, gradients, identity/tiling at initialisation, metrics and parameter groups."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchstn.models.cub
import torchstn.models.svhn  # noqa: F401  (registers the models)
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.models._registry import create_model, list_models
from torchstn.models.cub import CUBNet, cub_param_groups, tiling_grid
from torchstn.models.svhn import SVHNNet, sequence_error, sequence_loss, svhn_cnn, svhn_param_groups
from torchstn.modules import Bounds, SpatialTransformer, tiling_params

SVHN_MODELS = ["svhn_cnn", "svhn_st_cnn_single", "svhn_st_cnn_multi"]
CUB_MODELS = ["cub_cnn", "cub_st_cnn", "cub_2xst_cnn", "cub_4xst_cnn"]
SVHN_KW: dict[str, object] = {"width": 0.125}
CUB_KW: dict[str, object] = {"input_size": 96, "crop_size": 48}


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def make_cub(name: str, **kw: object) -> nn.Module:
    extra = {"crop_size": 48} if name == "cub_cnn" else CUB_KW
    return create_model(name, backbone=tiny_backbone(), feature_dim=8, **{**extra, **kw})


def labels_for(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Random digit sequences of length 1-5, padded with 10 ("no digit")."""
    lengths = torch.randint(1, 6, (batch, 1), generator=gen)
    digits = torch.randint(0, 10, (batch, 5), generator=gen)
    return torch.where(torch.arange(5) < lengths, digits, torch.full_like(digits, 10))


def every_parameter_learns(
    model: nn.Module, step: Callable[[], torch.Tensor], groups: list[dict[str, Any]], steps: int = 2
) -> None:
    """Take SGD steps; every parameter must get a non-zero gradient at some step.

    Regression layers start with zero weights, so localisation backbones first receive gradients at step 2. The
    paper's smaller localisation learning rates keep the transformers on the image: on noise inputs the loss is
    very sensitive to theta, and a full-rate step can move the window off the image (zero gradients there).
    """
    opt = torch.optim.SGD(groups, lr=0.01)
    seen = {name: False for name, _ in model.named_parameters()}
    for _ in range(steps):
        opt.zero_grad()
        loss = step()
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in model.named_parameters():
            seen[name] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    assert [n for n, ok in seen.items() if not ok] == []


# --- registry -----------------------------------------------------------------------------------------------------


def test_models_are_registered() -> None:
    assert set(SVHN_MODELS) <= set(list_models("svhn"))
    assert set(CUB_MODELS) <= set(list_models("cub"))


# --- SVHN ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SVHN_MODELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_svhn_forward_shape(name: str, batch: int, gen: torch.Generator) -> None:
    model = create_model(name, **SVHN_KW)
    assert isinstance(model, SVHNNet)
    out = model(torch.rand(batch, 3, 64, 64, generator=gen))
    assert out.shape == (batch, 5, 11)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("size", "digits"), [(128, 5), (32, 3)])
def test_svhn_other_sizes(size: int, digits: int, gen: torch.Generator) -> None:
    model = svhn_cnn(input_size=size, num_digits=digits, width=0.0625, batch_norm=True)
    assert model(torch.rand(2, 3, size, size, generator=gen)).shape == (2, digits, 11)


@pytest.mark.parametrize("name", SVHN_MODELS)
def test_svhn_every_parameter_gets_a_gradient(name: str, gen: torch.Generator) -> None:
    model = create_model(name, **SVHN_KW)
    x, y = torch.rand(4, 3, 64, 64, generator=gen), labels_for(4, gen)
    every_parameter_learns(model, lambda: sequence_loss(model(x), y), svhn_param_groups(model, 0.01))


def test_svhn_single_transformer_is_the_identity_at_init(gen: torch.Generator) -> None:
    model = create_model("svhn_st_cnn_single", **SVHN_KW)
    assert isinstance(model, SVHNNet)
    st = model.transformers[0]
    assert isinstance(st, SpatialTransformer)
    assert all(isinstance(t, nn.Identity) for t in model.transformers[1:])
    x = torch.rand(3, 3, 64, 64, generator=gen)
    out, theta = st(x, return_params=True)
    torch.testing.assert_close(theta, st.transform.identity_params(3))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["svhn_st_cnn_single", "svhn_st_cnn_multi"])
def test_svhn_st_model_equals_the_baseline_at_init(name: str, gen: torch.Generator) -> None:
    """With identity transformers an ST model computes the baseline's function (same classifier weights)."""
    base, st_model = svhn_cnn(**SVHN_KW), create_model(name, **SVHN_KW)  # type: ignore[arg-type]
    missing, unexpected = st_model.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("transformers.") for k in missing)
    n_st = sum(isinstance(t, SpatialTransformer) for t in st_model.transformers)  # type: ignore[union-attr]
    assert n_st == (1 if name.endswith("single") else 4)
    base.eval()
    st_model.eval()
    x = torch.rand(2, 3, 64, 64, generator=gen)
    torch.testing.assert_close(st_model(x), base(x), rtol=1e-4, atol=1e-4)


def test_svhn_architecture_at_full_width() -> None:
    """Goodfellow et al.'s widths: 8 conv 5x5 (48-64-128-160-192x4), 3072-3072 FC on 192x4x4, 5 x 11 classes."""
    with torch.device("meta"):
        model = svhn_cnn()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 64, 128, 160, 192, 192, 192, 192]
    assert all(c.kernel_size == (5, 5) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3072, 3072), (3072, 3072), (3072, 55)]
    chans = [3, 48, 64, 128, 160, 192, 192, 192, 192]
    expected = sum(a * b * 25 + b for a, b in itertools.pairwise(chans)) + 2 * (3072 * 3072 + 3072)
    expected += 3072 * 55 + 55
    assert sum(p.numel() for p in model.parameters()) == expected
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 9  # outputs of conv 2-8 and of both FC layers


def test_svhn_rejects_bad_options() -> None:
    with pytest.raises(ShapeError, match="input_size"):
        svhn_cnn(input_size=8)
    with pytest.raises(OptionError, match="dropout"):
        svhn_cnn(dropout=1.0)
    with pytest.raises(OptionError, match="width"):
        svhn_cnn(width=0.0)


# --- sequence loss and error -------------------------------------------------------------------------------------

LABELS = torch.tensor([[1, 2, 10, 10, 10], [3, 10, 10, 10, 10], [1, 2, 3, 4, 5]])


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, 11).float() * 10.0


def test_sequence_error_hand_cases() -> None:
    logits = one_hot(LABELS)
    assert sequence_error(logits, LABELS).item() == 0.0
    wrong_pad = LABELS.clone()
    wrong_pad[1, 4] = 7  # a digit predicted where the padding is: "3...7" for "3"
    assert sequence_error(one_hot(wrong_pad), LABELS).item() == pytest.approx(1 / 3)
    short = LABELS.clone()
    short[0, 1] = 10  # "1" for "12"
    short[2, 0] = 0  # first digit wrong
    assert sequence_error(one_hot(short), LABELS).item() == pytest.approx(2 / 3)
    assert sequence_error(one_hot((LABELS + 1) % 11), LABELS).item() == 1.0
    # Several wrong positions in one sequence count once.
    many = LABELS.clone()
    many[2] = torch.tensor([0, 0, 0, 0, 0])
    assert sequence_error(one_hot(many), LABELS).item() == pytest.approx(1 / 3)


def test_sequence_loss_hand_cases() -> None:
    uniform = torch.zeros(3, 5, 11)
    torch.testing.assert_close(sequence_loss(uniform, LABELS), torch.tensor(5 * math.log(11)))
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(1))
    per_position = sum(F.cross_entropy(logits[:, d], LABELS[:, d]) for d in range(5))
    torch.testing.assert_close(sequence_loss(logits, LABELS), per_position)
    assert sequence_loss(one_hot(LABELS) * 10, LABELS).item() < 1e-6


def test_sequence_metrics_check_their_inputs() -> None:
    with pytest.raises(ShapeError, match="labels"):
        sequence_error(torch.zeros(3, 5, 11), LABELS[:, :4])
    with pytest.raises(ShapeError, match="logits"):
        sequence_loss(torch.zeros(3, 55), LABELS)
    with pytest.raises(DTypeError, match="labels"):
        sequence_loss(torch.zeros(3, 5, 11), LABELS.float())


# --- CUB ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CUB_MODELS)
@pytest.mark.parametrize("share", [False, True])
def test_cub_forward_shape(name: str, share: bool, gen: torch.Generator) -> None:
    kw = {} if name == "cub_cnn" else {"share_backbone": share}
    model = make_cub(name, num_classes=7, **kw)
    assert isinstance(model, CUBNet)
    out = model(torch.rand(2, 3, 96, 96, generator=gen))
    assert out.shape == (2, 7)
    n = {"cub_cnn": 1, "cub_st_cnn": 2, "cub_2xst_cnn": 2, "cub_4xst_cnn": 4}[name]
    assert model.crops(torch.rand(2, 3, 96, 96, generator=gen)).shape == (2, n, 3, 48, 48)
    assert model.classifier.in_features == n * 8
    assert len(model.parts) == (1 if share or name == "cub_cnn" else n)


@pytest.mark.parametrize("name", CUB_MODELS)
def test_cub_every_parameter_gets_a_gradient(name: str, gen: torch.Generator) -> None:
    model = make_cub(name, num_classes=5)
    x, y = torch.rand(4, 3, 96, 96, generator=gen), torch.randint(0, 5, (4,), generator=gen)
    every_parameter_learns(model, lambda: F.cross_entropy(model(x), y), cub_param_groups(model, 0.01))


@pytest.mark.parametrize(("n", "windows"), [(2, [(24, 0), (24, 48)]), (4, [(0, 0), (0, 48), (48, 0), (48, 48)])])
def test_cub_transformers_tile_the_image_at_init(n: int, windows: list[tuple[int, int]], gen: torch.Generator) -> None:
    """A 96 px input, 48 px crops, no overlap: each crop is exactly a pixel window (top, left) of the input."""
    model = make_cub("cub_st_cnn", num_transformers=n)
    assert isinstance(model, CUBNet)
    x = torch.rand(2, 3, 96, 96, generator=gen)
    crops = model.crops(x)
    for i, (top, left) in enumerate(windows):
        torch.testing.assert_close(crops[:, i], x[..., top : top + 48, left : left + 48], rtol=0, atol=1e-5)


@pytest.mark.parametrize("bounds", [None, Bounds(translation=0.9, scale=(0.2, 1.5))])
def test_cub_initial_params_are_the_tiling(bounds: Bounds | None, gen: torch.Generator) -> None:
    model = make_cub("cub_4xst_cnn", overlap=0.25, bounds=bounds)
    assert isinstance(model, CUBNet) and model.transformer is not None
    params = model.transformer.localisation(torch.rand(3, 3, 96, 96, generator=gen))
    torch.testing.assert_close(params, tiling_params(2, 2, 0.25).expand(3, 4, 3), rtol=0, atol=1e-6)


def test_cub_parts_are_independent_copies() -> None:
    backbone = tiny_backbone()
    model = create_model("cub_4xst_cnn", backbone=backbone, feature_dim=8, **CUB_KW)
    assert isinstance(model, CUBNet)
    assert model.parts[0] is backbone
    weights = [part[0].weight for part in model.parts]  # type: ignore[index]
    assert len({id(w) for w in weights}) == 4
    for w in weights[1:]:
        torch.testing.assert_close(w, weights[0])


def test_cub_backbone_maps_are_pooled(gen: torch.Generator) -> None:
    maps = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4), nn.ReLU())  # (B, 6, h, w)
    model = create_model("cub_2xst_cnn", backbone=maps, feature_dim=6, num_classes=3, **CUB_KW)
    assert model(torch.rand(2, 3, 96, 96, generator=gen)).shape == (2, 3)
    with pytest.raises(ShapeError, match="feature_dim=5"):
        create_model("cub_2xst_cnn", backbone=maps, feature_dim=5, **CUB_KW)(torch.rand(1, 3, 96, 96))


class TwoOutputs(nn.Module):
    """Like an Inception-v3 in training mode: returns (logits, aux_logits)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = x.mean(dim=(2, 3))
        return f, f


def test_cub_backbone_must_return_a_tensor() -> None:
    with pytest.raises(ShapeError, match="aux_logits=False"):
        create_model("cub_cnn", backbone=TwoOutputs(), feature_dim=3, crop_size=48)(torch.rand(1, 3, 48, 48))


def test_cub_custom_localisation(gen: torch.Generator) -> None:
    from torchstn.modules import conv_localisation
    from torchstn.transforms import Attention

    loc = conv_localisation((3, 96, 96), Attention(), channels=(4,), hidden=(8,), downsample=4, num_heads=3)
    model = make_cub("cub_st_cnn", num_transformers=3, localisation=loc)
    assert isinstance(model, CUBNet) and model.transformer is not None
    assert model.transformer.localisation is loc
    x = torch.rand(2, 3, 96, 96, generator=gen)
    crops = model.crops(x)
    for i in range(3):  # identity-initialised heads: every crop is the whole image at 48 px
        torch.testing.assert_close(crops[:, i], model.transformer.sample_with(x, loc(x)[:, i]))
    assert model(x).shape == (2, 200)


def test_cub_baseline_resizes_the_input(gen: torch.Generator) -> None:
    backbone = tiny_backbone()
    model = create_model("cub_cnn", backbone=backbone, feature_dim=8, crop_size=48)
    x = torch.rand(2, 3, 96, 96, generator=gen)
    small = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(model(x), model.classifier(backbone(small)))  # type: ignore[operator]
    torch.testing.assert_close(model(small), model(x))


def test_tiling_grid() -> None:
    assert [tiling_grid(n) for n in (1, 2, 4, 6, 9)] == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]
    with pytest.raises(OptionError, match="num_transformers"):
        tiling_grid(0)


# --- parameter groups ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cub_2xst_cnn", "cub_4xst_cnn"])
def test_cub_param_groups(name: str) -> None:
    model = make_cub(name)
    assert isinstance(model, CUBNet) and model.transformer is not None
    rest, loc = cub_param_groups(model, 0.1, weight_decay=1e-4)
    assert rest["lr"] == 0.1
    assert loc["lr"] == pytest.approx(1e-5)
    assert rest["weight_decay"] == loc["weight_decay"] == 1e-4
    assert {id(p) for p in loc["params"]} == {id(p) for p in model.transformer.localisation.parameters()}
    assert len(rest["params"]) + len(loc["params"]) == len(list(model.parameters()))


def test_cub_baseline_has_an_empty_localisation_group() -> None:
    rest, loc = cub_param_groups(make_cub("cub_cnn"), 0.1)
    assert loc["params"] == [] and len(rest["params"]) == 4


@pytest.mark.parametrize(("name", "n_st"), [("svhn_cnn", 0), ("svhn_st_cnn_single", 1), ("svhn_st_cnn_multi", 4)])
def test_svhn_param_groups(name: str, n_st: int) -> None:
    model = create_model(name, **SVHN_KW)
    rest, loc = svhn_param_groups(model, 0.01)
    assert rest["lr"] == 0.01
    assert loc["lr"] == pytest.approx(0.001)
    sts = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
    assert len(sts) == n_st
    assert {id(p) for p in loc["params"]} == {id(p) for st in sts for p in st.localisation.parameters()}
    torch.optim.SGD([rest, loc], lr=0.01)  # the groups are valid optimizer input


def test_cub_crops_are_antialiased_by_default_and_equal_at_the_initial_tiling() -> None:
    import torch
    from torch import nn

    from torchstn.models.cub import cub_st_cnn

    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.manual_seed(0)
    on = cub_st_cnn(backbone, 4, input_size=96, crop_size=48)
    off = cub_st_cnn(backbone, 4, input_size=96, crop_size=48, antialias=False)
    off.load_state_dict(on.state_dict())
    assert on.transformer.options.antialias and not off.transformer.options.antialias
    x = torch.rand(2, 3, 96, 96)
    assert torch.equal(on.crops(x), off.crops(x))  # the tiles are read 1:1: nothing shrinks
