"""Mixed precision: what a call under ``torch.autocast`` computes in, following PyTorch's policy for ``grid_sample``.

Under autocast a localisation network's last ``Linear`` gives ``float16`` or ``bfloat16`` parameters while the
image is often ``float32`` (or the reverse: a feature map in low precision). PyTorch's policy for the STN
tutorial's ``F.affine_grid`` + ``F.grid_sample``: ``grid_sampler`` is in autocast's float32 list on the CPU (both
tensors cast to float32) and in its "promote" list on CUDA (both cast to the wider of the two). torchstn follows it:

* the parameters, the transform's matrix and the grid are computed in float32 (float64 stays float64), with
  autocast switched off so that no matrix product inside (an affine grid's GEMM, a composed chain's product, a
  thin-plate spline's weights) runs in low precision;
* the sampling runs in whatever dtype autocast gives ``F.grid_sample`` for the input's dtype and that float32
  grid on that device (asked once per device type, autocast dtype and pair of dtypes, by sampling one pixel):
  float32 for a float16 or bfloat16 input on the CPU and on CUDA alike, so the output is float32, as
  ``F.grid_sample`` under the same autocast returns for a float32 grid. :func:`~torchstn.sampling.sample`, given
  a grid, asks with the grid's own dtype (a float16 grid and input on CUDA are sampled in float16, as there).

Only ``float16`` and ``bfloat16`` tensors are cast, as autocast does: ``float32`` parameters for a ``float64``
input still raise :class:`~torchstn.errors.DTypeError`. Outside autocast nothing here runs: the dtypes are the
caller's, bit for bit as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstn._checks import capturing_graph

__all__ = ["AutocastDtypes", "autocast_dtypes", "to_work_dtype"]

#: The dtypes autocast casts (to float32, for an op in its float32 list); wider or integer ones it leaves alone.
NARROW = (torch.float16, torch.bfloat16)

# (device type, autocast dtype, input dtype, grid dtype) -> the dtype F.grid_sample runs in under that autocast,
# or None where it refuses the pair (a float64 input with a float32 grid: the usual checks then say so).
_SAMPLE_DTYPES: dict[tuple[str, torch.dtype, torch.dtype, torch.dtype], torch.dtype | None] = {}


@dataclass(frozen=True)
class AutocastDtypes:
    """The dtypes of one call under autocast.

    Attributes:
        device_type: The autocast's device type (``"cpu"``, ``"cuda"``, ...), to switch it off inside the call.
        work: What the parameters, matrices and grid are computed in: float32, or float64 for a float64 input.
        sample: What the input (and grid) are sampled in; the grid is cast to it where it differs from ``work``.
    """

    device_type: str
    work: torch.dtype
    sample: torch.dtype


def autocast_dtypes(input: Tensor, grid_dtype: torch.dtype | None = None) -> AutocastDtypes | None:
    """The dtypes of a call on ``input`` under autocast, or None when autocast is off for its device (or the
    device has no autocast, or the dtypes are not ones autocast samples: the usual checks then apply).

    Args:
        input: The input to sample.
        grid_dtype: The dtype of a given grid (:func:`~torchstn.sampling.sample`); default: the grid is built, in
            ``work``.
    """
    device_type = input.device.type
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return None
    if not input.is_floating_point() or (grid_dtype is not None and not grid_dtype.is_floating_point):
        return None
    work = torch.float64 if input.dtype == torch.float64 else torch.float32
    sample = _grid_sample_dtype(input, work if grid_dtype is None else grid_dtype)
    return None if sample is None else AutocastDtypes(device_type, work, sample)


def to_work_dtype(t: Tensor, amp: AutocastDtypes) -> Tensor:
    """``t`` in ``amp.work`` if it is float16 or bfloat16 (what autocast would cast), else unchanged."""
    return t.to(amp.work) if isinstance(t, Tensor) and t.dtype in NARROW else t


def _grid_sample_dtype(input: Tensor, grid_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype ``F.grid_sample`` computes in under the current autocast for ``input`` and a grid of
    ``grid_dtype``, or None if it refuses them."""
    device_type = input.device.type
    key = (device_type, torch.get_autocast_dtype(device_type), input.dtype, grid_dtype)
    if key in _SAMPLE_DTYPES:
        return _SAMPLE_DTYPES[key]
    if capturing_graph() or torch.compiler.is_compiling():  # no probe inside a traced graph: PyTorch 2.x's policy
        if device_type == "cuda":
            return torch.promote_types(input.dtype, grid_dtype)
        return torch.float32 if {input.dtype, grid_dtype} <= {torch.float32, *NARROW} else None
    got: torch.dtype | None
    with torch.no_grad():
        one = torch.zeros(1, 1, 1, 1, device=input.device, dtype=input.dtype)
        try:
            grid = torch.zeros(1, 1, 1, 2, device=input.device, dtype=grid_dtype)
            got = F.grid_sample(one, grid, align_corners=False).dtype
        except RuntimeError:
            got = None
    _SAMPLE_DTYPES[key] = got
    return got
