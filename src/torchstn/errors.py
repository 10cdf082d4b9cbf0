"""Exceptions raised by torchstn.

Every error torchstn raises is an :class:`STNError` and also subclasses the builtin that callers would catch
anyway, so ``except ValueError`` (or ``KeyError``, ``RuntimeError``, ``OSError``) keeps working:

- :class:`ShapeError` (``ValueError``): a tensor or size has the wrong shape, or is empty.
- :class:`DTypeError` (``TypeError``): a tensor has the wrong dtype, or an argument has the wrong type.
- :class:`OptionError` (``ValueError``): an option has a value it does not accept (not a choice, out of range).
- :class:`NonFiniteError` (``ValueError``): a sampling grid or parameter tensor holds NaN or inf.
- :class:`UnsupportedError` (``RuntimeError``): a backend cannot do what was asked (second-order gradients
  through the fused kernel).
- :class:`ConfigError` (``ValueError``): an experiment config has an unknown key or a value of the wrong type;
  :class:`ConfigKeyError` (also ``KeyError``) for an unknown key; :class:`ConfigNotFoundError` (also
  ``FileNotFoundError``) for a config that is neither a file nor shipped with the package.
- :class:`DataError` (``ValueError``): a dataset file or cache is malformed or disagrees with its recipe;
  :class:`DataNotFoundError` (also ``FileNotFoundError``) for a dataset file or directory that is missing.
- :class:`CheckpointError` (``ValueError``): a checkpoint is not a torchstn checkpoint, or fails its checksum.
- :class:`RunError` (``RuntimeError``): a run directory cannot be used as asked (exists, locked, finished, not a
  run directory, not writable).
- :class:`TrainingDiverged` (``RuntimeError``): the loss became NaN or inf during training.
- :class:`ExportMismatchError` (``RuntimeError``): an exported model disagrees with the eager one.
- :class:`ExtensionBuildError` (``RuntimeError``): the fused CPU kernel could not be built or loaded.
- :class:`MissingDependencyError` (``ImportError``): an optional dependency (an extra) is not installed.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConfigKeyError",
    "ConfigNotFoundError",
    "DTypeError",
    "DataError",
    "DataNotFoundError",
    "ExportMismatchError",
    "ExtensionBuildError",
    "MissingDependencyError",
    "NonFiniteError",
    "OptionError",
    "RunError",
    "STNError",
    "ShapeError",
    "TrainingDiverged",
    "UnsupportedError",
]


class STNError(Exception):
    """Base class of every error raised by torchstn."""


class _NotFound:
    """What the ``*NotFoundError`` classes share with ``FileNotFoundError``.

    Their first builtin base is ``ValueError`` (their family's), so ``OSError`` does not read
    ``(errno, strerror, filename)`` from the arguments; this sets ``errno``, ``strerror`` and ``filename`` as
    ``OSError`` would, and the message reads ``filename: strerror``. One argument is the message as written.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        if len(args) == 3 and isinstance(args[0], int):
            for name, value in zip(("errno", "strerror", "filename"), args, strict=True):
                setattr(self, name, value)

    def __str__(self) -> str:
        args: tuple[object, ...] = getattr(self, "args", ())
        if len(args) == 3 and isinstance(args[0], int):
            return f"{args[2]}: {args[1]}"
        return str(args[0]) if len(args) == 1 else super().__str__()


class ShapeError(STNError, ValueError):
    """A tensor or size argument has the wrong shape (or is empty)."""


class DTypeError(STNError, TypeError):
    """A tensor has the wrong dtype, or an argument has the wrong type."""


class NonFiniteError(STNError, ValueError):
    """A grid or parameter tensor contains NaN or inf."""


class OptionError(STNError, ValueError):
    """An option (mode, padding, backend, eps, ...) has a value it does not accept."""


class UnsupportedError(STNError, RuntimeError):
    """A backend or path cannot do what was asked (e.g. second-order gradients through the fused kernel)."""


class ConfigError(STNError, ValueError):
    """An experiment config names an unknown key, or gives a key a value of the wrong type or range."""


class ConfigKeyError(ConfigError, KeyError):
    """A config key, model name or task name that does not exist."""

    def __str__(self) -> str:  # KeyError's str() quotes the message; show it as written
        return str(self.args[0]) if self.args else ""


class ConfigNotFoundError(_NotFound, ConfigError, FileNotFoundError):
    """A config named by path or by name is neither a file nor a config shipped with the package."""


class DataError(STNError, ValueError):
    """A dataset file or cache is missing, malformed, or disagrees with what it should hold."""


class DataNotFoundError(_NotFound, DataError, FileNotFoundError):
    """A dataset file or directory does not exist (the message says what it should hold, or how to get it)."""


class CheckpointError(STNError, ValueError):
    """A file is not a torchstn checkpoint, or its contents fail the recorded checksum."""


class CheckpointNotFoundError(_NotFound, CheckpointError, FileNotFoundError):
    """There is no checkpoint file where one was asked for."""


class RunError(STNError, RuntimeError):
    """A run directory cannot be used as asked (it exists, is locked, is finished, or is not a run directory)."""


class TrainingDiverged(STNError, RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class ExportMismatchError(STNError, RuntimeError):
    """The exported model's outputs differ from the eager model's by more than the tolerance."""


class ExtensionBuildError(STNError, RuntimeError):
    """The compiled kernel could not be built or loaded (no compiler, no ninja, a compile error)."""


class MissingDependencyError(STNError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""
