"""Shipping a trained model: ONNX export with a dynamic batch, checked against eager PyTorch.

Every transformer in torchstn exports through ``torch.export`` (and so ``torch.onnx.export(..., dynamo=True)``):

* The default sampler becomes ONNX ``GridSample`` (opset 16 and later; ``nearest``, ``bilinear``/``linear`` and
  ``bicubic``/``cubic``, with zeros, border and reflection padding). A transformer built with
  ``backend="reference"`` exports as gathers and arithmetic, for runtimes without ``GridSample``.
* Affine grids export as elementwise multiply-adds (the cached GEMM basis is an eager-mode optimisation; nothing is
  cached while a graph is captured).
* Thin-plate-spline weights depend only on the output size and are solved once in float64; the solve has no
  ONNX operator, so they must exist before capture. :func:`export_onnx` runs the model once on the example
  input first, which builds them.
* Value checks that need the data on the host (``nonfinite="raise"``) cannot run inside a graph and are skipped
  while capturing; build the model with ``nonfinite="propagate"`` to export NaN outputs for non-finite params.

``torch.compile`` works on the same code (see the tests); :func:`export_onnx` needs the ``onnx`` extra
(``pip install 'torchstn[onnx]'``: onnx, onnxscript, and onnxruntime for the check).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from torchstn._checks import check_bool, check_instance, check_int, check_number, check_tensor
from torchstn._io import atomic_path
from torchstn.errors import DTypeError, ExportMismatchError, MissingDependencyError, OptionError, ShapeError

#: Oldest opset the exported graph can use: ``GridSample`` appeared in opset 16.
MIN_OPSET = 16

__all__ = ["ExportMismatchError", "export_onnx"]


def export_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    check_batch: int | None = None,
    atol: float = 1e-4,
    opset: int | None = None,
) -> Path:
    """Export ``model`` to an ONNX file at ``path``, atomically, and check it against eager PyTorch.

    Args:
        model: Any module built from torchstn parts (or containing them). It is exported in eval mode and left in
            the mode it had.
        example: An example input ``(B, C, H, W)`` (or ``(B, C, D, H, W)``); its spatial size is fixed in the
            graph, its batch size is not when ``dynamic_batch``.
        path: Where to write the ``.onnx`` file. It is written next to it first and renamed, so an existing file
            is only replaced by a complete export.
        dynamic_batch: Export the batch dimension as symbolic.
        check: Run the exported file with onnxruntime on ``example`` (and on a batch of ``check_batch`` random
            inputs when ``dynamic_batch``) and compare with the eager outputs.
        check_batch: Batch size of the second check input; default ``B + 1``.
        atol: Largest absolute difference the check accepts.
        opset: ONNX opset, at least 16 (default: the exporter's; ``GridSample`` needs 16, 3D ``GridSample`` 20).

    Returns:
        The path written.

    Raises:
        MissingDependencyError: ``onnx``/``onnxscript`` (or, with ``check``, ``onnxruntime``) is not installed
            (an ``ImportError``).
        ExportMismatchError: The check found a larger difference than ``atol``, or the exporter wrote another
            opset than ``opset``. Nothing is written then.

    Example:
        >>> from torchstn.models import create_model
        >>> model = create_model("st_cnn_aff")  # doctest: +SKIP
        >>> export_onnx(model, torch.rand(2, 1, 28, 28), "st_cnn_aff.onnx")  # doctest: +SKIP
        PosixPath('st_cnn_aff.onnx')
    """
    check_instance(model, "model", nn.Module, "a torch.nn.Module")
    if not isinstance(example, Tensor) or example.ndim not in (4, 5):
        got = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ShapeError(f"example: expected a (B, C, H, W) or (B, C, D, H, W) tensor, got {got}")
    check_tensor(example, "example", "B,C,H,W" if example.ndim == 4 else "B,C,D,H,W")
    check_bool(dynamic_batch, "dynamic_batch")
    check_bool(check, "check")
    if check_batch is not None and check_int(check_batch, "check_batch") < 1:
        raise OptionError(f"check_batch: expected a positive batch size, got {check_batch}")
    check_number(atol, "atol", low=0.0)
    if opset is not None:
        check_int(opset, "opset", minimum=MIN_OPSET)
    try:
        import onnx  # (the exporter's dependencies, named in the error)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(f"export_onnx needs the onnx extra: pip install 'torchstn[onnx]' ({err})") from err
    out = Path(path)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)  # builds the size-dependent constants (thin-plate-spline weights) outside the graph
        dynamic_shapes: tuple[dict[int, str]] | None = ({0: "batch"},) if dynamic_batch else None
        with atomic_path(out) as tmp:  # a unique temporary beside ``out``; renamed only after the checks pass
            with warnings.catch_warnings():
                # The modules keep the last params as attributes for inspection; export warns about the assignment.
                warnings.filterwarnings("ignore", message=".*were assigned during export.*")
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    dynamic_shapes=dynamic_shapes,
                    opset_version=opset,
                    verbose=False,
                )
                assert program is not None, "dynamo=True always returns a program"
                program.save(str(tmp))
            if opset is not None:
                written = {o.domain: o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import}
                if written.get("", written.get("ai.onnx")) != opset:
                    raise ExportMismatchError(
                        f"opset: asked for {opset}, the exporter wrote {written.get('', written.get('ai.onnx'))} "
                        "(it could not convert the graph); nothing was written"
                    )
            if check:
                _check(model, tmp, example, dynamic_batch, check_batch, atol)
    finally:
        model.train(was_training)
    return out


def _check(model: nn.Module, file: Path, example: Tensor, dynamic: bool, batch: int | None, atol: float) -> None:
    try:
        import onnxruntime as ort  # type: ignore[import-untyped]
    except ImportError as err:
        raise MissingDependencyError(
            f"export_onnx(check=True) needs onnxruntime: pip install 'torchstn[onnx]' ({err})"
        ) from err
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    inputs = [example.detach().cpu()]
    if dynamic:
        gen = torch.Generator().manual_seed(0)
        n = batch if batch is not None else example.shape[0] + 1
        inputs.append(torch.rand((n, *example.shape[1:]), generator=gen, dtype=example.dtype))
    for x in inputs:
        with torch.no_grad():
            ref = model(x.to(example.device))
        if not isinstance(ref, Tensor):
            raise DTypeError(f"model: the check compares one output tensor, got {type(ref).__name__}")
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        diff = (got - ref.detach().cpu()).abs().max().item() if ref.numel() else 0.0
        if not diff <= atol:
            raise ExportMismatchError(
                f"the exported model differs from the eager one by {diff:.3g} (> atol={atol:g}) on a batch of "
                f"{x.shape[0]}"
            )
