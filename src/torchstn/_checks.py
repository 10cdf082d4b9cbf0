"""Declarative checks for the public boundary.

One helper, :func:`check_tensor`, validates a tensor against a shape spec such as ``"B,C,H,W"`` or ``"*,2"``:
letters bind a dimension (the same letter must match across calls that share ``dims``), digits are exact, and a
leading ``*`` admits any number of leading dimensions. Internal helpers trust their inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from torchstn.errors import DTypeError, OptionError, ShapeError

__all__: list[str] = []


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_tensor(
    x: object,
    name: str,
    spec: str,
    *,
    dims: dict[str, int] | None = None,
    floating: bool = True,
    nonempty: bool = True,
) -> dict[str, int]:
    """Check that ``x`` is a tensor matching ``spec``; return the bound dimensions.

    Args:
        x: The value to check.
        name: The argument's name, used in error messages.
        spec: Comma-separated dimensions: a letter binds a size, a number must match exactly, ``*`` (first only)
            admits any number of leading dimensions.
        dims: Sizes already bound by earlier checks; updated in place and returned.
        floating: Require a floating-point dtype.
        nonempty: Require every dimension to be at least 1.

    Raises:
        DTypeError: ``x`` is not a tensor, or not floating point when ``floating``.
        ShapeError: The shape does not match ``spec``, or the tensor is empty when ``nonempty``.
    """
    dims = {} if dims is None else dims
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor of shape ({spec}), got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise DTypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    parts = [p.strip() for p in spec.split(",")]
    star = parts[0] == "*"
    fixed = parts[1:] if star else parts
    if (star and x.ndim < len(fixed)) or (not star and x.ndim != len(fixed)):
        want = f"at least {len(fixed)}" if star else f"{len(fixed)}"
        raise ShapeError(f"{name}: expected shape ({spec}) with {want} dimensions, got {_fmt(x.shape)}")
    actual = x.shape[x.ndim - len(fixed) :]
    for part, size in zip(fixed, actual, strict=True):
        if part.isdigit():
            if int(part) != size:
                raise ShapeError(f"{name}: expected shape ({spec}), got {_fmt(x.shape)}")
        elif part in dims and dims[part] != size:
            raise ShapeError(f"{name}: expected {part}={dims[part]} in shape ({spec}), got {_fmt(x.shape)}")
        else:
            dims[part] = size  # not int(size): under export that would pin a symbolic (dynamic) size
    if nonempty and x.numel() == 0:
        raise ShapeError(f"{name}: expected a non-empty tensor of shape ({spec}), got {_fmt(x.shape)}")
    return dims


def check_size(size: object, name: str, ndim: int) -> tuple[int, ...]:
    """Check a spatial size: ``ndim`` positive ints (a ``torch.Size`` is accepted). Return it as a tuple."""
    if isinstance(size, int) or not isinstance(size, Sequence) or isinstance(size, str):
        raise DTypeError(f"{name}: expected a sequence of {ndim} positive ints, got {size!r}")
    if len(size) != ndim:
        raise ShapeError(f"{name}: expected {ndim} sizes, got {len(size)}: {tuple(size)!r}")
    out = []
    for s in size:
        if isinstance(s, bool) or not isinstance(s, int):
            raise DTypeError(f"{name}: expected ints, got {type(s).__name__} in {tuple(size)!r}")
        if s < 1:
            raise ShapeError(f"{name}: every size must be at least 1, got {tuple(size)!r}")
        out.append(int(s))
    return tuple(out)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise OptionError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Check that ``value`` is a ``bool`` (not a string such as ``"False"``, which is truthy, nor an int)."""
    if not isinstance(value, bool):
        raise DTypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def check_dtype(value: object, name: str) -> torch.dtype | None:
    """Check that ``value`` is None or a floating-point ``torch.dtype`` (an integer dtype would truncate); return it."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise DTypeError(f"{name}: expected a floating-point torch.dtype or None, got {type(value).__name__} {value!r}")
    if not value.is_floating_point:
        raise DTypeError(f"{name}: expected a floating-point dtype, got {value}")
    return value


def check_device(value: object, name: str) -> torch.device | None:
    """Check that ``value`` is None, a ``torch.device``, a device string such as ``"cpu"`` or an accelerator index
    (as ``torch.device`` takes them); return the device."""
    if value is None:
        return None
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        try:
            return torch.device(value)
        except RuntimeError as err:
            raise OptionError(f"{name}: not a device: {value!r}") from err
    raise DTypeError(
        f"{name}: expected a torch.device, a device string, an index or None, got {type(value).__name__} {value!r}"
    )


def check_like(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """Check that tensor ``x`` has the dtype and device of ``ref`` (both already checked to be tensors).

    Raises:
        DTypeError: The dtypes or the devices differ (a meta tensor against a CPU one, say).
    """
    if x.dtype != ref.dtype:
        raise DTypeError(f"{name}: expected the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")
    if x.device != ref.device:
        raise DTypeError(f"{name}: expected the device of {ref_name} ({ref.device}), got {x.device}")


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool; numpy integers count) of at least ``minimum``; return it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if minimum is not None and int(value) < minimum:
        raise OptionError(f"{name}: expected an int of at least {minimum}, got {value!r}")
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is an int of at least 1; return it."""
    return check_int(value, name, minimum=1)


def check_number(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """Check that ``value`` is a finite real number (not a bool) in ``[low, high]``; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DTypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    x = float(value)
    if x != x or x in (float("inf"), float("-inf")):
        raise OptionError(f"{name}: expected a finite number, got {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise OptionError(f"{name}: expected a number in [{lo}, {hi}], got {value!r}")
    return x


def check_instance(value: object, name: str, cls: type | tuple[type, ...], what: str | None = None) -> None:
    """Check that ``value`` is an instance of ``cls``; ``what`` names the expected type in the message."""
    if not isinstance(value, cls):
        if what is None:
            classes = cls if isinstance(cls, tuple) else (cls,)
            what = " or ".join(f"{c.__module__}.{c.__qualname__}" for c in classes)
        raise DTypeError(f"{name}: expected {what}, got {type(value).__name__}")


def check_transform(value: object, name: str = "transform", *, ndim: int | None = None) -> None:
    """Check that ``value`` is a :class:`torchstn.transforms.Transform` (of ``ndim`` spatial dimensions).

    A value of the wrong type is a :class:`DTypeError` everywhere; a transform of the wrong dimensionality an
    :class:`OptionError`.
    """
    from torchstn.transforms import Transform  # the transforms import this module

    check_instance(value, name, Transform, "a torchstn.transforms.Transform")
    assert isinstance(value, Transform)
    if ndim is not None and value.ndim != ndim:
        raise OptionError(f"{name}: expected a {ndim}D transform, got {value!r} ({value.ndim}D)")


def capturing_graph() -> bool:
    """True while a graph is being captured for export: ``torch.export`` (and so ``torch.onnx.export``), the
    TorchScript ONNX exporter, or ``torch.jit.trace``.

    A captured graph cannot raise on values it has not seen, and reading a value on the host (``bool(t)``) fails
    there, so value checks such as the non-finite one are skipped while capturing.
    """
    tracing = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or tracing)
