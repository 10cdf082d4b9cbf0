"""ONNX export (torchstn.export): every family exports with a dynamic batch and matches eager PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torchstn.errors import DTypeError, OptionError, ShapeError  # noqa: E402
from torchstn.export import ExportMismatchError, export_onnx  # noqa: E402
from torchstn.models import create_model  # noqa: E402
from torchstn.modules import SpatialTransformer, conv_localisation  # noqa: E402
from torchstn.transforms import Affine, ThinPlateSpline  # noqa: E402


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every weight a little so that the transformers are not at their identity start."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _run(path: Path, x: Tensor) -> Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("name", ["st_cnn_aff", "st_cnn_tps"])
def test_st_cnn_exports_with_a_dynamic_batch(name: str, tmp_path: Path, gen: torch.Generator) -> None:
    model = _perturbed(create_model(name))
    path = export_onnx(model, torch.rand(3, 1, 28, 28, generator=gen), tmp_path / f"{name}.onnx")
    assert "GridSample" in _ops(path)
    x = torch.rand(5, 1, 28, 28, generator=gen)  # another batch size than the example's
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), model(x), atol=1e-5, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temporary file left behind


def test_reference_backend_exports_without_grid_sample(tmp_path: Path, gen: torch.Generator) -> None:
    t = Affine()
    st = SpatialTransformer(
        conv_localisation((3, 24, 20), t, downsample=1), t, output_size=(12, 16), padding="border", backend="reference"
    )
    st = _perturbed(st)
    path = export_onnx(st, torch.rand(2, 3, 24, 20, generator=gen), tmp_path / "ref.onnx")
    assert "GridSample" not in _ops(path)
    x = torch.rand(4, 3, 24, 20, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), st(x), atol=1e-5, rtol=0)


def test_propagate_exports_nan_outputs_for_non_finite_params(tmp_path: Path, gen: torch.Generator) -> None:
    t = Affine()
    st = _perturbed(SpatialTransformer(conv_localisation((1, 16, 16), t, downsample=1), t, nonfinite="propagate"))
    path = export_onnx(st, torch.rand(2, 1, 16, 16, generator=gen), tmp_path / "nan.onnx")
    x = torch.rand(2, 1, 16, 16, generator=gen)
    x[1, 0, 3, 3] = float("nan")  # the localisation net turns it into NaN params for sample 1 only
    out = _run(path, x)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_thin_plate_spline_weights_must_exist_before_capture() -> None:
    t = ThinPlateSpline(grid=(3, 3))
    st = SpatialTransformer(conv_localisation((1, 16, 16), t, downsample=1), t, output_size=(10, 10)).eval()
    with pytest.raises(Exception, match="run the model once") as info:
        torch.export.export(st, (torch.rand(2, 1, 16, 16),))
    # torch.export may wrap the error; ours is in the chain either way.
    chain: list[BaseException] = []
    err: BaseException | None = info.value
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, OptionError) for e in chain)


class _Drifting(nn.Module):
    """Exports ``x * 2`` but computes ``x * 2 + 1`` in eager mode: the check must catch the difference."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 2 if torch.compiler.is_exporting() else x * 2 + 1


def test_failed_check_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportMismatchError, match="differs from the eager one"):
        export_onnx(_Drifting(), torch.rand(1, 1, 4, 4), path)
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_arguments_name_themselves(tmp_path: Path) -> None:
    model = nn.Identity()
    with pytest.raises(ShapeError, match="example"):
        export_onnx(model, torch.rand(3, 4), tmp_path / "m.onnx")
    with pytest.raises(DTypeError, match=r"model: expected a torch\.nn\.Module, got str"):
        export_onnx("not a model", torch.rand(1, 1, 4, 4), tmp_path / "m.onnx")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="check_batch"):
        export_onnx(model, torch.rand(1, 1, 4, 4), tmp_path / "m.onnx", check_batch=0)


def test_capture_leaves_the_grid_caches_untouched(gen: torch.Generator) -> None:
    """Nothing built while a graph is captured (fake tensors) may land in a cache that eager calls use later."""
    from torchstn import geometry

    # backend="torch": the grid path is the one with a cache (the fused kernel builds no grid).
    st = SpatialTransformer(conv_localisation((1, 16, 16), Affine(), downsample=1), Affine(), backend="torch").eval()
    geometry._BASES.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does the trace write the module's last parameters (torch warns)
        torch.export.export(st, (torch.rand(2, 1, 16, 16, generator=gen),))
    assert len(geometry._BASES) == 0 and st.last_params is None
    x = torch.rand(3, 1, 16, 16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(st(x), st(x.clone()))  # eager still works, and now fills the cache
    assert len(geometry._BASES) == 1


@pytest.mark.parametrize("opset", [1, 15, "17", True])
def test_an_opset_without_grid_sample_is_refused_before_exporting(tmp_path: Path, opset: object) -> None:
    with pytest.raises((OptionError, DTypeError), match="opset"):
        export_onnx(nn.Identity(), torch.rand(1, 1, 4, 4), tmp_path / "m.onnx", opset=opset)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_bad_flags_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(DTypeError, match="dynamic_batch: expected a bool"):
        export_onnx(nn.Identity(), torch.rand(1, 1, 4, 4), tmp_path / "m.onnx", dynamic_batch="False")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="atol"):
        export_onnx(nn.Identity(), torch.rand(1, 1, 4, 4), tmp_path / "m.onnx", atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_the_requested_opset_is_the_one_written(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    st = SpatialTransformer(conv_localisation((1, 16, 16), Affine(), downsample=1), Affine())
    path = export_onnx(st, torch.rand(2, 1, 16, 16), tmp_path / "m.onnx", check=False, opset=18)
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 18
