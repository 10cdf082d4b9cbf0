"""Deprecated name of :mod:`torchstn.viz` (kept so that ``from torchstn.visualize import ...`` keeps working).

Everything here is re-exported from :mod:`torchstn.viz`; new code should import from there.
"""

from torchstn.viz import (
    HEAD_COLOURS,
    EpochAnimator,
    TransformerRecord,
    attention_boxes,
    capture,
    draw_boxes,
    draw_record,
    grid_outline,
    plot_curves,
    save_transformer_pictures,
)

__all__ = [
    "HEAD_COLOURS",
    "EpochAnimator",
    "TransformerRecord",
    "attention_boxes",
    "capture",
    "draw_boxes",
    "draw_record",
    "grid_outline",
    "plot_curves",
    "save_transformer_pictures",
]
