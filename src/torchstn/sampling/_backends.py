"""The registry of sampling backends, in the order ``backend="auto"`` tries them.

``auto`` takes the first backend that can run a call: the fused CPU kernel where it applies, else
``F.grid_sample``, which runs everything (so ``reference``, registered last, is taken only by name). Adding a
backend is one new file with a :class:`~torchstn.sampling._backend.SamplerBackend` subclass and its registration
here: an instance in ``_REGISTERED`` and its name in the :data:`Backend` type beside it (``backend=`` accepts the
registered names at run time; the type is for type checkers).
"""

from __future__ import annotations

from typing import Literal

import torch

from torchstn.errors import OptionError
from torchstn.sampling._backend import SamplerBackend, SamplerCall
from torchstn.sampling._fused import FusedCPUBackend
from torchstn.sampling._reference import ReferenceBackend
from torchstn.sampling._torch import TorchBackend

__all__ = ["BACKEND_NAMES", "Backend", "backends", "choose", "get_backend"]

# --- the registrations ---------------------------------------------------------------------------------------
_REGISTERED: tuple[SamplerBackend, ...] = (FusedCPUBackend(), TorchBackend(), ReferenceBackend())
Backend = Literal["auto", "fused", "torch", "reference"]
# ---------------------------------------------------------------------------------------------------------------

_BY_NAME = {b.name: b for b in _REGISTERED}
#: What ``backend=`` accepts: ``"auto"`` and every registered name.
BACKEND_NAMES: tuple[str, ...] = ("auto", *_BY_NAME)


def backends() -> tuple[SamplerBackend, ...]:
    """Every registered backend, in the order ``"auto"`` tries them."""
    return _REGISTERED


def get_backend(name: str) -> SamplerBackend:
    """The backend called ``name`` (the name has been checked against the choices)."""
    return _BY_NAME[name]


def choose(call: SamplerCall) -> SamplerBackend:
    """The backend that runs ``call``: the one named by ``call.options.backend``, or for ``"auto"`` the first
    registered one that can.

    While a graph is captured for export or compiled, backends that are not traceable are passed over, even when
    named (the graph keeps to standard operators; such a request is read as ``"auto"``).

    Raises:
        OptionError: The named backend cannot run the call, saying why.
    """
    name = call.options.backend
    tracing = call.capturing or torch.compiler.is_compiling()
    if name != "auto":
        backend = _BY_NAME[name]
        if not (tracing and not backend.traceable):
            why = backend.can_run(call)
            if why is not None:
                raise OptionError(f"backend: {name!r} cannot run this call: {why}")
            return backend
    for backend in _REGISTERED:
        if (backend.traceable or not tracing) and backend.can_run(call) is None:
            return backend
    raise OptionError("backend: no registered backend can run this call")  # unreachable: torch runs everything
