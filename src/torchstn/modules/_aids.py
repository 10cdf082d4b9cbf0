"""Training aids: a prior pulling parameters to the identity, localisation learning rates, initial tilings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from torchstn._checks import check_int, check_number, check_tensor, check_transform
from torchstn.errors import DTypeError, OptionError
from torchstn.transforms import Transform

__all__ = ["identity_penalty", "localisation_param_groups", "tiling_params"]


def identity_penalty(params: Tensor, transform: Transform) -> Tensor:
    """Mean squared distance of parameters from the identity: add ``weight * penalty`` to the loss.

    A small weight keeps a transformer near the identity early in training, when a random localisation network
    could otherwise push it to degenerate warps (zoomed out, collapsed, off the image).

    Args:
        params: ``(B, P)`` or ``(B, N, P)``.
        transform: Their family.

    Returns:
        A scalar.

    Example:
        >>> from torchstn.transforms import Attention
        >>> identity_penalty(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]), Attention())
        tensor(0.0417)
    """
    check_transform(transform)
    check_tensor(params, "params", f"*,{transform.num_params}")
    ident = transform.identity_params(1, device=params.device, dtype=params.dtype)[0]
    return (params - ident).square().mean()


def _localisation_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    from torchstn.modules._transformer import SpatialTransformer

    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            yield from module.localisation.parameters()


def localisation_param_groups(
    model: nn.Module, lr: float, localisation_lr_scale: float = 1.0, **group_options: Any
) -> list[dict[str, Any]]:
    """Optimizer parameter groups giving every localisation network in ``model`` its own learning rate.

    The default scale, 1.0, is the trainer's (``train.loc_lr_scale`` in :data:`torchstn.train.DEFAULTS`) and the
    paper's MNIST recipe, which gives the localisation networks no rate of their own (they still get a group of
    their own, so that a schedule or a later change can treat them apart). The paper trains localisation
    networks at 1/10 of the base rate on SVHN (``localisation_lr_scale=0.1``) and at 1e-4 of it on CUB.

    Args:
        model: A model containing :class:`~torchstn.modules.SpatialTransformer` modules.
        lr: Base learning rate.
        localisation_lr_scale: Factor applied to the localisation networks' learning rate; default 1.0.
        **group_options: Extra options for both groups (``weight_decay``, ...).

    Returns:
        Two groups, the rest of the model first, for ``torch.optim.SGD(groups, ...)`` and the like.

    Example:
        >>> from torchstn.modules import SpatialTransformer, mlp_localisation
        >>> from torchstn.transforms import Affine
        >>> st = SpatialTransformer(mlp_localisation((1, 8, 8), Affine()), Affine())
        >>> model = torch.nn.Sequential(st, torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> [g["lr"] for g in localisation_param_groups(model, 0.01)]
        [0.01, 0.01]
        >>> [g["lr"] for g in localisation_param_groups(model, 0.01, localisation_lr_scale=0.1)]  # SVHN's recipe
        [0.01, 0.001]
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
        raise OptionError(f"lr: expected a non-negative float, got {lr!r}")
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not check_number(localisation_lr_scale, "localisation_lr_scale") > 0:
        raise OptionError(f"localisation_lr_scale: expected a positive float, got {localisation_lr_scale!r}")
    loc = {id(p): p for p in _localisation_parameters(model)}
    rest = [p for p in model.parameters() if id(p) not in loc]
    return [
        {"params": rest, "lr": lr, **group_options},
        {"params": list(loc.values()), "lr": lr * localisation_lr_scale, **group_options},
    ]


def tiling_params(rows: int, cols: int, overlap: float = 0.0) -> Tensor:
    """Attention parameters ``(rows * cols, 3)`` whose windows tile the image, row-major.

    Parallel attention transformers starting from a tiling (the paper's birds model) look at different parts
    from the first step instead of all starting at the whole image.

    Args:
        rows: Tiles along the height.
        cols: Tiles along the width.
        overlap: Enlarge each window by this fraction (0: windows just cover the image).

    Example:
        >>> tiling_params(1, 2)
        tensor([[ 0.5000, -0.5000,  0.0000],
                [ 0.5000,  0.5000,  0.0000]])
    """
    check_int(rows, "rows")
    check_int(cols, "cols")
    check_number(overlap, "overlap")
    if rows < 1 or cols < 1 or overlap < 0:
        raise OptionError(f"rows, cols, overlap: expected rows, cols >= 1 and overlap >= 0, got {rows, cols, overlap}")
    s = min(1.0 / rows, 1.0 / cols) * (1.0 + overlap)  # isotropic windows: fit the finer direction
    ty = (2 * torch.arange(rows) + 1) / rows - 1
    tx = (2 * torch.arange(cols) + 1) / cols - 1
    gy, gx = torch.meshgrid(ty, tx, indexing="ij")
    return torch.stack((torch.full_like(gx, s), gx, gy), dim=-1).reshape(-1, 3)
