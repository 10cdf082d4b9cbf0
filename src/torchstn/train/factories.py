"""What a config builds: the model, the optimizer and the learning-rate schedule.

Model keyword values of the form ``"call:package.module:function"`` are replaced by what the function returns (a
user's backbone with its weights, for CUB). Importing and calling code named by a config is refused unless the
module is allowed explicitly for this call (``allow_call``, the CLI's ``--allow-call MODULE``): a config or a run
directory from elsewhere must never run code by being opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from torchstn.errors import ConfigError
from torchstn.models import create_model, supported_kwargs
from torchstn.modules import localisation_param_groups

__all__ = ["build_model", "build_optimizer", "build_scheduler", "model_kwargs"]

CALL_PREFIX = "call:"


def _allowed(module: str, allow_call: Collection[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in allow_call)


def _resolve(key: str, value: Any, allow_call: Collection[str]) -> Any:
    if not (isinstance(value, str) and value.startswith(CALL_PREFIX)):
        return value
    module, _, name = value[len(CALL_PREFIX) :].partition(":")
    if not module or not name:
        raise ConfigError(f"model.kwargs.{key}: expected 'call:package.module:function', got {value!r}")
    if not _allowed(module, allow_call):
        raise ConfigError(
            f"model.kwargs.{key}: {value!r} would import and run code from {module!r}; allow it explicitly for this "
            f"run with --allow-call {module} (allow_call=[{module!r}])"
        )
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ConfigError(f"model.kwargs.{key}: {module}.{name} is not a function")
    return fn()


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The config's model keyword arguments that the model function takes; the others are dropped
    (:func:`~torchstn.models.supported_kwargs`), so one config serves a whole column of models."""
    return supported_kwargs(config["model"]["name"], config["model"]["kwargs"])


def build_model(config: dict[str, Any], allow_call: Collection[str] = ()) -> nn.Module:
    """The config's model (see the module doc for ``call:`` values and ``allow_call``).

    Raises:
        ConfigKeyError: The model is not registered.
        ConfigError: A ``call:`` value names a module not in ``allow_call``.
    """
    kwargs = {k: _resolve(k, v, allow_call) for k, v in model_kwargs(config).items()}
    return create_model(config["model"]["name"], **kwargs)


def build_optimizer(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model's parameter groups (localisation networks at ``train.loc_lr_scale``).

    ``train.weight_decay`` is an L2 term in the gradient for Adam and SGD, and decoupled from it for AdamW (each
    step shrinks the weights by ``lr * weight_decay``; biases included, as torch's optimisers do)."""
    t = config["train"]
    groups = localisation_param_groups(model, t["lr"], t["loc_lr_scale"], weight_decay=t["weight_decay"])
    groups = [g for g in groups if g["params"]]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"])
    if t["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=t["lr"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=t["lr"])
    raise ConfigError(f"train.optimizer: expected 'adam', 'adamw' or 'sgd', got {t['optimizer']!r}")


def build_scheduler(config: dict[str, Any], opt: torch.optim.Optimizer, total_steps: int) -> Any:
    """The learning-rate schedule over ``total_steps`` steps: one-cycle (warming up over ``train.warmup`` of
    them), x0.1 steps, or constant."""
    t = config["train"]
    if t["schedule"] == "onecycle":
        max_lrs = [g["lr"] for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lrs, total_steps=max(total_steps, 1), pct_start=t["warmup"]
        )
    if t["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t["step_every"], gamma=0.1)
    if t["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ConfigError(f"train.schedule: expected onecycle, step or constant, got {t['schedule']!r}")
