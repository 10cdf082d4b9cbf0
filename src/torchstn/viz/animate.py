"""Animate: one picture per epoch of each transformer, written as a looping GIF."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor, nn

from torchstn._checks import check_int, check_number, check_positive_int
from torchstn._io import atomic_write
from torchstn.errors import OptionError
from torchstn.viz.capture import _drawable, capture
from torchstn.viz.draw import draw_record

__all__ = ["EpochAnimator"]


def _save_gif(frames: list[Image.Image], duration_ms: int, path: Path) -> None:
    first, *rest = frames
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)


class EpochAnimator:
    """Collects one picture per epoch of each transformer and writes them as animated GIFs.

    Call :meth:`add` with the same fixed inputs after every epoch, then :meth:`save`.

    Args:
        max_items, zoom, ncols, mesh, margin: As in :func:`draw_record`.

    Example:
        >>> from torchstn.modules import SpatialTransformer, conv_localisation
        >>> from torchstn.transforms import Affine
        >>> st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
        >>> anim = EpochAnimator(max_items=4)
        >>> x = torch.rand(4, 1, 28, 28)
        >>> for epoch in range(3):
        ...     anim.add(st, x, epoch)
        >>> anim.num_frames
        {'transformer': 3}
    """

    def __init__(
        self, max_items: int = 8, zoom: int = 3, ncols: int = 4, mesh: int | None = None, margin: float = 0.25
    ) -> None:
        for name, value in {"max_items": max_items, "zoom": zoom, "ncols": ncols}.items():
            check_positive_int(value, name)  # checked here, not at the first add() after an epoch of training
        if mesh is not None and (check_int(mesh, "mesh") == 1 or mesh < 0):
            raise OptionError(f"mesh: expected 0 (border only) or at least 2 lines, got {mesh!r}")
        check_number(margin, "margin", low=0.0, high=4.0)
        self.draw_kwargs: dict[str, Any] = {
            "max_items": max_items,
            "zoom": zoom,
            "ncols": ncols,
            "mesh": mesh,
            "margin": margin,
        }
        self.frames: dict[str, list[Image.Image]] = {}

    @property
    def num_frames(self) -> dict[str, int]:
        """Frames collected so far, per transformer (file stem)."""
        return {k: len(v) for k, v in self.frames.items()}

    def add(self, model: nn.Module, x: Tensor, epoch: int) -> None:
        """Draw one frame per transformer for the inputs ``x`` ``(B, C, H, W)``, titled with the epoch number."""
        check_int(epoch, "epoch", minimum=0)
        for stem, rec in _drawable(capture(model, x)):
            title = f"{rec.name or 'transformer'}   epoch {epoch}"
            self.frames.setdefault(stem, []).append(draw_record(rec, title=title, **self.draw_kwargs))

    def save(self, path: str | os.PathLike[str], duration_ms: int = 500) -> list[Path]:
        """Write the animations (looping forever).

        With one transformer the GIF goes to ``path``; with several, each goes beside it as
        ``<stem>_<module>.gif``.

        Args:
            path: Where to write, e.g. ``run/transformers.gif``.
            duration_ms: How long each frame shows.

        Returns:
            The written paths.
        """
        check_positive_int(duration_ms, "duration_ms")
        if not self.frames:
            raise OptionError("EpochAnimator.save: no frames; call add() first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, frames in self.frames.items():
            target = path if len(self.frames) == 1 else path.with_name(f"{path.stem}_{stem}{path.suffix or '.gif'}")
            atomic_write(target, partial(_save_gif, frames, duration_ms))
            written.append(target)
        return written
