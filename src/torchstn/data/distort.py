"""The paper's distorted-MNIST recipes, generated in vectorised batches with the library's own warps.

Every recipe is a frozen dataclass whose fields are its parameters, with the paper's values (Jaderberg et al.
2015, section 4.1 and appendix A.4, as reconstructed) as defaults. ``recipe.generate(source, index, seed, stream)``
returns the samples for a batch of indices; sample ``i`` depends on ``(seed, stream, i)`` alone (see
:class:`~torchstn.data._random.Draws`), so a dataset is the same whatever the batch size or process.

Images are returned as ``uint8`` (the warps are computed in float32 and rounded once), as real image datasets
are stored: caches are then exact and four times smaller. Metadata holds what was drawn (angles, scales,
offsets, matrices, boxes) so that tests and users can check or undo the distortion.

Conventions: placements are in output pixels, matrices are normalised ``src_from_dst`` (see
:mod:`torchstn.geometry`), angles are in degrees in metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
from torch import Tensor

from torchstn._checks import check_instance, check_int, check_number
from torchstn.data._random import Draws
from torchstn.data.mnist import MNISTSplit
from torchstn.data.svhn import MAX_DIGITS, NO_DIGIT
from torchstn.errors import DTypeError, OptionError
from torchstn.geometry import normalized_coords
from torchstn.sampling import sample, warp
from torchstn.transforms import Affine, Affine3D, Projective, ThinPlateSpline

__all__ = [
    "RECIPES",
    "Batch",
    "CoLocalisation",
    "Elastic",
    "MNISTAddition",
    "Projected",
    "Recipe",
    "Rotated",
    "RotatedTranslatedScaled",
    "TextStrips",
    "TranslatedCluttered",
    "Volumetric",
    "get_recipe",
]


@dataclass
class Batch:
    """Generated samples: ``images`` ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) uint8, ``labels`` ``(B,)`` int64."""

    images: Tensor
    labels: Tensor
    meta: dict[str, Tensor] = field(default_factory=dict)


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def _paste(canvas: Tensor, patches: Tensor, y0: Tensor, x0: Tensor) -> None:
    """Max-combine ``patches`` (B, h, w) into ``canvas`` (B, H, W) at integer offsets (B,), in place."""
    b, h, w = patches.shape
    rows = (y0[:, None] + torch.arange(h))[:, :, None].expand(b, h, w)  # (B, h, w)
    cols = (x0[:, None] + torch.arange(w))[:, None, :].expand(b, h, w)
    n = torch.arange(b)[:, None, None].expand(b, h, w)
    canvas[n, rows, cols] = torch.maximum(canvas[n, rows, cols], patches)


def _clutter(canvas: Tensor, source: MNISTSplit, draws: Draws, count: int, size: int, purpose: str) -> None:
    """Add ``count`` random ``size`` x ``size`` crops of random training digits at random places, in place."""
    b, hc, wc = canvas.shape
    n_src = len(source)
    digits = draws.integers(purpose + "/digit", count, n_src)  # (B, count)
    crop_at = draws.integers(purpose + "/crop", 2 * count, 28 - size + 1)  # (B, 2 count)
    place_y = draws.integers(purpose + "/place_y", count, hc - size + 1)
    place_x = draws.integers(purpose + "/place_x", count, wc - size + 1)
    ar = torch.arange(size)
    for k in range(count):
        imgs = source.images[digits[:, k]]  # (B, 28, 28)
        rows = (crop_at[:, 2 * k, None] + ar)[:, :, None]  # (B, size, 1)
        cols = (crop_at[:, 2 * k + 1, None] + ar)[:, None, :]  # (B, 1, size)
        patch = imgs[torch.arange(b)[:, None, None], rows, cols]  # (B, size, size)
        _paste(canvas, patch, place_y[:, k], place_x[:, k])


#: Per-field limits the recipes' parameters share (checked when a recipe is built): inclusive ``(low, high)``.
_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "canvas": (28, 4096),
    "clutter": (0, 1024),
    "clutter_size": (1, 28),
    "thickness": (1, 28),
    "digit": (0, 9),
    "grid": (2, 64),
    "scale": (1e-3, 1e3),
}


def _check_field(cls: str, name: str, kind: str, value: object) -> None:
    """Check one recipe parameter against its annotation (``int``, ``float``, ``tuple[float, float]``, ...)."""
    arg = f"{cls}.{name}"
    if kind.endswith("| None") and value is None:
        return
    low, high = _LIMITS.get(name, (0.0 if kind == "float" else None, None))
    if kind.startswith("tuple["):
        item = "int" if kind.startswith("tuple[int") else "float"
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise DTypeError(f"{arg}: expected a pair of {item}s, got {type(value).__name__} {value!r}")
        pair = [check_int(v, arg) if item == "int" else check_number(v, arg, low=low, high=high) for v in value]
        if item == "int" and any((low is not None and v < low) or (high is not None and v > high) for v in pair):
            raise OptionError(f"{arg}: expected ints in [{low}, {high}], got {value!r}")
        if item == "float" and pair[0] > pair[1]:
            raise OptionError(f"{arg}: expected a range (low, high) with low <= high, got {value!r}")
    elif kind.startswith("int"):
        v = check_int(value, arg, minimum=0 if low is None else int(low))
        if high is not None and v > high:
            raise OptionError(f"{arg}: expected an int of at most {int(high)}, got {value!r}")
    elif kind == "float":
        check_number(value, arg, low=low, high=high)


class Recipe:
    """A distorted dataset: parameters (dataclass fields) and a vectorised ``generate``.

    Parameters are checked when a recipe is built (type, and the ranges in ``_LIMITS``), so a bad value fails
    naming the parameter, not in the middle of generation.
    """

    name: ClassVar[str]
    num_classes: ClassVar[int] = 10
    #: Shape of one sample's label: ``()`` for a class, ``(5,)`` for a digit sequence (``text_strips``).
    label_shape: ClassVar[tuple[int, ...]] = ()

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if kind in ("int", "float", "int | None") or kind.startswith("tuple["):
                _check_field(type(self).__name__, f.name, kind, getattr(self, f.name))
            elif isinstance(f.default_factory, type):  # a nested recipe (addition's rts)
                check_instance(getattr(self, f.name), f"{type(self).__name__}.{f.name}", f.default_factory)

    def config(self) -> dict[str, object]:
        """The recipe's parameters, for manifests and run records."""
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]

    def source_index(self, index: Tensor, source: MNISTSplit) -> Tensor:
        """Which source digit sample ``i`` distorts: digit ``i mod N`` (one distortion per digit per pass)."""
        return index % len(source)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        """Samples for ``index`` ``(B,)``; deterministic in ``(seed, stream, index)``."""
        raise NotImplementedError

    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` (or ``(C, D, H, W)``) of one sample."""
        raise NotImplementedError


def _similarity_rows(angle_deg: Tensor, scale: Tensor, offset_px: Tensor, canvas: int, digit: int = 28) -> Tensor:
    """``src_from_dst`` (B, 2, 3): a ``digit``-pixel source rotated, scaled and placed in a ``canvas`` output.

    Forward (digit to canvas, pixels from each centre): ``c = s R(angle) q + offset``; inverted and normalised
    (output ``c = u * canvas/2``, source ``q = v * digit/2``).
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    k = canvas / (digit * scale)  # (B,)
    # R(-a) = [[cos, sin], [-sin, cos]]
    lin = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2) * k[:, None, None]
    shift = -(lin @ (offset_px * (2.0 / canvas)).unsqueeze(-1))  # (B, 2, 1)
    return torch.cat((lin, shift), dim=-1)


@dataclass(frozen=True)
class Rotated(Recipe):
    """R: rotated uniformly in ``angle`` degrees, 28x28."""

    name: ClassVar[str] = "rotated"
    angle: tuple[float, float] = (-90.0, 90.0)

    def shape(self) -> tuple[int, ...]:
        return (1, 28, 28)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        angle = d.uniform("angle", 1, *self.angle)[:, 0]
        rows = _similarity_rows(angle, torch.ones_like(angle), torch.zeros(len(index), 2, dtype=torch.float64), 28)
        # backend="torch": the data must not depend on whether this machine built the fused kernel.
        img = warp(source.images[src, None], rows.float().reshape(-1, 6), Affine(), backend="torch")
        return Batch(_to_uint8(img), source.labels[src], {"angle": angle, "matrix": rows})


@dataclass(frozen=True)
class RotatedTranslatedScaled(Recipe):
    """RTS: rotated in ``angle`` degrees, scaled in ``scale``, placed uniformly in a ``canvas`` square.

    The placement keeps the scaled 28x28 digit box inside the canvas: its centre moves uniformly within
    ``+-(canvas - 28 s) / 2`` pixels of the canvas centre on each axis.
    """

    name: ClassVar[str] = "rts"
    angle: tuple[float, float] = (-45.0, 45.0)
    scale: tuple[float, float] = (0.7, 1.2)
    canvas: int = 42

    def shape(self) -> tuple[int, ...]:
        return (1, self.canvas, self.canvas)

    def draw(self, d: Draws, n: int, purpose: str = "") -> dict[str, Tensor]:
        angle = d.uniform(purpose + "angle", 1, *self.angle)[:, 0]
        scale = d.uniform(purpose + "scale", 1, *self.scale)[:, 0]
        room = (self.canvas - 28 * scale)[:, None] / 2  # (B, 1)
        offset = (d.uniform(purpose + "offset", 2) * 2 - 1) * room  # (B, 2) pixels (x, y)
        return {"angle": angle, "scale": scale, "offset": offset}

    def render(self, digits: Tensor, drawn: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        rows = _similarity_rows(drawn["angle"], drawn["scale"], drawn["offset"], self.canvas)
        # backend="torch": the data must not depend on whether this machine built the fused kernel.
        img = warp(digits[:, None], rows.float().reshape(-1, 6), Affine(), (self.canvas, self.canvas), backend="torch")
        return img, rows

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        drawn = self.draw(d, len(index))
        img, rows = self.render(source.images[src], drawn)
        return Batch(_to_uint8(img), source.labels[src], {**drawn, "matrix": rows})


def _homography_from_points(dst: Tensor, src: Tensor) -> Tensor:
    """Batched 4-point solve: ``(B, 3, 3)`` homographies taking ``dst`` (B, 4, 2) onto ``src`` (B, 4, 2)."""
    x, y = dst.unbind(-1)
    u, v = src.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack((x, y, one, zero, zero, zero, -u * x, -u * y), -1)  # (B, 4, 8)
    rows_v = torch.stack((zero, zero, zero, x, y, one, -v * x, -v * y), -1)
    a = torch.cat((rows_u, rows_v), 1)  # (B, 8, 8)
    b = torch.cat((u, v), 1)  # (B, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat((h, torch.ones_like(h[:, :1])), -1).view(-1, 3, 3)


_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)


@dataclass(frozen=True)
class Projected(Recipe):
    """P: scaled by ``scale`` about the centre, then each image corner moved by ``corner_std`` px; 28x28.

    The paper (appendix A.4, as reconstructed) moves each corner by N(0, 5 px) without saying whether that is
    the move of each coordinate or the corner's distance. ``corner_motion`` picks the reading:

    * ``"axes"`` (the default, the P column's): each corner's x and y move by independent N(0, ``corner_std``)
      px, so a corner moves sqrt(2) ``corner_std`` px RMS;
    * ``"polar"``: each corner moves by the absolute value of N(0, ``corner_std``) px in a uniformly random
      direction, ``corner_std`` px RMS (``corner_std / sqrt(2)`` per axis), the milder reading.

    Example:
        >>> src = MNISTSplit(torch.rand(4, 28, 28), torch.arange(4))
        >>> b = Projected(corner_motion="polar").generate(src, torch.arange(2), seed=0, stream="train")
        >>> tuple(b.meta["corners"].shape)
        (2, 4, 2)
    """

    name: ClassVar[str] = "projective"
    scale: tuple[float, float] = (0.75, 1.0)
    corner_std: float = 5.0
    corner_motion: str = "axes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_instance(self.corner_motion, "Projected.corner_motion", str, '"axes" or "polar"')
        if self.corner_motion not in ("axes", "polar"):
            raise OptionError(f'Projected.corner_motion: expected "axes" or "polar", got {self.corner_motion!r}')

    def shape(self) -> tuple[int, ...]:
        return (1, 28, 28)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        scale = d.uniform("scale", 1, *self.scale)  # (B, 1)
        std = self.corner_std / 14.0  # pixels -> normalised
        if self.corner_motion == "axes":
            moved = d.normal("corners", 8, std).view(-1, 4, 2)
        else:
            distance = d.normal("corners", 4, std).abs()
            angle = d.uniform("corner_directions", 4, 0.0, 2.0 * torch.pi)
            moved = torch.stack((distance * torch.cos(angle), distance * torch.sin(angle)), -1)
        dst = _CORNERS * scale[:, :, None] + moved  # where the image corners land
        h = _homography_from_points(dst, _CORNERS.expand_as(dst))
        # backend="torch": the data must not depend on whether this machine built the fused kernel.
        img = warp(source.images[src, None], h.reshape(-1, 9)[:, :8].float(), Projective(), backend="torch")
        return Batch(_to_uint8(img), source.labels[src], {"scale": scale[:, 0], "corners": dst, "matrix": h})


@dataclass(frozen=True)
class Elastic(Recipe):
    """E: scaled by ``scale``, then a thin-plate spline whose 4x4 control points move by N(0, ``point_std`` px).

    The displaced control points are the spline's source positions (``ThinPlateSpline`` parameters) in the
    scaled frame; 28x28.
    """

    name: ClassVar[str] = "elastic"
    scale: tuple[float, float] = (0.75, 1.0)
    point_std: float = 1.5
    grid: tuple[int, int] = (4, 4)

    def shape(self) -> tuple[int, ...]:
        return (1, 28, 28)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        tps = ThinPlateSpline(self.grid)
        scale = d.uniform("scale", 1, *self.scale)  # (B, 1)
        ctrl = tps.identity_params(1, dtype=torch.float64)
        params = (ctrl + d.normal("points", tps.num_params, self.point_std / 14.0)) / scale
        img = warp(source.images[src, None], params.float(), tps)
        return Batch(_to_uint8(img), source.labels[src], {"scale": scale[:, 0], "params": params})


@dataclass(frozen=True)
class TranslatedCluttered(Recipe):
    """TC: the digit at a uniformly random place in a ``canvas`` square, plus ``clutter`` random crops.

    Each clutter piece is a random ``clutter_size`` x ``clutter_size`` crop of a random training digit pasted at a
    random place; pieces and digit are combined with a pixel-wise maximum. The digit box stays inside the canvas.
    """

    name: ClassVar[str] = "translated_cluttered"
    canvas: int = 60
    clutter: int = 6
    clutter_size: int = 6

    def shape(self) -> tuple[int, ...]:
        return (1, self.canvas, self.canvas)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        canvas = torch.zeros(len(index), self.canvas, self.canvas)
        _clutter(canvas, source, d, self.clutter, self.clutter_size, "clutter")
        at = d.integers("place", 2, self.canvas - 28 + 1)  # (B, 2): x0, y0
        _paste(canvas, source.images[src], at[:, 1], at[:, 0])
        boxes = torch.cat((at, at + 28), -1)  # (x0, y0, x1, y1) in pixels
        return Batch(_to_uint8(canvas[:, None]), source.labels[src], {"boxes": boxes})


@dataclass(frozen=True)
class MNISTAddition(Recipe):
    """MNIST addition: two ``rts``-distorted random digits as two channels; the label is their sum (19 classes)."""

    name: ClassVar[str] = "addition"
    num_classes: ClassVar[int] = 19
    rts: RotatedTranslatedScaled = field(default_factory=RotatedTranslatedScaled)

    def shape(self) -> tuple[int, ...]:
        return (2, self.rts.canvas, self.rts.canvas)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        digits = d.integers("digits", 2, len(source))  # (B, 2)
        channels, meta = [], {}
        for c in range(2):
            drawn = self.rts.draw(d, len(index), f"channel{c}/")
            img, rows = self.rts.render(source.images[digits[:, c]], drawn)
            channels.append(img)
            meta.update({f"{k}{c}": v for k, v in {**drawn, "matrix": rows}.items()})
        labels = source.labels[digits].sum(-1)
        return Batch(_to_uint8(torch.cat(channels, 1)), labels, {"digits": source.labels[digits], **meta})


@dataclass(frozen=True)
class CoLocalisation(Recipe):
    """Co-localisation: a digit of one class at a random place in a ``canvas`` square, optionally cluttered.

    ``digit`` selects the class (None: every class); sample ``i`` uses the ``i``-th digit of that class. The true
    box (the digit's 28x28 square, pixels ``(x0, y0, x1, y1)``) is kept in ``meta["boxes"]`` for IoU scoring.
    """

    name: ClassVar[str] = "colocalisation"
    canvas: int = 84
    clutter: int = 0
    clutter_size: int = 6
    digit: int | None = None

    def shape(self) -> tuple[int, ...]:
        return (1, self.canvas, self.canvas)

    def source_index(self, index: Tensor, source: MNISTSplit) -> Tensor:
        pool = torch.arange(len(source)) if self.digit is None else torch.nonzero(source.labels == self.digit)[:, 0]
        return pool[index % len(pool)]

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        canvas = torch.zeros(len(index), self.canvas, self.canvas)
        if self.clutter:
            _clutter(canvas, source, d, self.clutter, self.clutter_size, "clutter")
        at = d.integers("place", 2, self.canvas - 28 + 1)
        _paste(canvas, source.images[src], at[:, 1], at[:, 0])
        return Batch(_to_uint8(canvas[:, None]), source.labels[src], {"boxes": torch.cat((at, at + 28), -1)})


def _rotation_3d(angles: Tensor) -> Tensor:
    """``(B, 3, 3)`` rotation ``Rz @ Ry @ Rx`` from angles ``(B, 3)`` in radians (about x, y, z)."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack((one, zero, zero, zero, cx, -sx, zero, sx, cx), -1).view(-1, 3, 3)
    ry = torch.stack((cy, zero, sy, zero, one, zero, -sy, zero, cy), -1).view(-1, 3, 3)
    rz = torch.stack((cz, -sz, zero, sz, cz, zero, zero, zero, one), -1).view(-1, 3, 3)
    return rz @ ry @ rx


@dataclass(frozen=True)
class Volumetric(Recipe):
    """3D: a digit extruded ``thickness`` voxels deep, posed at random in a ``canvas``^3 volume.

    The digit (28x28, in the x-y plane) is extruded along z, rotated about each axis by a uniform angle in
    ``angle`` degrees about its centre, and moved uniformly by up to ``shift`` voxels on each axis (the paper's
    appendix gives no more detail; these are this library's choices). Volumes are large (216 KB each at 60^3):
    generate them batch by batch rather than materialising a whole split.
    """

    name: ClassVar[str] = "volumetric"
    canvas: int = 60
    thickness: int = 8
    angle: tuple[float, float] = (-45.0, 45.0)
    shift: float = 8.0

    def shape(self) -> tuple[int, ...]:
        return (1, self.canvas, self.canvas, self.canvas)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        src = self.source_index(index, source)
        b, n = len(index), self.canvas
        angles = torch.deg2rad(d.uniform("angles", 3, *self.angle))  # (B, 3)
        shift = d.uniform("shift", 3, -self.shift, self.shift)  # (B, 3) voxels (x, y, z)
        # Source: a 28 x 28 x thickness slab (z, y, x order in memory), the digit repeated along z.
        slab = source.images[src, None, None].expand(b, 1, self.thickness, 28, 28)
        extent = torch.tensor([28.0, 28.0, float(self.thickness)], dtype=torch.float64)  # (x, y, z) source size
        rot = _rotation_3d(angles)
        # Forward (voxels from each centre): c = R q + shift; so q = R^T (c - shift), c = u n/2, q = v extent/2.
        lin = rot.transpose(1, 2) * (n / extent)[None, :, None]
        offset = -(rot.transpose(1, 2) @ shift.unsqueeze(-1)) * (2.0 / extent)[None, :, None]
        rows = torch.cat((lin, offset), -1)  # (B, 3, 4)
        vol = warp(slab.float(), rows.float().reshape(-1, 12), Affine3D(), (n, n, n), mode="trilinear")
        return Batch(_to_uint8(vol), source.labels[src], {"angles": torch.rad2deg(angles), "shift": shift})


def _sine_curve(x: Tensor, amplitude: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
    """``a sin(pi f x + phi)`` for points ``x`` ``(B, ...)`` and per-sample ``(B,)`` parameters."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return amplitude.view(shape) * torch.sin(torch.pi * freq.view(shape) * x + phase.view(shape))


@dataclass(frozen=True)
class TextStrips(Recipe):
    """Text strips: 3-5 MNIST digits side by side in a ``height`` x ``width`` strip, bent and in perspective.

    A synthetic scene-text task for thin-plate-spline rectifiers (RARE, ASTER). Sample ``i`` draws a length ``n``
    uniformly in ``digits``, then ``n`` random training digits. Each digit's 28x28 box is resized to
    ``size * height`` pixels (one size per strip, uniform in ``size``) and the boxes are placed left to right,
    ``pitch * box`` pixels apart (uniform in ``pitch``; narrowed where needed so the row fits inside the strip
    with 2 pixels to spare), each moved by a uniform ``jitter`` pixels along x; the row is centred at a uniform
    offset within the room left. Digits overlap a little and are combined with a pixel-wise maximum.

    The flat strip is then distorted by one resampling (a dense map, no second interpolation): an output point
    ``(x, y)`` (normalised) is first taken through a homography whose four image corners move by
    N(0, ``corner_std`` px), then bent: the flat strip is read at ``y - c(x)`` with the baseline curve
    ``c(x) = a sin(pi f x + phi)``, ``a`` uniform in ``+-curve`` pixels, ``f`` in ``frequency``, ``phi`` in
    ``[0, 2 pi)``. So the digits' row follows ``c`` in the output.

    Labels are ``(5,)`` int64: the ``n`` digits left to right, then :data:`NO_DIGIT` (10, "no digit") padding, as
    the SVHN sequence labels (:mod:`torchstn.data.svhn`); ``num_classes`` is 11. Metadata: ``length`` ``(B,)``,
    ``centres`` ``(B, 5)`` box centres along x in flat-strip pixels (edge convention; entries past the
    length are where a further digit would sit), ``box`` ``(B,)`` the box side
    in pixels, ``curve`` ``(B, 3)`` ``(a px, f, phi)``, ``corners`` ``(B, 4, 2)`` where the homography sends the
    corners (normalised, ``src_from_dst`` as the ``projective`` recipe's).

    Example:
        >>> src = MNISTSplit(torch.rand(8, 28, 28), torch.arange(8) % 10)
        >>> b = TextStrips().generate(src, torch.arange(2), seed=0, stream="train")
        >>> tuple(b.images.shape), tuple(b.labels.shape)
        ((2, 1, 32, 100), (2, 5))
    """

    name: ClassVar[str] = "text_strips"
    num_classes: ClassVar[int] = NO_DIGIT + 1
    label_shape: ClassVar[tuple[int, ...]] = (MAX_DIGITS,)
    height: int = 32
    width: int = 100
    digits: tuple[int, int] = (3, 5)
    size: tuple[float, float] = (0.8, 0.95)
    pitch: tuple[float, float] = (0.55, 0.7)
    jitter: float = 1.5
    curve: float = 6.0
    frequency: tuple[float, float] = (0.3, 1.2)
    corner_std: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = self.digits
        if not 1 <= lo <= hi <= MAX_DIGITS:
            raise OptionError(f"TextStrips.digits: expected 1 <= low <= high <= {MAX_DIGITS}, got {self.digits!r}")
        if self.height < 8 or self.width < self.height:
            raise OptionError(
                f"TextStrips.height, width: expected height >= 8 and width >= height, got {self.height}, {self.width}"
            )

    def shape(self) -> tuple[int, ...]:
        return (1, self.height, self.width)

    def generate(self, source: MNISTSplit, index: Tensor, seed: int, stream: str) -> Batch:
        d = Draws(seed, f"{self.name}/{stream}", index)
        b, k, h, w = len(index), MAX_DIGITS, self.height, self.width
        lo, hi = self.digits
        length = lo + d.integers("length", 1, hi - lo + 1)[:, 0]  # (B,)
        picks = d.integers("digits", k, len(source))  # (B, K)
        active = torch.arange(k)[None, :] < length[:, None]  # (B, K)
        labels = torch.where(active, source.labels[picks], torch.full_like(picks, NO_DIGIT))
        box = d.uniform("size", 1, *self.size)[:, 0] * h  # (B,) box side in pixels
        room = (w - 2.0 - box) / (length - 1).clamp_min(1).double()  # the widest pitch that still fits
        step = torch.minimum(d.uniform("pitch", 1, *self.pitch)[:, 0] * box, room)  # (B,)
        span = step * (length - 1).double() + box  # (B,)
        start = 1.0 + d.uniform("offset", 1)[:, 0] * (w - 2.0 - span) + box / 2  # centre of the first box
        jitter = d.uniform("jitter", k, -self.jitter, self.jitter)
        centres = start[:, None] + step[:, None] * torch.arange(k, dtype=torch.float64) + jitter  # (B, K) px
        # The distortion: output (x, y) -> homography -> bend -> flat-strip point.
        moved = d.normal("corners", 8, 1.0).view(-1, 4, 2) * (
            torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64) * self.corner_std
        )
        corners = _CORNERS + moved  # where the output corners read the strip
        hom = _homography_from_points(_CORNERS.expand_as(corners), corners)  # (B, 3, 3) src_from_dst
        amplitude = d.uniform("curve_amplitude", 1, -self.curve, self.curve)[:, 0]  # pixels
        freq = d.uniform("curve_frequency", 1, *self.frequency)[:, 0]
        phase = d.uniform("curve_phase", 1, 0.0, 2.0 * torch.pi)[:, 0]
        ys, xs = normalized_coords(h, dtype=torch.float64), normalized_coords(w, dtype=torch.float64)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack((gx, gy, torch.ones_like(gx)), -1).reshape(1, -1, 3) @ hom.transpose(1, 2)  # (B, HW, 3)
        fx, fy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]  # (B, HW) normalised flat-strip point
        fy = fy - _sine_curve(fx, amplitude * (2.0 / h), freq, phase)
        px, py = (fx + 1) * (w / 2.0), (fy + 1) * (h / 2.0)  # edge-convention pixels of the flat strip
        strip = torch.zeros(b, 1, h, w)
        half = (box / 2.0)[:, None]  # (B, 1)
        for j in range(k):
            u = (px - centres[:, j : j + 1]) / half  # (B, HW): the digit box spans [-1, 1]
            v = (py - h / 2.0) / half
            grid = torch.stack((u, v), -1).view(b, h, w, 2).float()
            # backend="torch": the data must not depend on whether this machine built the fused kernel.
            digit = sample(source.images[picks[:, j], None], grid, backend="torch")  # (B, 1, H, W)
            strip = torch.maximum(strip, digit * active[:, j, None, None, None])
        meta = {
            "length": length,
            "centres": centres,
            "box": box,
            "curve": torch.stack((amplitude, freq, phase), -1),
            "corners": corners,
        }
        return Batch(_to_uint8(strip), labels, meta)


RECIPES: dict[str, type[Recipe]] = {
    r.name: r
    for r in (
        Rotated,
        RotatedTranslatedScaled,
        Projected,
        Elastic,
        TranslatedCluttered,
        MNISTAddition,
        CoLocalisation,
        Volumetric,
        TextStrips,
    )
}
_ALIASES = {"r": "rotated", "p": "projective", "e": "elastic", "tc": "translated_cluttered"}


def get_recipe(name: str, **params: object) -> Recipe:
    """A recipe by name (``rotated``/``r``, ``rts``, ``projective``/``p``, ``elastic``/``e``,
    ``translated_cluttered``/``tc``, ``addition``, ``colocalisation``, ``volumetric``,
    ``text_strips``) with parameters overridden.

    Example:
        >>> get_recipe("rts", canvas=48).shape()
        (1, 48, 48)
    """
    check_instance(name, "name", str, "a recipe name (str)")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in RECIPES:
        raise OptionError(f"name: expected one of {', '.join(sorted(RECIPES))}, got {name!r}")
    cls = RECIPES[key]
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise OptionError(f"{key}: unknown parameter(s) {unknown}; it takes {known}")
    return cls(**params)
