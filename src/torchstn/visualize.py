"""What the transformers learnt: sampling outlines on the inputs, outputs beside them, animations and curves.

Pictures are drawn with Pillow; training curves with matplotlib's object API (``matplotlib.figure.Figure`` on an
Agg canvas), so nothing here touches the global ``pyplot`` state. Every file is written atomically (a temporary
file, then ``os.replace``).

Convention:
    Transforms map normalised target (output) points to normalised source (input) points, ``(x, y)`` order (see
    :mod:`torchstn.geometry`). :func:`grid_outline` returns **pixel** coordinates with pixel ``i``'s centre at
    ``i`` (as :func:`torchstn.geometry.pixel_from_normalized`), so the border of a 28x28 image runs from -0.5 to
    27.5. :func:`attention_boxes` returns boxes in the *edge* convention of the data sets' ``meta["boxes"]``
    (pixel ``i`` covers ``[i, i + 1)``, the whole image is ``(0, 0, W, H)``), so they compare directly.

Typical use during training::

    anim = EpochAnimator()
    for epoch in range(epochs):
        ...
        anim.add(model, fixed_batch, epoch)
        save_transformer_pictures(model, fixed_batch, run_dir / "pictures", epoch=epoch)
    anim.save(run_dir / "transformers.gif")
    plot_curves(rows, run_dir / "curves.png")
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from torchstn._checks import check_size, check_tensor
from torchstn.errors import DTypeError, OptionError, ShapeError
from torchstn.geometry import pixel_from_normalized
from torchstn.modules import SerialSpatialTransformer, SpatialTransformer
from torchstn.transforms import Affine, MatrixTransform, Projective, Transform
from torchstn.viz import sheet

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


# --- capture ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerRecord:
    """What one spatial transformer did in one forward pass (tensors detached, on the CPU).

    Attributes:
        name: Qualified module name in the model (``""`` when the model itself is the transformer).
        input: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) tensor the transformer sampled.
        output: Its output as returned: ``(B, C, H', W')``, ``(B, N, C, H', W')`` (stacked heads) or
            ``(B, N*C, H', W')`` (concatenated heads).
        params: ``(B, P)`` or ``(B, N, P)`` parameters.
        transform: The transform family the parameters belong to.
        align_corners: The coordinate convention the transformer sampled with.
    """

    name: str
    input: Tensor
    output: Tensor
    params: Tensor
    transform: Transform
    align_corners: bool = False

    @property
    def num_heads(self) -> int:
        """Number of transforms applied to each sample (``N``; 1 for ``(B, P)`` params)."""
        return int(self.params.shape[1]) if self.params.ndim == 3 else 1

    @property
    def src_size(self) -> tuple[int, ...]:
        """Spatial size of the input, ``(H, W)`` (or ``(D, H, W)``)."""
        return tuple(int(s) for s in self.input.shape[2:])

    @property
    def head_outputs(self) -> Tensor:
        """The output split per head: ``(B, N, C, H', W')`` (``N = 1`` for a single transform)."""
        b, n = self.output.shape[0], self.num_heads
        spatial = self.input.ndim - 2
        if self.params.ndim == 2:
            return self.output[:, None]
        if self.output.ndim == self.input.ndim + 1:  # stacked
            return self.output
        return self.output.reshape(b, n, -1, *self.output.shape[self.output.ndim - spatial :])  # concatenated


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    x = args[0] if args else kwargs["x"]
    assert isinstance(x, Tensor)
    return x


def _on_transformer(
    name: str,
    records: list[TransformerRecord],
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
) -> None:
    assert isinstance(module, SpatialTransformer)
    out, params = (output[0], output[1]) if isinstance(output, tuple) else (output, module.last_params)
    assert isinstance(out, Tensor) and isinstance(params, Tensor)
    records.append(
        TransformerRecord(
            name=name,
            input=_first_input(args, kwargs).detach().cpu(),
            output=out.detach().cpu(),
            params=params.detach().cpu(),
            transform=module.transform,
            align_corners=module.align_corners,
        )
    )


def _on_composed_chain(
    name: str,
    records: list[TransformerRecord],
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
) -> None:
    """A ``compose=True`` chain never calls its stages' ``forward``: record the chain as one composed matrix."""
    assert isinstance(module, SerialSpatialTransformer)
    x = _first_input(args, kwargs)
    stages = [st for st in module.stages if isinstance(st, SpatialTransformer)]
    out = output[0] if isinstance(output, tuple) else output
    src_size = tuple(x.shape[2:])
    total: Tensor | None = None
    for st in stages:
        assert isinstance(st.transform, MatrixTransform) and st.last_params is not None
        m = st.transform.matrix(st.last_params, src_size=src_size)
        total = m if total is None else total @ m  # (B, 3, 3) src_from_dst of the chain
    assert total is not None
    if any(getattr(st.transform, "projective", False) for st in stages):
        transform: Transform = Projective()
        params = (total / total[:, 2:, 2:]).reshape(-1, 9)[:, :8]
    else:
        transform = Affine()
        params = total[:, :2].reshape(-1, 6)
    records.append(
        TransformerRecord(
            name=name,
            input=x.detach().cpu(),
            output=out.detach().cpu(),
            params=params.detach().cpu(),
            transform=transform,
            align_corners=stages[-1].align_corners,
        )
    )


