"""``torchstn.models.count_macs`` and ``benchmarks/count_macs.py``: the multiply-add counts the transformer's
overhead is read against (and ``scripts/reproduce.py`` scales its estimates by)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from torchstn import Affine, SpatialTransformer
from torchstn.models import count_macs, create_model
from torchstn.models.mnist import SingleChannelConv2d

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_torchstn_count_macs", ROOT / "benchmarks" / "count_macs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load()


class _Tiny(nn.Module):
    """An ST on the input (its localisation: one linear layer) in front of conv 3x3 -> linear, all sizes known."""

    def __init__(self) -> None:
        super().__init__()
        loc = nn.Sequential(nn.Flatten(), nn.Linear(36, 6))
        nn.init.zeros_(loc[1].weight)
        with torch.no_grad():
            loc[1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.transformer = SpatialTransformer(loc, Affine(), (6, 6))
        self.conv = SingleChannelConv2d(4, 3)  # same padding: 4 x 6 x 6 outputs of 9 multiply-adds
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.transformer(x)).flatten(1))  # type: ignore[no-any-return]


def test_layers_are_counted_by_hand_formula_and_input_gradients_follow_the_warp() -> None:
    tiny = _Tiny().train()
    layers = count_macs(tiny, torch.rand(3, 1, 6, 6))
    assert tiny.training  # handed back in its own mode
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    count_macs(bn, torch.rand(4, 1, 5, 5))
    assert int(bn[1].num_batches_tracked) == 0  # batch-norm statistics untouched
    assert [(la.name, la.forward, la.input_grad) for la in layers] == [
        ("transformer.localisation.1", 36 * 6, False),  # reads the image: no input gradient
        ("conv", 4 * 36 * 9, True),  # reads the warped image, which depends on the localisation's weights
        ("fc", 144 * 10, True),
    ]
    counted = bench.step_macs("tiny", _Tiny(), torch.rand(3, 1, 6, 6))
    loc, conv, fc = 216, 1296, 1440
    assert counted.full_step == 2 * loc + 3 * conv + 3 * fc
    assert counted.classifier_step == 2 * conv + 3 * fc  # without the transformer the conv reads the image
    assert counted.first_input_grad == conv
    assert counted.overhead_pct == pytest.approx(100.0 * (2 * loc + conv) / (2 * conv + 3 * fc))


def test_a_plain_network_counts_no_input_gradient_at_its_first_layer_and_models_need_a_localisation() -> None:
    cnn = create_model("cnn_baseline", input_shape=(1, 28, 28))
    layers = count_macs(cnn, torch.rand(2, 1, 28, 28))
    assert not layers[0].input_grad and all(la.input_grad for la in layers[1:])
    assert layers[0].forward == 32 * 28 * 28 * 81  # 32 channels of 9x9, same padding
    with pytest.raises(ValueError, match="cnn_baseline: expected localisation networks and a classifier"):
        bench.step_macs("cnn_baseline", cnn, torch.rand(2, 1, 28, 28))


def test_the_classifier_step_is_the_classifier_module_alone_on_the_pooled_image() -> None:
    """ST-CNN Aff on RTS: what the model's step counts without its localisation network is what its classifier
    module counts when run by itself on the 2x average-pooled image (21x21), as bench_train.py times it."""
    model = create_model("st_cnn_aff", input_shape=(1, 42, 42), downsample=2)
    x = torch.rand(2, 1, 42, 42)
    st = bench.step_macs("st_cnn_aff", model, x)
    alone = count_macs(model.classifier, torch.nn.functional.avg_pool2d(x, 2))
    assert st.classifier_forward == sum(la.forward for la in alone)
    assert st.classifier_step == bench._step(alone)
    assert st.full_step > st.classifier_step
