"""Experiment configuration: one small YAML file per experiment, overridden by ``key.sub=value`` flags.

The schema is a set of dataclass sections (:class:`DataConfig`, :class:`ModelConfig`, :class:`TrainConfig`,
:class:`ColocConfig`, :class:`VisualizeConfig`) under :class:`Config`; their fields list every key with its type
and default. A config file or flag naming a key that is not there is a :class:`~torchstn.errors.ConfigKeyError`,
and a value of the wrong type or range a :class:`~torchstn.errors.ConfigError` naming the key, so a typo never
silently trains the wrong thing. Only ``model.kwargs`` and ``data.recipe_params`` are free-form (the model's and
the recipe's own arguments).

A resolved config is a plain nested dict (what ``config.yaml`` in a run directory holds);
:meth:`Config.from_dict` gives the typed view of it and :meth:`Config.to_dict` the dict back.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import errno
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from torchstn.errors import ConfigError, ConfigKeyError, ConfigNotFoundError

__all__ = [
    "DEFAULTS",
    "ColocConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "VisualizeConfig",
    "find_config",
    "format_config",
    "list_configs",
    "load_config",
    "parse_overrides",
    "parse_value",
    "set_key",
    "validate_config",
]

FREE_FORM = ("kwargs", "recipe_params")  # sections whose keys are the model's / the recipe's arguments


@dataclass
class DataConfig:
    """Where the samples come from."""

    dataset: str = "distorted_mnist"  # distorted_mnist | svhn | cub
    recipe: str = "rotated"  # distorted-MNIST recipe name (torchstn data --list); 28x28, as the default model
    recipe_params: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's parameters
    train_split: str = "train"  # train | train+valid
    test_split: str = "test"
    n_train: int | None = None  # default: one sample per source digit
    n_test: int | None = None
    n_valid: int = 0  # training samples held out as a validation set (0: none; the error per epoch is the test's)
    seed: int = 0  # dataset seed
    redraw: bool = False  # fresh distortions every epoch (the paper used a fixed set)
    stream: bool = False  # generate batches on the fly instead of materialising (3D volumes)
    mnist: str | None = None  # IDX directory or mnist.pkl.gz; default: the bundled copy
    root: str | None = None  # dataset directory for SVHN and CUB
    cache_dir: str | None = None
    size: int | None = None  # image size for SVHN / CUB


@dataclass
class ModelConfig:
    """A registered model (``torchstn models``) and its keyword arguments."""

    name: str = "st_cnn_aff"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation, schedule and checkpoints."""

    epochs: int = 10
    batch_size: int = 256
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # adamw: decoupled weight decay (Loshchilov & Hutter)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["onecycle", "step", "constant"] = "onecycle"
    step_every: int = 50_000  # iterations between x0.1 steps (schedule: step)
    loc_lr_scale: float = 1.0  # localisation networks' learning rate relative to the base
    identity_penalty: float = 0.0  # weight of the pull of ST parameters towards the identity
    grad_clip: float | None = None
    max_steps: int | None = None  # stop after this many steps (smoke runs)
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads
    eval_batch_size: int = 1024
    checkpoint_every: int = 1  # epochs
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    precision: Literal["32", "bf16", "16"] = "32"  # float32, bfloat16 autocast, or float16 autocast (CUDA) + scaler
    warmup: float = 0.3  # one-cycle: the share of the steps spent raising the rate (OneCycleLR's pct_start)


@dataclass
class ColocConfig:
    """Co-localisation loss options (:class:`~torchstn.train.tasks.ColocTask`)."""

    encoder_epochs: int = 2
    margin: float = 1.0
    positive: Literal["detach", "grad"] = "detach"
    pairs: Literal["all", "one"] = "all"
    negatives: Literal["crop", "transformer"] = "crop"


@dataclass
class VisualizeConfig:
    """Pictures written at the end of training."""

    enabled: bool = True
    count: int = 16


