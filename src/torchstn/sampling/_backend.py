"""What a sampling backend is: an object that says whether it can run a call (and why not) and runs it.

A call (:class:`SamplerCall`) is prepared once by :mod:`torchstn.sampling._dispatch`: the checked input, options,
output size and number of heads, and either a ready-made grid (:func:`~torchstn.sampling.sample`) or a transform
with its parameters and matrix (:func:`~torchstn.sampling.warp`, the modules). A backend reads the input with
``"zeros"``, ``"border"`` or ``"reflection"`` padding; ``padding="fill"`` and ``nonfinite="propagate"`` are
built on top by the dispatch, the same for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from torchstn.transforms import Transform

if TYPE_CHECKING:  # _options imports the registry, which imports the backends
    from torchstn.sampling._options import SamplingOptions

__all__ = ["GridBackend", "SamplerBackend", "SamplerCall"]


@dataclass(eq=False)
class SamplerCall:
    """One call, checked, as the backends see it.

    Attributes:
        input: ``(B, C, *S)``.
        options: The validated options.
        kernel: The interpolation ``mode`` names for this input (``"trilinear"`` is ``"bilinear"`` on volumes).
        size: Output spatial size of each head ``S'``.
        heads: ``N``, the outputs per image (several heads reading one input).
        transform: The transform family, or None for a ready-made grid.
        params: ``(B * N, P)`` parameters, image-major (row ``k`` warps image ``k // N``); None with a grid.
        matrix: ``transform.sampler_matrix(params, S)``; None for a grid or a family without a matrix.
        grid_finite: The matrix was checked and proves every grid point finite (``nonfinite="raise"`` then needs
            no pass over the grid).
        grid: ``(B, N * S'[0], *S'[1:], nd)``, the heads' grids stacked along the first spatial axis: given to
            :func:`~torchstn.sampling.sample`, or built by the dispatch for a backend that reads a grid.
        capturing: A graph is being captured for export (value checks are skipped, see
            :func:`torchstn._checks.capturing_graph`), read once per call.
    """

    input: Tensor
    options: SamplingOptions
    kernel: str
    size: tuple[int, ...]
    heads: int = 1
    transform: Transform | None = None
    params: Tensor | None = None
    matrix: Tensor | None = None
    grid_finite: bool = False
    grid: Tensor | None = None
    capturing: bool = False

    @property
    def batch(self) -> int:
        """``B``, the number of input images."""
        return int(self.input.shape[0])


class SamplerBackend(ABC):
    """A way of sampling. Register an instance in :mod:`torchstn.sampling._backends` to make it available.

    Attributes:
        name: What ``backend=`` calls it.
        reads_grid: True if :meth:`run` samples ``call.grid`` (the dispatch builds and checks it first); False if
            it samples from ``call.matrix`` without a grid.
        traceable: Whether it may run while a graph is captured for export or compiled (standard operators
            only); a backend that may not is passed over there, even when asked for by name.
    """

    name: ClassVar[str]
    reads_grid: ClassVar[bool] = True
    traceable: ClassVar[bool] = True

    def can_run(self, call: SamplerCall) -> str | None:
        """Why this backend cannot run ``call`` (a phrase completing "cannot run this call: ..."), or None."""
        return None

    @abstractmethod
    def run(self, call: SamplerCall, input: Tensor, padding: str) -> Tensor:
        """Sample ``input`` (the call's input, or a same-sized stand-in such as the fill's mask) as ``call`` asks.

        Args:
            call: The call (:meth:`can_run` returned None for it).
            input: ``(B, C', *S)``.
            padding: ``"zeros"``, ``"border"`` or ``"reflection"``.

        Returns:
            ``(B, N, C', *S')``, or ``(B, C', *S')`` when ``call.heads == 1`` (no reshaping: a view costs
            microseconds, and the backward of a reshape copies an expanded gradient).
        """


class GridBackend(SamplerBackend):
    """A backend that reads a grid with a ``grid_sample``-like function; the heads' grids are stacked along the
    first spatial axis, so ``N`` heads are one call."""

    reads_grid = True

    @abstractmethod
    def sample(self, input: Tensor, grid: Tensor, mode: str, padding: str, align_corners: bool) -> Tensor:
        """``F.grid_sample``'s contract: ``(B, C, *S)`` at ``(B, *G, nd)`` -> ``(B, C, *G)``."""

    def run(self, call: SamplerCall, input: Tensor, padding: str) -> Tensor:
        assert call.grid is not None  # the dispatch builds it for a backend that reads a grid
        out = self.sample(input, call.grid, call.kernel, padding, call.options.align_corners)  # (B, C, N*H', ...)
        if call.heads == 1:
            return out
        return out.view(call.batch, input.shape[1], call.heads, *call.size).transpose(1, 2)  # (B, N, C, *S')
