"""Weights that ship inside the package: the reproduction's trained models, loadable offline.

``create_model(name, pretrained="rts")`` (the tag of the experiment that trained them; ``True`` when only one ships)
builds the model with the architecture the weights were trained with and loads them. Each file is a plain
``state_dict`` saved with ``torch.save``; ``weights/index.json`` lists, for every file, the model and keyword
arguments it belongs to, its SHA-256, the committed record it comes from (``results/<column>/<model>/e<E>-seed<S>``,
with its code sha and test error) and a *check*: the error it makes on a fixed slice of its test set, measured
when the weights were exported. Loading verifies the checksum before anything is read and reads with
``weights_only=True``, so a file never runs code. ``tests/test_pretrained.py`` rebuilds each check slice and
asserts the recorded error.

``scripts/export_weights.py`` writes the files and the index from a finished run whose record is committed; no
entry is written by hand.

Example:
    >>> from torchstn.models import create_model, list_pretrained
    >>> [f"{w.model}:{w.tag}" for w in list_pretrained("st_cnn_aff")]  # doctest: +SKIP
    ['st_cnn_aff:rts']
    >>> model = create_model("st_cnn_aff", pretrained="rts").eval()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchstn.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ConfigKeyError

__all__ = [
    "WEIGHTS_DIR",
    "PretrainedWeights",
    "check_slice",
    "check_slice_error",
    "list_pretrained",
    "load_pretrained",
    "pretrained_weights",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
INDEX = "index.json"


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped weight file and where it came from.

    Attributes:
        model: Registered model name.
        tag: The experiment (results column) that trained it, e.g. ``"rts"``.
        kwargs: The keyword arguments of ``create_model`` that build the architecture the weights fit.
        file: File name inside :data:`WEIGHTS_DIR`.
        sha256: SHA-256 of the file's bytes.
        record: The committed record the weights' run produced (path relative to the repository).
        code_sha: The commit that trained them.
        test_error: The record's final test error (%) on the whole test set.
        check: How the weights were checked at export: ``{"recipe", "split", "seed", "n", "recipe_params"}``
            name the first ``n`` samples of the test set; ``"error"`` is the error (%) measured on them.
    """

    model: str
    tag: str
    kwargs: dict[str, Any]
    file: str
    sha256: str
    record: str
    code_sha: str
    test_error: float
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def read_index(weights_dir: Path | None = None) -> list[PretrainedWeights]:
    """The entries of a weights folder's ``index.json`` (default :data:`WEIGHTS_DIR`; none without an index).

    Raises:
        CheckpointError: The index is malformed.
    """
    path = (WEIGHTS_DIR if weights_dir is None else weights_dir) / INDEX
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
        return [PretrainedWeights(**row) for row in rows]
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: malformed index of pretrained weights ({err})") from None


def list_pretrained(model: str = "") -> list[PretrainedWeights]:
    """The shipped weights, of ``model`` only when given, sorted by model then tag."""
    rows = [w for w in read_index() if not model or w.model == model]
    return sorted(rows, key=lambda w: (w.model, w.tag))


def pretrained_weights(model: str, tag: str | bool = True) -> PretrainedWeights:
    """The index entry for ``model``'s weights tagged ``tag`` (``True``: its only entry).

    Raises:
        ConfigKeyError: No weights of ``model`` ship (under ``tag``).
        ConfigError: ``tag`` is True and several weights of ``model`` ship (for several inputs: name one, so that
            new weights shipping later never change what the call loads).
    """
    rows = list_pretrained(model)
    if not rows:
        shipped = sorted({w.model for w in read_index()})
        raise ConfigKeyError(f"pretrained: no weights ship for model {model!r}; models with weights: {shipped}")
    if tag is True:
        if len(rows) > 1:
            tags = [w.tag for w in rows]
            raise ConfigError(
                f"pretrained=True: model {model!r} has weights tagged {tags}, each for its own input; pass one, "
                f"e.g. pretrained={tags[0]!r}"
            )
        return rows[0]
    if not isinstance(tag, str):
        raise ConfigError(f"pretrained: expected True or a tag such as {rows[0].tag!r}, got {tag!r}")
    for w in rows:
        if w.tag == tag:
            return w
    raise ConfigKeyError(f"pretrained: model {model!r} has no weights tagged {tag!r}; tags: {[w.tag for w in rows]}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def merge_kwargs(weights: PretrainedWeights, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The weights' architecture arguments, with ``kwargs`` that agree with them (any other value is an error).

    Raises:
        ConfigError: ``kwargs`` changes an argument the weights were trained with.
    """
    merged = dict(weights.kwargs)
    for key, value in kwargs.items():
        if key in merged and not _same(merged[key], value):
            raise ConfigError(
                f"{key}: the pretrained {weights.model!r} weights ({weights.tag!r}) were trained with "
                f"{key}={merged[key]!r}, got {value!r}"
            )
        merged[key] = value
    return merged


def read_state_dict(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path``, after checking its bytes against ``sha256``; loaded with ``weights_only``.

    Raises:
        CheckpointNotFoundError: The file is missing.
        CheckpointError: The file fails its checksum or is not a state dict of tensors.
    """
    if not path.is_file():
        raise CheckpointNotFoundError(2, "No such file (pretrained weights)", str(path))
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path}: the weights fail their SHA-256 checksum (the file is corrupt or replaced)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def load_pretrained(model: nn.Module, weights: PretrainedWeights) -> nn.Module:
    """Load ``weights`` into ``model`` (strictly: every key, every shape) and return it."""
    state = read_state_dict(weights.path, weights.sha256)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{weights.path}: the weights do not fit the model {weights.model!r} ({first})") from None
    return model


def check_slice(check: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The check slice's images (float32 in [0, 1]) and labels: the first ``check["n"]`` samples of the test set
    that ``check`` names (recipe, its parameters, split and data seed), regenerated exactly as training made them."""
    from torchstn.data import generate, get_recipe, load_mnist

    recipe = get_recipe(check["recipe"], **(check.get("recipe_params") or {}))
    source = load_mnist().split(check["split"])
    data = generate(recipe, source, int(check["n"]), seed=int(check["seed"]), split=check["split"])
    return data.images.float().div_(255.0), data.labels


def check_slice_error(model: nn.Module, check: Mapping[str, Any], batch_size: int = 500) -> float:
    """Error (%) of ``model`` on the check slice (see :func:`check_slice`), rounded to 4 decimals."""
    x, y = check_slice(check)
    was = model.training
    model.eval()
    wrong = 0
    with torch.no_grad():
        for lo in range(0, len(y), batch_size):
            wrong += int((model(x[lo : lo + batch_size]).argmax(-1) != y[lo : lo + batch_size]).sum())
    model.train(was)
    return round(100.0 * wrong / len(y), 4)