@dataclass
class Config:
    """A whole experiment: the sections above plus its name and task."""

    name: str = "experiment"
    task: str = "classify"  # a registered task: classify | sequence | coloc
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    coloc: ColocConfig = field(default_factory=ColocConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict that ``config.yaml`` holds (key order as declared)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Config:
        """The typed view of a config dict; it is validated first (see :func:`validate_config`)."""
        resolved = validate_config(config)
        kwargs: dict[str, Any] = {}
        for key, value in resolved.items():
            section = _SECTIONS.get(key)
            kwargs[key] = section(**value) if section is not None else value
        return cls(**kwargs)


_HINTS = get_type_hints(Config)
_SECTIONS: dict[str, Any] = {name: hint for name, hint in _HINTS.items() if dataclasses.is_dataclass(hint)}


def _leaf_types() -> dict[str, Any]:
    out: dict[str, Any] = {}
    top = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        hint = top[f.name]
        if dataclasses.is_dataclass(hint):
            hints = get_type_hints(hint)
            for g in dataclasses.fields(hint):
                out[f"{f.name}.{g.name}"] = hints[g.name]
        else:
            out[f.name] = hint
    return out


LEAF_TYPES: dict[str, Any] = _leaf_types()
DEFAULTS: dict[str, Any] = Config().to_dict()

# Values that must be positive (or, where the type allows it, null).
_POSITIVE = ("train.epochs", "train.batch_size", "train.checkpoint_every", "train.eval_batch_size", "data.n_train",
             "data.n_test", "train.grad_clip", "train.max_steps", "train.step_every", "train.threads",
             "visualize.count", "data.size")  # fmt: skip
_NON_NEGATIVE = ("data.n_valid", "train.lr", "train.momentum", "train.weight_decay", "train.loc_lr_scale",
                 "train.identity_penalty", "coloc.encoder_epochs", "coloc.margin")  # fmt: skip


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    if hint is type(None):
        return "null"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits ``hint``, and the value (an int becomes a float for a float)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        return value in get_args(hint) and isinstance(value, str), value
    if hint is type(None):
        return value is None, value
    if origin is dict or hint is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        return True, float(value)
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


# Keys added after runs were first recorded: a recorded config without one gets its default, which reproduces the
# behaviour the run was trained with (no validation split, float32, the one-cycle warm-up of 0.3 that was fixed;
# the device is where it resumes).
_ADDED = ("data.n_valid", "train.device", "train.precision", "train.warmup")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _check_value(key: str, value: Any) -> Any:
    hint = LEAF_TYPES[key]
    if key == "train.precision" and isinstance(value, int) and not isinstance(value, bool) and value in (16, 32):
        value = str(value)  # precision: 16 or 32 as a number
    ok, out = _coerce(value, hint)
    if not ok:
        raise ConfigError(f"config: {key} expects {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    if out is not None and key in _POSITIVE and not out > 0:
        null = " or null" if get_origin(hint) in (Union, types.UnionType) else ""
        raise ConfigError(f"config: {key} must be positive{null}, got {out!r}")
    if key in _NON_NEGATIVE and not out >= 0:
        raise ConfigError(f"config: {key} must be non-negative, got {out!r}")
    if key == "train.warmup" and not 0.0 < out < 1.0:
        raise ConfigError(f"config: train.warmup expects a share of the schedule in (0, 1), got {out!r}")
    if key == "train.device" and not _DEVICE.fullmatch(out):
        raise ConfigError(f"config: train.device expects 'auto', 'cpu', 'cuda' or 'cuda:N', got {out!r}")
    return out


def _unknown(path: str) -> ConfigKeyError:
    return ConfigKeyError(f"config: unknown key {path!r}")


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key and value of a nested config dict; return a validated copy (ints become floats for floats).

    Raises:
        ConfigKeyError: A key is not in the schema, or a section is missing.
        ConfigError: A value has the wrong type or range.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for key in config:
        if key not in DEFAULTS:
            raise _unknown(str(key))
    for key, default in DEFAULTS.items():
        if key not in config:
            raise ConfigKeyError(f"config: missing key {key!r}")
        value = config[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config: {key} expects a mapping, got {value!r}")
            for sub in value:
                if sub not in default:
                    raise _unknown(f"{key}.{sub}")
            missing = [sub for sub in default if sub not in value and f"{key}.{sub}" not in _ADDED]
            if missing:
                raise ConfigKeyError(f"config: missing key {key}.{missing[0]!r}")
            out[key] = {
                sub: _check_value(f"{key}.{sub}", copy.deepcopy(value[sub] if sub in value else default[sub]))
                for sub in default
            }
        else:
            out[key] = _check_value(key, value)
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: a Python literal (``0.5``, ``(0.7, 1.2)``, ``None``), else YAML (``true``, ``null``,
    ``{a: 1}``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, str | int | float | bool | list | dict) or value is None else text


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings to ``(key, value)`` pairs (values as :func:`parse_value` reads them).

    Raises:
        ConfigError: An item has no ``=`` or an empty key.
    """
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        out.append((key.strip(), parse_value(text)))
    return out


def set_key(config: dict[str, Any], dotted: str, value: Any, raw: str | None = None) -> None:
    """Set ``a.b`` (or ``a.b.c`` below a free-form section) in a nested config, checking its type.

    Args:
        config: The nested config, changed in place.
        dotted: The key path; it must exist in :data:`DEFAULTS` (any name below ``kwargs``/``recipe_params``).
        value: The value.
        raw: The text the value was parsed from: used as is where the key expects a string (``name=2024-01-01``).

    Raises:
        ConfigKeyError: The path does not exist.
        ConfigError: The value has the wrong type or range.
    """
    parts = dotted.split(".")
    if parts[0] not in DEFAULTS:
        raise _unknown(parts[0])
    if len(parts) == 1:
        if isinstance(DEFAULTS[parts[0]], dict):
            raise ConfigError(f"config: {parts[0]} is a section; set one of its keys ({parts[0]}.KEY=VALUE)")
        config[parts[0]] = _leaf(parts[0], value, raw)
        return
    section, sub = parts[0], parts[1]
    if not isinstance(DEFAULTS[section], dict) or sub not in DEFAULTS[section]:
        raise _unknown(f"{section}.{sub}")
    key = f"{section}.{sub}"
    if len(parts) == 2:
        config[section][sub] = _leaf(key, value, raw)
        return
    if sub not in FREE_FORM:
        raise _unknown(dotted)
    node: Any = config[section][sub]
    for i, part in enumerate(parts[2:-1], start=2):
        if not isinstance(node, dict):
            raise ConfigError(f"config: {'.'.join(parts[:i])} is not a mapping")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise ConfigError(f"config: {'.'.join(parts[:-1])} is not a mapping")
    node[parts[-1]] = value


def _leaf(key: str, value: Any, raw: str | None) -> Any:
    hint = LEAF_TYPES[key]
    if raw is not None and not _coerce(value, hint)[0] and _coerce(raw, hint)[0]:
        value = raw  # a string key given text that reads as a number or a date (name=2024)
    return _check_value(key, value)


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            if prefix.endswith(tuple(f"{s}." for s in FREE_FORM)):
                base[key] = value
                continue
            raise _unknown(path)
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            _merge(base[key], value, path + ".")
        else:
            base[key] = value


def list_configs() -> list[str]:
    """The names of the experiment configs shipped inside the package (``torchstn/configs/NAME.yaml``), sorted.

    Example:
        >>> {"demo", "rts"} <= set(list_configs())
        True
    """
    folder = resources.files("torchstn") / "configs"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_config(name: str | os.PathLike[str]) -> Path:
    """The config file ``name`` means: a path that exists, else a config shipped with the package (``rts``,
    ``rts.yaml``).

    Raises:
        ConfigNotFoundError: Neither a file nor a packaged config of that name (also a ``FileNotFoundError``).
    """
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
    if "/" not in text and os.sep not in text and stem in list_configs():
        return Path(str(resources.files("torchstn") / "configs" / f"{stem}.yaml"))
    raise ConfigNotFoundError(
        errno.ENOENT, f"No such file or directory (nor a packaged config: {', '.join(list_configs())})", text
    )


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file (read with ``yaml.safe_load``), then ``key=value`` overrides; validated.

    ``path`` is a file, or the name of a config shipped with the package (:func:`list_configs`).

    Example:
        >>> cfg = load_config(None, ["train.epochs=3", "model.kwargs.downsample=2"])
        >>> cfg["train"]["epochs"], cfg["model"]["kwargs"]
        (3, {'downsample': 2})

    Raises:
        ConfigKeyError: A key is unknown.
        ConfigError: A value has the wrong type or range, or the file does not hold a mapping.
        ConfigNotFoundError: ``path`` is neither a file nor a packaged config (also a ``FileNotFoundError``).
    """
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = find_config(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _merge(config, loaded)
    for item, (key, value) in zip(overrides, parse_overrides(overrides), strict=True):
        set_key(config, key, value, raw=item.partition("=")[2])
    return validate_config(config)


def format_config(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML, in the form ``config.yaml`` holds it."""
    return yaml.safe_dump(dict(config), sort_keys=False)
