"""Model registry: small functions that only set hyperparameters, as timm does."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from torchstn.errors import ConfigError, ConfigKeyError

__all__ = ["create_model", "list_models", "model_function", "register_model", "supported_kwargs"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register ``fn`` under its name; ``create_model(name, **kw)`` calls it."""
    if fn.__name__ in _MODELS:
        raise ConfigError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "") -> list[str]:
    """Registered model names matching ``pattern``, sorted: a wildcard pattern (``*``, ``?``, ``[...]``, as
    :mod:`fnmatch` reads them) must match the whole name, any other string is a substring.

    Example:
        >>> list_models("st_*_aff")
        ['st_cnn_aff', 'st_fcn_aff']
    """
    if any(c in pattern for c in "*?["):
        return sorted(name for name in _MODELS if fnmatch.fnmatchcase(name, pattern))
    return sorted(name for name in _MODELS if pattern in name)


def model_function(name: str) -> Callable[..., nn.Module]:
    """The function registered under ``name``.

    Raises:
        ConfigKeyError: No model is registered under ``name``.
    """
    try:
        return _MODELS[name]
    except KeyError:
        close = [m for m in _MODELS if name.split("_")[0] in m][:8]
        raise ConfigKeyError(
            f"name: unknown model {name!r}; some registered ones: {close or list_models()[:8]}"
        ) from None


def supported_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``kwargs`` that model ``name``'s function takes (all of them if it takes ``**kwargs``).

    The config layer uses it so that one config serves a whole column of models: ``downsample`` (which pools a
    transformer's output) is dropped for a plain model that has no such argument.

    Example:
        >>> supported_kwargs("cnn_baseline", {"input_shape": (1, 42, 42), "downsample": 2})
        {'input_shape': (1, 42, 42)}
    """
    params = inspect.signature(model_function(name)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def create_model(name: str, pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
    """Build a registered model, with the package's trained weights when ``pretrained`` is set.

    Args:
        name: A registered model (:func:`list_models`).
        pretrained: ``False`` (random initialisation), ``True`` (the model's shipped weights, when only one set
            ships) or the tag of the experiment that trained them (``"rts"``, ``"r"``;
            :func:`~torchstn.models.pretrained.list_pretrained` lists them). The architecture arguments come
            with the weights; ``kwargs`` may repeat them, not change them.
        **kwargs: The model function's arguments.

    Raises:
        ConfigKeyError: Unknown model, or no shipped weights of it (under that tag).
        ConfigError: ``kwargs`` contradicts the architecture the weights were trained with.
        CheckpointError: The weight file fails its checksum or does not fit the model.

    Example:
        >>> model = create_model("st_cnn_aff", input_shape=(1, 42, 42), downsample=2)
        >>> model(torch.rand(2, 1, 42, 42)).shape
        torch.Size([2, 10])
    """
    fn = model_function(name)
    if pretrained is False:
        return fn(**kwargs)
    from torchstn.models import pretrained as shipped

    weights = shipped.pretrained_weights(name, pretrained)
    return shipped.load_pretrained(fn(**shipped.merge_kwargs(weights, kwargs)), weights)
