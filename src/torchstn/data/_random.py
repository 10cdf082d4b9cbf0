"""Counter-based random numbers: draw ``j`` of sample ``i`` is a pure function of (seed, stream, i, j).

Distorted datasets must be regenerable bit for bit whatever the batch size, worker count or process, and
shardable across processes. A sequential generator cannot give that; hashing the counter can. The hash is
SplitMix64 (Steele, Lea and Flood, 2014) in numpy's wrapping uint64 arithmetic.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["Draws"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of ``x + golden`` (uint64 arrays, wrapping)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


class Draws:
    """Random numbers for a batch of sample indices, keyed by ``(seed, stream)``.

    Each call names its purpose (``"angle"``, ``"clutter"``...), so adding a draw to a recipe never shifts the
    numbers of another.

    Args:
        seed: Dataset seed.
        stream: Anything identifying the split, epoch and recipe, e.g. ``"rts/train/epoch0"``.
        index: ``(B,)`` sample indices.

    Example:
        >>> d = Draws(0, "demo", torch.arange(3))
        >>> u = d.uniform("x", 2)
        >>> u.shape
        torch.Size([3, 2])
        >>> torch.equal(Draws(0, "demo", torch.tensor([2])).uniform("x", 2), u[2:])
        True
    """

    def __init__(self, seed: int, stream: str, index: Tensor) -> None:
        digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
        self._key = np.uint64(int.from_bytes(digest[:8], "little"))
        self._index = index.detach().cpu().numpy().astype(np.uint64)

    def _bits(self, purpose: str, k: int) -> np.ndarray:
        tag = np.uint64(int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little"))
        base = _splitmix(_splitmix(self._index ^ self._key) ^ tag)  # (B,)
        return _splitmix(base[:, None] + np.arange(k, dtype=np.uint64)[None, :])  # (B, k)

    def uniform(self, purpose: str, k: int = 1, low: float = 0.0, high: float = 1.0) -> Tensor:
        """``(B, k)`` float64 uniform in ``[low, high)``."""
        u = (self._bits(purpose, k) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return torch.from_numpy(low + (high - low) * u)

    def normal(self, purpose: str, k: int = 1, std: float = 1.0) -> Tensor:
        """``(B, k)`` float64 normal with mean 0 (Box-Muller)."""
        u = self.uniform(purpose + "/normal", 2 * k)
        r = torch.sqrt(-2.0 * torch.log1p(-u[:, :k]))  # log1p(-u): u < 1, so the log is finite
        return std * r * torch.cos(2.0 * torch.pi * u[:, k:])

    def integers(self, purpose: str, k: int, high: Tensor | int) -> Tensor:
        """``(B, k)`` int64 uniform in ``[0, high)``; ``high`` may be ``(B, 1)`` or ``(B, k)``."""
        u = self.uniform(purpose, k)
        hi = torch.as_tensor(high, dtype=torch.float64)
        return torch.minimum(torch.floor(u * hi), hi - 1).long()
