"""Draw: sheets of samples with captions and boxes, and what a transformer did (outlines on inputs, outputs beside).

Pictures are drawn with Pillow and written atomically (:mod:`torchstn._io`). The geometry they show comes from
the geometry layer: :func:`~torchstn.transforms._outline.grid_outline` (pixel-centre coordinates) for outlines and
:func:`torchstn.geometry.attention_boxes` (pixel-edge coordinates, as the data sets' boxes) for boxes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from torchstn._checks import check_bool, check_instance, check_int, check_number, check_positive_int, check_tensor
from torchstn._io import atomic_write
from torchstn.data.svhn import NO_DIGIT
from torchstn.errors import DTypeError, ShapeError
from torchstn.geometry import pixel_from_normalized
from torchstn.transforms import ThinPlateSpline, Transform
from torchstn.transforms._outline import grid_outline
from torchstn.viz.capture import TransformerRecord, _drawable, capture

__all__ = [
    "HEAD_COLOURS",
    "control_point_pixels",
    "draw_boxes",
    "draw_record",
    "save_sheet",
    "save_transformer_pictures",
    "sheet",
]

RGB = tuple[int, int, int]

#: Outline (and output frame) colour of each head, in order; repeats after the last.
HEAD_COLOURS: tuple[RGB, ...] = (
    (255, 64, 64),
    (64, 160, 255),
    (255, 200, 0),
    (200, 80, 255),
    (0, 220, 200),
    (255, 128, 0),
    (150, 255, 64),
    (255, 96, 200),
)

_BACKGROUND: RGB = (40, 40, 40)  # between cells
_MARGIN: RGB = (90, 90, 90)  # around an input, where an outline may reach beyond the image
_HEADER = 14  # pixels of the title strip


def _to_rgb(images: Tensor, lo: Tensor | float = 0.0, hi: Tensor | float = 1.0) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, H, W, 3)`` uint8, mapping ``[lo, hi]`` (per sample or shared) to ``[0, 255]``.

    uint8 input is first scaled to [0, 1]. 1 channel shows grey, 2 as red and green, 3 as RGB, more as the mean over
    channels; NaN shows as 0, values outside ``[lo, hi]`` are clipped.
    """
    x = images.detach().cpu()
    x = torch.nan_to_num(x.float() / 255.0 if x.dtype == torch.uint8 else x.float())
    n, c, h, w = x.shape
    if c == 1:
        x = x.expand(n, 3, h, w)
    elif c == 2:
        x = torch.cat((x, torch.zeros(n, 1, h, w)), 1)
    elif c > 3:
        x = x.mean(1, keepdim=True).expand(n, 3, h, w)
    lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(-1, 1, 1, 1)  # (N or 1, 1, 1, 1)
    hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(-1, 1, 1, 1)
    x = ((x - lo_t) / (hi_t - lo_t)).clamp(0.0, 1.0)
    return (x.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)


