"""torchstn.viz.capture: what every transformer in a model did in one forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.viz._helpers import set_bias, two_head_attention
from torchstn.modules import (
    ParallelSpatialTransformer,
    SerialSpatialTransformer,
    SpatialTransformer,
    conv_localisation,
    mlp_localisation,
    tiling_params,
)
from torchstn.transforms import Affine, Attention, Similarity, Transform
from torchstn.viz import (
    capture,
)


def test_capture_records_the_transformer_at_identity(st_cnn: nn.Module, images: Tensor) -> None:
    records = capture(st_cnn, images)
    assert len(records) == 1
    rec = records[0]
    assert rec.name == "transformer"
    assert isinstance(rec.transform, Affine)
    assert rec.align_corners is False
    assert rec.input.shape == rec.output.shape == (6, 1, 28, 28)
    assert rec.params.shape == (6, 6)
    assert rec.num_heads == 1
    assert rec.src_size == (28, 28)
    assert rec.head_outputs.shape == (6, 1, 1, 28, 28)
    torch.testing.assert_close(rec.params, Affine().identity_params(6))
    torch.testing.assert_close(rec.input, images)
    torch.testing.assert_close(rec.output, images, atol=1e-5, rtol=0)  # identity reproduces the input


def test_capture_restores_modes_and_removes_hooks(st_cnn: nn.Module, images: Tensor) -> None:
    st_cnn.train()
    st_cnn.get_submodule("classifier").eval()  # a mixed state must survive, not be flattened by model.train()
    before = {name: m.training for name, m in st_cnn.named_modules()}
    capture(st_cnn, images)
    assert {name: m.training for name, m in st_cnn.named_modules()} == before
    assert all(not m._forward_hooks for m in st_cnn.modules())


def test_capture_runs_in_eval_mode_without_grad(images: Tensor) -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    st = SpatialTransformer(nn.Sequential(Probe(), mlp_localisation((1, 28, 28), Affine())), Affine())
    st.train()
    [rec] = capture(st, images)
    assert seen == [(False, False)]
    assert st.training and not rec.output.requires_grad


def test_capture_cleans_up_on_error(images: Tensor) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = SpatialTransformer(mlp_localisation((1, 28, 28), Affine()), Affine())

        def forward(self, x: Tensor) -> Tensor:
            self.st(x)
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, images)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("combine", ["stack", "concat"])
def test_capture_multi_head(images: Tensor, combine: str) -> None:
    st = two_head_attention(combine=combine)
    [rec] = capture(st, images)
    assert rec.num_heads == 2
    assert rec.params.shape == (6, 2, 3)
    torch.testing.assert_close(rec.params, tiling_params(1, 2).expand(6, 2, 3))
    assert rec.head_outputs.shape == (6, 2, 1, 28, 28)
    stacked = capture(two_head_attention(combine="stack"), images)[0].head_outputs
    torch.testing.assert_close(rec.head_outputs, stacked)


def test_capture_names_parallel_and_serial_transformers(images: Tensor) -> None:
    def st(t: Transform) -> SpatialTransformer:
        return SpatialTransformer(mlp_localisation((1, 28, 28), t), t)

    par = nn.Sequential(ParallelSpatialTransformer([st(Affine()), st(Attention())]))
    assert [r.name for r in capture(par, images)] == ["0.transformers.0", "0.transformers.1"]
    chain = SerialSpatialTransformer([st(Affine()), st(Attention())], compose=False)
    assert [r.name for r in capture(chain, images)] == ["stages.0", "stages.1"]


def test_capture_composed_chain_is_one_record(images: Tensor) -> None:
    a, b = Attention(), Similarity()
    sa = SpatialTransformer(mlp_localisation((1, 28, 28), a), a)
    sb = SpatialTransformer(mlp_localisation((1, 28, 28), b), b)
    set_bias(sa, torch.tensor([0.5, 0.2, 0.0]))
    set_bias(sb, torch.tensor([0.3, 0.1, 0.0, -0.1]))
    chain = SerialSpatialTransformer([sa, sb], compose=True)
    [rec] = capture(chain, images)
    assert rec.name == "" and isinstance(rec.transform, Affine)
    total = a.matrix(sa.last_params, src_size=(28, 28)) @ b.matrix(sb.last_params, src_size=(28, 28))  # type: ignore[arg-type]
    torch.testing.assert_close(rec.params, total[:, :2].reshape(-1, 6))
    torch.testing.assert_close(rec.output, chain(images))


def test_capture_of_a_composed_chain_keeps_what_the_caller_asked_for(images: Tensor) -> None:
    """The chain is made to return its composed matrix for the record; its caller still gets what it asked."""
    t = Affine()
    chain = SerialSpatialTransformer(
        [SpatialTransformer(conv_localisation((1, 28, 28), t), t) for _ in range(2)], compose=True
    )

    class Caller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chain = chain

        def forward(self, x: Tensor) -> Tensor:
            out, params, total = self.chain(x, return_params=True)
            assert len(params) == 2 and total.shape == (x.shape[0], 3, 3)
            plain = self.chain(x)
            assert isinstance(plain, Tensor)
            return out

    records = capture(Caller(), images)
    assert [r.name for r in records] == ["chain", "chain"]
    _, _, total = chain(images, return_params=True)
    torch.testing.assert_close(records[0].params, total[:, :2].reshape(-1, 6).detach())
    assert not chain._forward_hooks and not chain._forward_pre_hooks