def capture(model: nn.Module, x: Tensor) -> list[TransformerRecord]:
    """Run ``model`` on ``x`` and record what every spatial transformer inside it did.

    The model runs in eval mode under ``torch.no_grad``; every submodule's training flag is restored afterwards
    and the hooks are removed, also when the forward pass raises. Each :class:`SpatialTransformer` call gives one
    record (a transformer called twice gives two, in call order). A
    :class:`~torchstn.modules.SerialSpatialTransformer` with ``compose=True`` never calls its stages' ``forward``,
    so it gives one record for the whole chain: the composed matrix as :class:`~torchstn.transforms.Affine` (or
    :class:`~torchstn.transforms.Projective`) parameters, with the chain's input and final output.

    Args:
        model: Any module containing spatial transformers (or a transformer itself).
        x: The model's input, e.g. ``(B, C, H, W)``.

    Returns:
        The records, in the order the transformers ran.

    Example:
        >>> from torchstn.modules import conv_localisation
        >>> st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
        >>> [rec] = capture(nn.Sequential(st), torch.rand(2, 1, 28, 28))
        >>> rec.name, tuple(rec.params.shape), tuple(rec.head_outputs.shape)
        ('0', (2, 6), (2, 1, 1, 28, 28))
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise DTypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    records: list[TransformerRecord] = []
    modes = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, SpatialTransformer):
                hook = partial(_on_transformer, name, records)
            elif isinstance(module, SerialSpatialTransformer) and module.compose:
                hook = partial(_on_composed_chain, name, records)
            else:
                continue
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return records


# --- geometry of the pictures -----------------------------------------------------------------------------------


def _extent(n: int, align_corners: bool) -> float:
    """Normalised coordinate of the outer edge of an axis of ``n`` output pixels."""
    return n / (n - 1) if align_corners and n > 1 else 1.0


def grid_outline(
    transform: Transform,
    params: Tensor,
    src_size: Sequence[int],
    align_corners: bool = False,
    mesh: int | None = None,
    output_size: Sequence[int] | None = None,
    samples: int = 33,
) -> list[Tensor]:
    """Where the output image's border (or a mesh over it) lands in the input, in input pixel coordinates.

    The border of the output is its outer pixel edges: normalised ``±1`` with ``align_corners=False``,
    ``±n/(n-1)`` with ``align_corners=True`` (which needs the output size). Mapped through the transform it is the
    region the transformer samples: a quadrilateral for matrix families, a curved patch for a thin-plate spline. A
    mesh of ``k`` horizontal and ``k`` vertical lines of the output, evenly spaced from border to border, shows how
    a non-linear warp bends the plane.

    Convention:
        Points are ``(x, y)`` in source pixels with pixel ``i``'s centre at ``i``: the identity's outline of a
        28x28 input has corners ``(-0.5, -0.5)`` and ``(27.5, 27.5)``.

    Args:
        transform: A 2D transform family.
        params: ``(B, P)`` (or ``(..., P)``, e.g. ``(B, N, P)`` for several heads) parameters.
        src_size: Input size ``(H, W)``.
        align_corners: The convention the transformer samples with.
        mesh: Lines per direction. ``0``: the border only (one closed polyline); ``k >= 2``: ``k`` horizontal
            then ``k`` vertical lines, the outermost being the border; ``None``: ``0`` for matrix families and
            ``7`` for the others.
        output_size: Output size ``(H', W')``; default ``src_size``. Only used with ``align_corners=True``.
        samples: Points per line (per side of the border) for non-affine families, whose lines bend.

    Returns:
        A list of polylines, each ``(..., L, 2)`` with the leading dimensions of ``params``.

    Example:
        >>> from torchstn.transforms import Attention
        >>> [square] = grid_outline(Attention(), torch.tensor([[0.5, 0.0, 0.0]]), (28, 28))
        >>> square[0]
        tensor([[ 6.5000,  6.5000],
                [20.5000,  6.5000],
                [20.5000, 20.5000],
                [ 6.5000, 20.5000],
                [ 6.5000,  6.5000]])
    """
    if not isinstance(transform, Transform) or transform.ndim != 2:
        raise OptionError(f"transform: expected a 2D torchstn.transforms.Transform, got {transform!r}")
    check_tensor(params, "params", f"*,{transform.num_params}")
    src = check_size(src_size, "src_size", 2)
    out = src if output_size is None else check_size(output_size, "output_size", 2)
    if mesh is None:
        mesh = 0 if isinstance(transform, MatrixTransform) else 7
    if isinstance(mesh, bool) or not isinstance(mesh, int) or mesh == 1 or mesh < 0:
        raise OptionError(f"mesh: expected 0 (border only) or at least 2 lines, got {mesh!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise OptionError(f"samples: expected an int of at least 2, got {samples!r}")
    n = 2 if isinstance(transform, MatrixTransform) else samples  # lines stay lines under a matrix
    ex, ey = _extent(out[1], align_corners), _extent(out[0], align_corners)
    dev, dt = params.device, params.dtype
    lines: list[Tensor] = []
    if mesh == 0:
        corners = torch.tensor([[-ex, -ey], [ex, -ey], [ex, ey], [-ex, ey], [-ex, -ey]], device=dev, dtype=dt)
        if isinstance(transform, MatrixTransform):
            lines.append(corners)
        else:
            t = torch.linspace(0.0, 1.0, samples, device=dev, dtype=dt)[:-1, None]  # (S-1, 1)
            a, b = corners[:-1, None], corners[1:, None]  # (4, 1, 2)
            sides = (a + t * (b - a)).reshape(-1, 2)  # (4 (S-1), 2)
            lines.append(torch.cat((sides, corners[:1])))  # closed
    else:
        along_x = torch.linspace(-ex, ex, n, device=dev, dtype=dt)
        along_y = torch.linspace(-ey, ey, n, device=dev, dtype=dt)
        for v in torch.linspace(-ey, ey, mesh, device=dev, dtype=dt):
            lines.append(torch.stack((along_x, v.expand(n)), dim=-1))  # horizontal, (n, 2)
        for u in torch.linspace(-ex, ex, mesh, device=dev, dtype=dt):
            lines.append(torch.stack((u.expand(n), along_y), dim=-1))  # vertical, (n, 2)
    lead = params.shape[:-1]
    flat = params.reshape(-1, transform.num_params)  # (B', P)
    pts = torch.cat(lines)[None].expand(flat.shape[0], -1, -1)  # (B', L_total, 2)
    src_pts = transform.map_points(flat, pts, src_size=src)  # normalised source points
    px_from_norm = pixel_from_normalized(src, align_corners, device=params.device, dtype=params.dtype)
    px = src_pts @ px_from_norm[:2, :2].T + px_from_norm[:2, 2]  # (B', L_total, 2)
    polylines, start = [], 0
    for line in lines:
        polylines.append(px[:, start : start + len(line)].reshape(*lead, len(line), 2))
        start += len(line)
    return polylines


def attention_boxes(
    params: Tensor,
    image_size: Sequence[int],
    align_corners: bool = False,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """The boxes that attention transforms ``(s, tx, ty)`` crop, in pixels.

    The output's outer edges, normalised ``±1`` with ``align_corners=False``, land on
    ``[tx - s, tx + s] x [ty - s, ty + s]`` of the input: the box is what the output shows, the same region as
    :func:`grid_outline`'s square.

    Convention:
        Boxes are ``(x0, y0, x1, y1)`` in the *edge* convention of the data sets' ``meta["boxes"]``: pixel ``i``
        covers ``[i, i + 1)`` and the whole image is ``(0, 0, W, H)``, so a box compares directly (IoU) with the
        true box and :func:`torchstn.viz.sheet` draws it. (:func:`grid_outline`'s pixel-centre coordinates are
        half a pixel lower.)

    Args:
        params: ``(B, 3)`` (or ``(..., 3)``) attention parameters.
        image_size: Input size ``(H, W)``.
        align_corners: The convention the transformer samples with.
        output_size: Output size ``(H', W')``; default ``image_size``. Only used with ``align_corners=True``,
            where the output's edges lie half an output pixel beyond ``±1``.

    Returns:
        ``(B, 4)`` (or ``(..., 4)``) boxes.

    Example:
        >>> attention_boxes(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.5, -0.5]]), (84, 84))
        tensor([[ 0.,  0., 84., 84.],
                [21., 21., 63., 63.],
                [42.,  0., 84., 42.]])
    """
    check_tensor(params, "params", "*,3")
    h, w = check_size(image_size, "image_size", 2)
    ho, wo = (h, w) if output_size is None else check_size(output_size, "output_size", 2)
    s, tx, ty = params.unbind(-1)

    def edge(u: Tensor, n: int) -> Tensor:
        """Normalised source coordinate -> pixel-edge coordinate along an axis of ``n`` pixels."""
        return (u + 1.0) * (n - 1) / 2 + 0.5 if align_corners else (u + 1.0) * n / 2

    sx, sy = s * _extent(wo, align_corners), s * _extent(ho, align_corners)  # half-extents of the window
    return torch.stack((edge(tx - sx, w), edge(ty - sy, h), edge(tx + sx, w), edge(ty + sy, h)), dim=-1)


# --- drawing ----------------------------------------------------------------------------------------------------


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


def _to_rgb(x: Tensor, lo: float, hi: float) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` uint8: 1 channel grey, 2 red/green, 3 RGB, more: the channels' mean."""
    x = torch.nan_to_num(x.float())
    c, h, w = x.shape
    if c == 1:
        x = x.expand(3, h, w)
    elif c == 2:
        x = torch.cat((x, torch.zeros(1, h, w)))
    elif c > 3:
        x = x.mean(0, keepdim=True).expand(3, h, w)
    x = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (x.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _tile(x: Tensor, lo: float, hi: float, zoom: int) -> Image.Image:
    img = Image.fromarray(_to_rgb(x, lo, hi))
    return img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)


