"""Capture: record what every spatial transformer in a model did in one forward pass (no drawing here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from torchstn._checks import check_instance
from torchstn.modules import SerialSpatialTransformer, SpatialTransformer
from torchstn.transforms import Affine, MatrixTransform, Projective, Transform

__all__ = ["TransformerRecord", "capture"]


@dataclass(frozen=True)
class TransformerRecord:
    """What one spatial transformer did in one forward pass (tensors detached, on the CPU).

    Attributes:
        name: Qualified module name in the model (``""`` when the model itself is the transformer).
        input: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) tensor the transformer sampled.
        output: Its output as returned: ``(B, C, H', W')``, ``(B, N, C, H', W')`` (stacked heads) or
            ``(B, N*C, H', W')`` (concatenated heads).
        params: ``(B, P)`` or ``(B, N, P)`` parameters.
        transform: The transform family the parameters belong to.
        align_corners: The coordinate convention the transformer sampled with.
    """

    name: str
    input: Tensor
    output: Tensor
    params: Tensor
    transform: Transform
    align_corners: bool = False

    @property
    def num_heads(self) -> int:
        """Number of transforms applied to each sample (``N``; 1 for ``(B, P)`` params)."""
        return int(self.params.shape[1]) if self.params.ndim == 3 else 1

    @property
    def src_size(self) -> tuple[int, ...]:
        """Spatial size of the input, ``(H, W)`` (or ``(D, H, W)``)."""
        return tuple(int(s) for s in self.input.shape[2:])

    @property
    def head_outputs(self) -> Tensor:
        """The output split per head: ``(B, N, C, H', W')`` (``N = 1`` for a single transform)."""
        b, n = self.output.shape[0], self.num_heads
        spatial = self.input.ndim - 2
        if self.params.ndim == 2:
            return self.output[:, None]
        if self.output.ndim == self.input.ndim + 1:  # stacked
            return self.output
        return self.output.reshape(b, n, -1, *self.output.shape[self.output.ndim - spatial :])  # concatenated


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    x = args[0] if args else kwargs["x"]
    assert isinstance(x, Tensor)
    return x


def _on_transformer(
    name: str,
    records: list[TransformerRecord],
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
) -> None:
    assert isinstance(module, SpatialTransformer)
    out, params = (output[0], output[1]) if isinstance(output, tuple) else (output, module.last_params)
    assert isinstance(out, Tensor) and isinstance(params, Tensor)
    records.append(
        TransformerRecord(
            name=name,
            input=_first_input(args, kwargs).detach().cpu(),
            output=out.detach().cpu(),
            params=params.detach().cpu(),
            transform=module.transform,
            align_corners=module.align_corners,
        )
    )


def _chain_asks_for_params(
    asked: dict[int, bool], module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Pre-hook: make a ``compose=True`` chain return its composed matrix, remembering whether the caller asked."""
    asked[id(module)] = bool(args[1]) if len(args) > 1 else bool(kwargs.get("return_params", False))
    if len(args) > 1:
        return (args[0], True, *args[2:]), kwargs
    return args, {**kwargs, "return_params": True}


def _on_composed_chain(
    name: str,
    records: list[TransformerRecord],
    asked: dict[int, bool],
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
) -> Any:
    """A ``compose=True`` chain never calls its stages' ``forward``: record the chain as one composed matrix.

    The matrix is the chain's own composition (its ``forward(..., return_params=True)`` returns it); the output is
    handed back to the caller in the form it asked for.
    """
    assert isinstance(module, SerialSpatialTransformer)
    out, _, total = output  # (B, C, H', W'), per-stage params, (B, 3, 3) src_from_dst of the chain
    assert isinstance(total, Tensor)
    stages = [st for st in module.stages if isinstance(st, SpatialTransformer)]
    if any(isinstance(st.transform, MatrixTransform) and st.transform.projective for st in stages):
        transform: Transform = Projective()
        params = (total / total[:, 2:, 2:]).reshape(-1, 9)[:, :8]
    else:
        transform = Affine()
        params = total[:, :2].reshape(-1, 6)
    records.append(
        TransformerRecord(
            name=name,
            input=_first_input(args, kwargs).detach().cpu(),
            output=out.detach().cpu(),
            params=params.detach().cpu(),
            transform=transform,
            align_corners=stages[-1].align_corners,
        )
    )
    return output if asked.pop(id(module), False) else out


def capture(model: nn.Module, x: Tensor) -> list[TransformerRecord]:
    """Run ``model`` on ``x`` and record what every spatial transformer inside it did.

    The model runs in eval mode under ``torch.no_grad``; every submodule's training flag is restored afterwards
    and the hooks are removed, also when the forward pass raises. Each :class:`SpatialTransformer` call gives one
    record (a transformer called twice gives two, in call order). A
    :class:`~torchstn.modules.SerialSpatialTransformer` with ``compose=True`` never calls its stages' ``forward``,
    so it gives one record for the whole chain: the composed matrix as :class:`~torchstn.transforms.Affine` (or
    :class:`~torchstn.transforms.Projective`) parameters, with the chain's input and final output.

    Args:
        model: Any module containing spatial transformers (or a transformer itself).
        x: The model's input, e.g. ``(B, C, H, W)``.

    Returns:
        The records, in the order the transformers ran.

    Example:
        >>> from torchstn.modules import conv_localisation
        >>> st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
        >>> [rec] = capture(nn.Sequential(st), torch.rand(2, 1, 28, 28))
        >>> rec.name, tuple(rec.params.shape), tuple(rec.head_outputs.shape)
        ('0', (2, 6), (2, 1, 1, 28, 28))
    """
    check_instance(model, "model", nn.Module, "a torch.nn.Module")
    check_instance(x, "x", Tensor, "a torch.Tensor")
    records: list[TransformerRecord] = []
    asked: dict[int, bool] = {}  # per composed chain: did its caller ask for the params?
    modes = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, SpatialTransformer):
                handles.append(module.register_forward_hook(partial(_on_transformer, name, records), with_kwargs=True))
            elif isinstance(module, SerialSpatialTransformer) and module.compose:
                handles.append(
                    module.register_forward_pre_hook(partial(_chain_asks_for_params, asked), with_kwargs=True)
                )
                handles.append(
                    module.register_forward_hook(partial(_on_composed_chain, name, records, asked), with_kwargs=True)
                )
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return records


def _file_stems(records: Sequence[TransformerRecord]) -> list[str]:
    """File-safe, unique stems from module names (``loc.st`` -> ``loc_st``; repeated calls get ``_call1``...)."""
    stems: list[str] = []
    seen: dict[str, int] = {}
    for rec in records:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", rec.name).strip("_") or "transformer"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_call{count}")
    return stems


def _drawable(records: Sequence[TransformerRecord]) -> list[tuple[str, TransformerRecord]]:
    return [(s, r) for s, r in zip(_file_stems(records), records, strict=True) if r.input.ndim == 4]
