"""Exceptions raised by torchstn.

Every error is an :class:`STNError` and also subclasses the builtin that callers would catch anyway, so
``except ValueError`` keeps working:

- :class:`ShapeError` (``ValueError``): a tensor or size has the wrong shape, or is empty.
- :class:`DTypeError` (``TypeError``): a tensor has the wrong dtype, or an argument has the wrong type.
- :class:`OptionError` (``ValueError``): an option has a value it does not accept (not a choice, out of range).
- :class:`NonFiniteError` (``ValueError``): a sampling grid or parameter tensor holds NaN or inf.
"""

from __future__ import annotations

__all__ = ["DTypeError", "NonFiniteError", "OptionError", "STNError", "ShapeError"]


class STNError(Exception):
    """Base class of every error raised by torchstn."""


class ShapeError(STNError, ValueError):
    """A tensor or size argument has the wrong shape (or is empty)."""


class DTypeError(STNError, TypeError):
    """A tensor has the wrong dtype, or an argument has the wrong type."""


class NonFiniteError(STNError, ValueError):
    """A grid or parameter tensor contains NaN or inf."""


class OptionError(STNError, ValueError):
    """An option (mode, padding, backend, eps, ...) has a value it does not accept."""
