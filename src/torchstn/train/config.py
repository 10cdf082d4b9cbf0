"""Experiment configuration: one small YAML file per experiment, overridden by ``key.sub=value`` flags.

The defaults below list every key; a config file or flag naming a key that is not here is an error, so a typo
never silently trains the wrong thing.
"""

from __future__ import annotations

import ast
import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "load_config", "parse_overrides", "set_key"]

DEFAULTS: dict[str, Any] = {
    "name": "experiment",
    "task": "classify",  # classify | sequence | coloc
    "data": {
        "dataset": "distorted_mnist",  # distorted_mnist | svhn | cub
        "recipe": "rts",  # distorted-MNIST recipe name (torchstn data --list)
        "recipe_params": {},  # overrides of the recipe's parameters
        "train_split": "train",  # train | train+valid
        "test_split": "test",
        "n_train": None,  # default: one sample per source digit
        "n_test": None,
        "seed": 0,  # dataset seed
        "redraw": False,  # fresh distortions every epoch (the paper used a fixed set)
        "stream": False,  # generate batches on the fly instead of materialising (3D volumes)
        "mnist": None,  # IDX directory or mnist.pkl.gz; default: the bundled copy
        "root": None,  # dataset directory for SVHN and CUB
        "cache_dir": None,
        "size": None,  # image size for SVHN / CUB
    },
    "model": {"name": "st_cnn_aff", "kwargs": {}},
    "train": {
        "epochs": 10,
        "batch_size": 256,
        "optimizer": "adam",  # adam | sgd
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "onecycle",  # onecycle | step | constant
        "step_every": 50_000,  # iterations between x0.1 steps (schedule: step)
        "loc_lr_scale": 1.0,  # localisation networks' learning rate relative to the base
        "identity_penalty": 0.0,  # weight of the pull of ST parameters towards the identity
        "grad_clip": None,
        "max_steps": None,  # stop after this many steps (smoke runs)
        "seed": 0,
        "threads": None,  # torch.set_num_threads
        "eval_batch_size": 1024,
        "checkpoint_every": 1,  # epochs
    },
    "coloc": {"encoder_epochs": 2, "margin": 1.0, "positive": "detach", "pairs": "all", "negatives": "crop"},
    "visualize": {"enabled": True, "count": 16},
}


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested config; the path must exist in :data:`DEFAULTS` (free-form below ``kwargs``)."""
    parts = dotted.split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config: unknown key {'.'.join(parts[: i + 1])!r}")
        node = node[part]
    leaf = parts[-1]
    free = len(parts) > 1 and parts[-2] in ("kwargs", "recipe_params")  # model and recipe arguments
    if not isinstance(node, dict) or (leaf not in node and not free):
        raise KeyError(f"config: unknown key {dotted!r}")
    node[leaf] = value


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            if prefix.endswith(("kwargs.", "recipe_params.")):
                base[key] = value
                continue
            raise KeyError(f"config: unknown key {path!r}")
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            _merge(base[key], value, path + ".")
        else:
            base[key] = value


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings to pairs; values are YAML/Python literals where they parse, else strings."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = yaml.safe_load(text) if text else ""
        out.append((key.strip(), value))
    return out


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file (read with ``yaml.safe_load``), then ``key=value`` overrides.

    Example:
        >>> cfg = load_config(None, ["train.epochs=3", "model.kwargs.downsample=2"])
        >>> cfg["train"]["epochs"], cfg["model"]["kwargs"]
        (3, {'downsample': 2})
    """
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        _merge(config, loaded)
    for key, value in parse_overrides(overrides):
        set_key(config, key, value)
    return config
