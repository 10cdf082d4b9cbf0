"""Pictures: sheets of samples with labels and boxes, written as PNG with Pillow."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["save_sheet", "sheet"]


def _to_rgb(images: Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 or float in [0, 1] -> (N, H, W, 3) uint8; 2 channels show as red and green."""
    x = images.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    n, c, h, w = x.shape
    if c == 1:
        x = x.expand(n, 3, h, w)
    elif c == 2:
        x = torch.cat((x, torch.zeros(n, 1, h, w)), 1)
    else:
        x = x[:, :3]
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def sheet(
    images: Tensor,
    labels: Sequence[object] | Tensor | None = None,
    boxes: Tensor | None = None,
    pred_boxes: Tensor | None = None,
    ncols: int = 8,
    zoom: int = 2,
) -> Image.Image:
    """A grid of images with an optional caption under each and optional boxes on them.

    Args:
        images: ``(N, C, H, W)``, uint8 or float in [0, 1]; 1 channel is grey, 2 show as red and green, 3 as RGB.
        labels: ``N`` captions.
        boxes: ``(N, 4)`` true boxes ``(x0, y0, x1, y1)`` in pixels, drawn in green.
        pred_boxes: ``(N, 4)`` predicted boxes, drawn in red.
        ncols: Images per row.
        zoom: Integer upscaling, so small digits stay visible.

    Returns:
        A Pillow image.
    """
    rgb = _to_rgb(images)
    n, h, w, _ = rgb.shape
    caption = 12 if labels is not None else 0
    pad = 2
    rows = (n + ncols - 1) // ncols
    cell_w, cell_h = w * zoom + pad, h * zoom + pad + caption
    canvas = Image.new("RGB", (ncols * cell_w + pad, rows * cell_h + pad), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x0, y0 = pad + (i % ncols) * cell_w, pad + (i // ncols) * cell_h
        tile = Image.fromarray(rgb[i]).resize((w * zoom, h * zoom), Image.Resampling.NEAREST)
        canvas.paste(tile, (x0, y0))
        for bx, colour in ((boxes, (0, 220, 0)), (pred_boxes, (255, 60, 60))):
            if bx is not None:
                b = [float(v) * zoom for v in bx[i]]
                draw.rectangle([x0 + b[0], y0 + b[1], x0 + b[2] - 1, y0 + b[3] - 1], outline=colour)
        if labels is not None:
            text = str(labels[i].item() if isinstance(labels, Tensor) else labels[i])
            draw.text((x0 + 1, y0 + h * zoom), text, fill=(255, 255, 255))
    return canvas


def save_sheet(path: str | os.PathLike[str], images: Tensor, **kwargs: object) -> Path:
    """Write :func:`sheet` to ``path`` (PNG), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sheet(images, **kwargs).save(tmp, format="PNG")  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path