def _colour(k: int) -> RGB:
    return HEAD_COLOURS[k % len(HEAD_COLOURS)]


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name}: expected a positive int, got {value!r}")
    return value


def draw_record(
    record: TransformerRecord,
    max_items: int = 16,
    zoom: int = 3,
    ncols: int = 4,
    title: str | None = None,
    mesh: int | None = None,
    margin: float = 0.25,
) -> Image.Image:
    """Draw what a transformer did: each input with its sampling outline, and each head's output beside it.

    Each sample is one cell: the input (1 channel grey, 2 red/green, 3 RGB, more: the mean over channels,
    normalised) on a grey margin so that outlines reaching past the image stay visible, with the outline of every
    head in its own colour (:data:`HEAD_COLOURS`, see :func:`grid_outline`), then each head's output framed in the
    same colour. Outputs share their input's intensity scale; an output smaller than its input is enlarged by an
    integer factor so that it is about as tall. Upscaling is nearest-neighbour.

    Args:
        record: From :func:`capture`; a 2D transformer.
        max_items: Draw at most this many samples (the first ones).
        zoom: Integer upscaling of the input.
        ncols: Cells per row.
        title: Text on a strip above the cells; default the record's name. ``""`` for no strip.
        mesh: As in :func:`grid_outline` (default: border for matrix families, a 7x7 mesh otherwise).
        margin: Grey border around each input, as a fraction of its larger side.

    Returns:
        An RGB Pillow image.

    Example:
        >>> from torchstn.modules import conv_localisation
        >>> st = SpatialTransformer(conv_localisation((1, 28, 28), Affine()), Affine())
        >>> [rec] = capture(st, torch.rand(8, 1, 28, 28))
        >>> draw_record(rec, max_items=8, zoom=2, ncols=4).size
        (604, 194)
    """
    if not isinstance(record, TransformerRecord):
        raise DTypeError(f"record: expected a TransformerRecord, got {type(record).__name__}")
    if record.input.ndim != 4 or record.transform.ndim != 2:
        raise ShapeError(
            f"record: expected a 2D transformer with a (B, C, H, W) input, got input shape "
            f"{tuple(record.input.shape)} and {record.transform!r}"
        )
    max_items, zoom, ncols = (
        _check_positive(v, k) for k, v in {"max_items": max_items, "zoom": zoom, "ncols": ncols}.items()
    )
    if not 0 <= margin <= 4:
        raise OptionError(f"margin: expected a fraction in [0, 4], got {margin!r}")
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
        canvas.paste(panel, (x0, y0))
        ox = x0 + panel_w + pad
        for k in range(n_heads):
            tile = _tile(outs[i, k], l_i, h_i, zoom_out)
            draw.rectangle([ox, y0, ox + tile.width + 1, y0 + tile.height + 1], outline=_colour(k))
            canvas.paste(tile, (ox + 1, y0 + 1))
            ox += tile.width + 2 + pad
    return canvas