def _display_range(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(lo, hi)`` that map ``(B, C, H, W)`` to [0, 1]: the data's own range for feature maps,
    ``[0, 1]`` (widened to hold the data) for images."""
    x = x.float()
    if x.shape[1] > 3:
        m = x.mean(1).flatten(1)  # (B, H*W)
        lo, hi = m.amin(1), m.amax(1)
    else:
        flat = x.flatten(1)
        lo, hi = flat.amin(1).clamp(max=0.0), flat.amax(1).clamp(min=1.0)
    return lo, torch.where(hi > lo, hi, lo + 1.0)


def _tile(x: Tensor, lo: float, hi: float, zoom: int) -> Image.Image:
    img = Image.fromarray(_to_rgb(x[None], lo, hi)[0])
    return img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)


def _colour(k: int) -> RGB:
    return HEAD_COLOURS[k % len(HEAD_COLOURS)]


def _caption(label: object) -> str:
    """A label as text; a row of class indices (a digit sequence) as its digits, the "no digit" padding left out."""
    if isinstance(label, Tensor):
        if label.numel() == 1:
            return str(label.item())
        return "".join(str(v) for v in label.flatten().tolist() if v != NO_DIGIT)
    return str(label)


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
        images: ``(N, C, H, W)``, uint8 or float in [0, 1]; 1 channel is grey, 2 show as red and green, 3 as RGB,
            more as the mean over channels.
        labels: ``N`` captions; a ``(N, D)`` tensor of digit sequences (SVHN, ``text_strips``) is captioned with
            each row's digits, the "no digit" class 10 left out.
        boxes: ``(N, 4)`` true boxes ``(x0, y0, x1, y1)`` in pixels, drawn in green.
        pred_boxes: ``(N, 4)`` predicted boxes, drawn in red.
        ncols: Images per row.
        zoom: Integer upscaling, so small digits stay visible.

    Returns:
        A Pillow image.
    """
    dims = check_tensor(images, "images", "N,C,H,W", floating=False)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DTypeError(f"images: expected uint8 or floating point in [0, 1], got {images.dtype}")
    if labels is not None and len(labels) != dims["N"]:
        raise ShapeError(f"labels: expected {dims['N']} captions (one per image), got {len(labels)}")
    for name, bx in (("boxes", boxes), ("pred_boxes", pred_boxes)):
        if bx is not None:
            check_tensor(bx, name, "N,4", dims=dims, floating=False)
    ncols, zoom = check_positive_int(ncols, "ncols"), check_positive_int(zoom, "zoom")
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
            text = _caption(labels[i])
            draw.text((x0 + 1, y0 + h * zoom), text, fill=(255, 255, 255))
    return canvas


def _save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def save_sheet(path: str | os.PathLike[str], images: Tensor, **kwargs: object) -> Path:
    """Write :func:`sheet` to ``path`` (PNG), atomically; returns the path."""
    return _save_png(sheet(images, **kwargs), Path(path))  # type: ignore[arg-type]


def control_point_pixels(
    transform: Transform, params: Tensor, src_size: Sequence[int], align_corners: bool = False
) -> Tensor | None:
    """Where a thin-plate spline's control points land in its input, in input pixels; None for other families.

    A :class:`~torchstn.transforms.ThinPlateSpline`'s parameters are the **source** positions of its control
    points (normalised ``(x, y)``), so this is those positions converted to pixels, in the pixel-centre convention
    of :func:`grid_outline` (pixel ``i``'s centre at ``i``).

    Args:
        transform: The transform family.
        params: ``(..., 2K)`` parameters (e.g. ``(B, N, 2K)`` for several heads).
        src_size: Input size ``(H, W)``.
        align_corners: The convention the transformer samples with.

    Returns:
        ``(..., K, 2)`` pixel coordinates, or None when ``transform`` is not a thin-plate spline.

    Example:
        >>> tps = ThinPlateSpline.fiducials(k=4, margin=0.0)
        >>> control_point_pixels(tps, tps.identity_params(1), (10, 20))[0]
        tensor([[-0.5000, -0.5000],
                [19.5000, -0.5000],
                [-0.5000,  9.5000],
                [19.5000,  9.5000]])
    """
    if not isinstance(transform, ThinPlateSpline):
        return None
    check_tensor(params, "params", f"*,{transform.num_params}")
    m = pixel_from_normalized(src_size, align_corners, device=params.device, dtype=params.dtype)  # (3, 3)
    pts = params.reshape(*params.shape[:-1], transform.num_controls, 2)
    return pts @ m[:2, :2].T + m[:2, 2]


def draw_record(
    record: TransformerRecord,
    max_items: int = 16,
    zoom: int = 3,
    ncols: int = 4,
    title: str | None = None,
    mesh: int | None = None,
    margin: float = 0.25,
    points: bool = True,
) -> Image.Image:
    """Draw what a transformer did: each input with its sampling outline, and each head's output beside it.

    Each sample is one cell: the input (1 channel grey, 2 red/green, 3 RGB, more: the mean over channels,
    normalised) on a grey margin so that outlines reaching past the image stay visible, with the outline of every
    head in its own colour (:data:`HEAD_COLOURS`, see :func:`grid_outline`), then each head's output framed in the
    same colour. For a thin-plate spline the control points are drawn too, as dots in the head's colour ringed in
    white, where each lands in the input (its source position, :func:`control_point_pixels`). Outputs share
    their input's intensity scale; an output smaller than its input is enlarged by an
    integer factor so that it is about as tall. Upscaling is nearest-neighbour.

    Args:
        record: From :func:`capture`; a 2D transformer.
        max_items: Draw at most this many samples (the first ones).
        zoom: Integer upscaling of the input.
        ncols: Cells per row.
        title: Text on a strip above the cells; default the record's name. ``""`` for no strip.
        mesh: As in :func:`grid_outline` (default: border for matrix families, a 7x7 mesh otherwise).
        margin: Grey border around each input, as a fraction of its larger side.
        points: Draw a thin-plate spline's control points (ignored for other families).

    Returns:
        An RGB Pillow image.

    Example:
        >>> from torchstn.modules import SpatialTransformer, conv_localisation
        >>> from torchstn.transforms import Affine
        >>> st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
        >>> [rec] = capture(st, torch.rand(8, 1, 28, 28))
        >>> draw_record(rec, max_items=8, zoom=2, ncols=4).size
        (604, 194)
    """
    check_instance(record, "record", TransformerRecord, "a TransformerRecord")
    if record.input.ndim != 4 or record.transform.ndim != 2:
        raise ShapeError(
            f"record: expected a 2D transformer with a (B, C, H, W) input, got input shape "
            f"{tuple(record.input.shape)} and {record.transform!r}"
        )
    max_items, zoom, ncols = (
        check_positive_int(v, k) for k, v in {"max_items": max_items, "zoom": zoom, "ncols": ncols}.items()
    )
    margin = check_number(margin, "margin", low=0.0, high=4.0)
    check_bool(points, "points")
    x = record.input.float()
    x = x / 255.0 if record.input.dtype == torch.uint8 else x
    b = min(int(x.shape[0]), max_items)
    h, w = record.src_size
    outs = record.head_outputs[:b].float()  # (b, N, C, H', W')
    outs = outs / 255.0 if record.output.dtype == torch.uint8 else outs
    n_heads, (ho, wo) = outs.shape[1], outs.shape[-2:]
    zoom_out = zoom * max(1, h // ho)
    params = record.params[:b].reshape(b, n_heads, -1).float()  # (b, N, P)
    polylines = grid_outline(
        record.transform, params, (h, w), record.align_corners, mesh, output_size=(ho, wo)
    )  # each (b, N, L, 2)
    dots = control_point_pixels(record.transform, params, (h, w), record.align_corners) if points else None
    lo, hi = _display_range(x[:b])
    m = round(margin * max(h, w))
    panel_w, panel_h = (w + 2 * m) * zoom, (h + 2 * m) * zoom
    pad = 4
    cell_w = panel_w + n_heads * (wo * zoom_out + 2 + pad) + pad
    cell_h = max(panel_h, ho * zoom_out + 2) + pad
    cols = min(ncols, b)
    rows = math.ceil(b / cols)
    title = (record.name or "transformer") if title is None else title
    top = _HEADER if title else 0
    canvas = Image.new("RGB", (cols * cell_w + pad, top + rows * cell_h + pad), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 1), title, fill=(255, 255, 255))
    width = 1 if zoom < 4 else 2
    for i in range(b):
        x0, y0 = pad + (i % cols) * cell_w, top + pad + (i // cols) * cell_h
        l_i, h_i = float(lo[i]), float(hi[i])
        panel = Image.new("RGB", (panel_w, panel_h), _MARGIN)
        panel.paste(_tile(x[i], l_i, h_i, zoom), (m * zoom, m * zoom))
        pen = ImageDraw.Draw(panel)
        for k in range(n_heads):
            for line in polylines:
                if not bool(torch.isfinite(line[i, k]).all()):  # a diverged transformer: nothing sensible to draw
                    continue
                pts = ((line[i, k] + 0.5 + m) * zoom).clamp(-1e4, 1e4).tolist()  # pixel centres -> panel pixels
                pen.line([(float(px), float(py)) for px, py in pts], fill=_colour(k), width=width)
            if dots is not None and bool(torch.isfinite(dots[i, k]).all()):
                r = max(1.5, 0.8 * zoom)
                for px, py in ((dots[i, k] + 0.5 + m) * zoom).clamp(-1e4, 1e4).tolist():
                    pen.ellipse([px - r, py - r, px + r, py + r], fill=_colour(k), outline=(255, 255, 255))
        canvas.paste(panel, (x0, y0))
        ox = x0 + panel_w + pad
        for k in range(n_heads):
            tile = _tile(outs[i, k], l_i, h_i, zoom_out)
            draw.rectangle([ox, y0, ox + tile.width + 1, y0 + tile.height + 1], outline=_colour(k))
            canvas.paste(tile, (ox + 1, y0 + 1))
            ox += tile.width + 2 + pad
    return canvas


def save_transformer_pictures(
    model: nn.Module,
    x: Tensor,
    out_dir: str | os.PathLike[str],
    epoch: int | None = None,
    **draw_kwargs: Any,
) -> list[Path]:
    """Capture the model's transformers on ``x`` and write one PNG per transformer.

    Every 2D transformer is drawn, not only those acting on the model input: the outline is computed in its own
    input's pixel frame, so it is correct on a feature map too (shown as the mean over channels). Volumetric (3D)
    transformers are skipped. Files are named after the module (``transformer.png`` for ``model.transformer``,
    ``transformer_transformers_0.png`` inside a parallel container), with ``_epoch0007`` appended when ``epoch`` is
    given.

    Args:
        model: The model.
        x: ``(B, C, H, W)`` inputs to show (a fixed batch, so pictures of different epochs compare).
        out_dir: Folder for the PNGs (created).
        epoch: Epoch number for the file names and titles.
        **draw_kwargs: Passed to :func:`draw_record` (``max_items``, ``zoom``, ``ncols``, ``mesh``, ``margin``).

    Returns:
        The written paths, in the order the transformers ran.
    """
    if epoch is not None:
        check_int(epoch, "epoch", minimum=0)
    out = Path(out_dir)
    paths = []
    for stem, rec in _drawable(capture(model, x)):
        suffix = "" if epoch is None else f"_epoch{epoch:04d}"
        label = rec.name or "transformer"
        title = label if epoch is None else f"{label}   epoch {epoch}"
        paths.append(_save_png(draw_record(rec, title=title, **draw_kwargs), out / f"{stem}{suffix}.png"))
    return paths


def draw_boxes(
    images: Tensor,
    pred_boxes: Tensor,
    true_boxes: Tensor | None = None,
    labels: Sequence[object] | Tensor | None = None,
    ncols: int = 8,
    zoom: int = 2,
) -> Image.Image:
    """A sheet of images with predicted boxes in red and true boxes in green (co-localisation).

    Args:
        images: ``(B, C, H, W)``, uint8 or float in [0, 1].
        pred_boxes: ``(B, 4)`` predicted boxes ``(x0, y0, x1, y1)``, e.g. from
            :func:`torchstn.geometry.attention_boxes`.
        true_boxes: ``(B, 4)`` true boxes, in the same (edge) convention.
        labels: Optional caption per image.
        ncols: Images per row.
        zoom: Integer upscaling.

    Returns:
        An RGB Pillow image (see :func:`sheet`).
    """
    dims = check_tensor(images, "images", "B,C,H,W", floating=False)
    check_tensor(pred_boxes, "pred_boxes", "B,4", dims=dims)
    if true_boxes is not None:
        check_tensor(true_boxes, "true_boxes", "B,4", dims=dims, floating=False)
    return sheet(images, labels, boxes=true_boxes, pred_boxes=pred_boxes, ncols=ncols, zoom=zoom)
