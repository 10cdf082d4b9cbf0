"""Helpers shared by the tests: one tolerance table by dtype."""

from __future__ import annotations

import torch

#: (rtol, atol) by dtype.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, scale: float = 1.0) -> None:
    """``torch.testing.assert_close`` with the table's tolerances for ``actual.dtype``, times ``scale``."""
    rtol, atol = TOL[actual.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol * scale, atol=atol * scale)


def free_port() -> int:
    """A TCP port that is free on localhost now, for a torchrun rendezvous (tests running in parallel must not
    share a fixed port)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