def _save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _file_stems(records: Sequence[TransformerRecord]) -> list[str]:
    """File-safe, unique stems from module names (``loc.st`` -> ``loc_st``; repeated calls get ``_call1``...)."""
    stems: list[str] = []
    seen: dict[str, int] = {}
    for rec in records:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", rec.name).strip("_") or "transformer"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_call{count}")
    return stems


def _drawable(records: Sequence[TransformerRecord]) -> list[tuple[str, TransformerRecord]]:
    return [(s, r) for s, r in zip(_file_stems(records), records, strict=True) if r.input.ndim == 4]


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
        pred_boxes: ``(B, 4)`` predicted boxes ``(x0, y0, x1, y1)``, e.g. from :func:`attention_boxes`.
        true_boxes: ``(B, 4)`` true boxes, in the same (edge) convention.
        labels: Optional caption per image.
        ncols: Images per row.
        zoom: Integer upscaling.

    Returns:
        An RGB Pillow image (see :func:`torchstn.viz.sheet`).
    """
    dims = check_tensor(images, "images", "B,C,H,W", floating=False)
    check_tensor(pred_boxes, "pred_boxes", "B,4", dims=dims)
    if true_boxes is not None:
        check_tensor(true_boxes, "true_boxes", "B,4", dims=dims, floating=False)
    return sheet(images, labels, boxes=true_boxes, pred_boxes=pred_boxes, ncols=ncols, zoom=zoom)


# --- animation --------------------------------------------------------------------------------------------------


class EpochAnimator:
    """Collects one picture per epoch of each transformer and writes them as animated GIFs.

    Call :meth:`add` with the same fixed inputs after every epoch, then :meth:`save`.

    Args:
        max_items, zoom, ncols, mesh, margin: As in :func:`draw_record`.

    Example:
        >>> from torchstn.modules import conv_localisation
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
        _check_positive(duration_ms, "duration_ms")
        if not self.frames:
            raise OptionError("EpochAnimator.save: no frames; call add() first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, frames in self.frames.items():
            target = path if len(self.frames) == 1 else path.with_name(f"{path.stem}_{stem}{path.suffix or '.gif'}")
            tmp = target.with_name(target.name + ".tmp")
            first, *rest = frames
            first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
            os.replace(tmp, target)
            written.append(target)
        return written


# --- training curves ---------------------------------------------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_curves(
    log_rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Plot training curves from JSON-lines log rows into a PNG.

    Every numeric key is plotted against ``epoch`` (or the row index): keys containing ``loss`` on one panel,
    ``err`` / ``acc`` on another (in percent, as logged), ``lr`` on a log-scaled panel and any other numeric key
    on a last one; empty panels are left out. Rows that lack a key leave a gap.

    Args:
        log_rows: One mapping per logged epoch, e.g. ``{"epoch": 3, "train_loss": 0.2, "test_error": 1.4}``.
        path: PNG to write (atomically; folders are created).
        title: Figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(log_rows, Mapping) or not all(isinstance(r, Mapping) for r in log_rows):
        raise DTypeError("log_rows: expected a sequence of mappings (one per logged epoch)")
    if len(log_rows) == 0:
        raise ShapeError("log_rows: expected at least one row")
    keys = sorted({k for r in log_rows for k, v in r.items() if _is_number(v)})
    step = "epoch" if "epoch" in keys else None
    xs = [float(r[step]) if step and _is_number(r.get(step)) else float(i) for i, r in enumerate(log_rows)]  # type: ignore[arg-type]
    groups: dict[str, list[str]] = {"loss": [], "error (%)": [], "learning rate": [], "other": []}
    for k in keys:
        if k == step:
            continue
        low = k.lower()
        if "loss" in low:
            groups["loss"].append(k)
        elif "err" in low or "acc" in low:
            groups["error (%)"].append(k)
        elif low == "lr" or low.endswith("_lr") or "learning_rate" in low:
            groups["learning rate"].append(k)
        else:
            groups["other"].append(k)
    panels = [(name, ks) for name, ks in groups.items() if ks]
    if not panels:
        raise ShapeError("log_rows: no numeric values to plot besides the epoch")
    fig = Figure(figsize=(5.0 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ks) in zip(axes, panels, strict=True):
        for k in ks:
            ys = [float(v) if _is_number(v := r.get(k)) else math.nan for r in log_rows]  # type: ignore[arg-type]
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=k)
        if name == "learning rate" and all(
            float(v) > 0  # type: ignore[arg-type]
            for r in log_rows
            for k in ks
            if _is_number(v := r.get(k))
        ):
            ax.set_yscale("log")
        ax.set_xlabel(step or "row")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=fig.dpi)
    os.replace(tmp, out)
    return out
