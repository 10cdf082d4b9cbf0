"""Warp benchmark: torchstn against plain torch and kornia, side by side in one process.

Reproduce (from the repository root; CPU, torch's default thread count, no network)::

    .venv/bin/python benchmarks/bench_warp.py --out benchmarks/results

``--quick`` runs a few repetitions only (a smoke run); ``--device cuda`` times on a GPU when one is available.

Every candidate of a row is timed in the same loop: each repetition runs every candidate once, in an order rotated
from one repetition to the next, after ``--warmup`` untimed calls each. The tables report the median of
``--repeats`` such repetitions (``time.perf_counter``, synchronised on CUDA); a row slower than
``--max-row-seconds`` gets fewer. Before timing, each row checks that the candidates compute the same thing
(outputs, and gradients for the backward rows) and reports the difference.

On a small machine a concurrent job ruins CPU timings (torch's OpenMP threads wait for a busy core), so the script
reads ``/proc/stat`` around each row: a row during which other processes used over 10% of the CPU is timed again
(``--retries``), and is marked in the tables if it never ran clean.

Sections:
    1. Affine warp, forward: ``torchstn.warp(x, params, Affine())`` against ``F.grid_sample(x, F.affine_grid(...))``
       and ``kornia.geometry.transform.warp_affine`` with the equivalent pixel matrix.
    2. Affine warp, forward and backward (gradient for theta; then for theta and the input).
    3. Projective warp, forward: ``torchstn.warp(x, params, Projective())`` against kornia's ``warp_perspective``.
    4. Thin-plate spline (4x4 control points): ``torchstn.warp(x, params, ThinPlateSpline())`` against kornia's
       ``get_tps_transform`` + ``warp_image_tps`` on the same control points.
    5. Grid generation alone: ``torchstn.affine_grid`` against ``F.affine_grid``.
    6. Where our affine time goes: the grid, ``sample`` with and without its finite check, and bare
       ``F.grid_sample``, timed separately.

Outputs ``warp.md`` (the tables) and ``warp.json`` (machine, settings, and per row the medians and interquartile
ranges in ms, repetitions, other processes' CPU share, speed-ups and differences) in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from kornia.geometry.transform import (
    get_tps_transform,
    warp_affine,
    warp_image_tps,
    warp_perspective,
    warp_points_tps,
)
from torch import Tensor

import torchstn
from _common import ForeignLoad, machine_info
from torchstn import Affine, Projective, ThinPlateSpline, ext
from torchstn.geometry import _affine_grid

# --------------------------------------------------------------------------------------------------------------------
# Workloads and targets
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A benchmark workload: ``batch`` images of ``channels x size`` warped to ``out``."""

    name: str
    batch: int
    channels: int
    size: tuple[int, int]
    out: tuple[int, int]

    @property
    def label(self) -> str:
        (h, w), (oh, ow) = self.size, self.out
        return f"{self.name} {self.batch}x{self.channels}x{h}x{w}→{oh}x{ow}"

    def with_out(self, out: tuple[int, int]) -> Shape:
        return Shape(self.name, self.batch, self.channels, self.size, out)


SHAPES = (
    Shape("MNIST", 256, 1, (42, 42), (42, 42)),
    Shape("SVHN", 128, 3, (64, 64), (64, 64)),
    Shape("birds", 16, 3, (448, 448), (224, 224)),
)
#: The shapes the speed targets apply to (birds is reported for information).
TARGET_SHAPES = ("MNIST", "SVHN")
#: (section key, competitor, minimum speed-up of ours over it).
TARGETS = (
    ("affine_forward", "torch", 1.8),
    ("affine_forward", "kornia", 1.3),
    ("affine_backward", "torch", 1.5),
    ("tps", "kornia", 20.0),
)

THETA_NOISE = 0.1  # std of the perturbation added to the identity affine matrix
PERSPECTIVE_NOISE = 0.02  # std of the perturbation of the homography's last row
TPS_NOISE = 0.05  # std of the control points' source offsets
TPS_GRID = (4, 4)
MIN_REPEATS = 7  # fewest timed repetitions of a slow row
LOADED_SHARE = 0.1  # rows timed while other processes used more CPU than this are marked in the tables
AFFINE = Affine()
PROJECTIVE = Projective()


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


def wait_for_idle(max_share: float, timeout_s: float, window_s: float = 1.0, windows: int = 3) -> None:
    """Return once other processes used at most ``max_share`` of the CPU for ``windows`` windows in a row."""
    deadline, clean = time.monotonic() + timeout_s, 0
    while clean < windows and time.monotonic() < deadline:
        load = ForeignLoad()
        time.sleep(window_s)
        share = load.share()
        clean = clean + 1 if share is None or share <= max_share else 0


@dataclass(frozen=True)
class Timer:
    """Interleaved timing: every repetition runs each candidate once, in a rotated order.

    A row whose repetitions are slow gets fewer of them (at least ``MIN_REPEATS``) so that it takes about
    ``max_row_s``; the warm-up likewise stops after a quarter of that, but runs at least once. When other processes
    used more than ``max_foreign_share`` of the CPU while a row was timed, the row is timed again once they have
    been quiet for a few seconds (waiting at most ``idle_wait_s``), up to ``retries`` times; the share is recorded
    with the times either way.
    """

    repeats: int
    warmup: int
    device: torch.device
    max_row_s: float = 20.0
    max_foreign_share: float = 0.1
    retries: int = 3
    idle_wait_s: float = 120.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, candidates: dict[str, Callable[[], object]]) -> dict[str, dict[str, float]]:
        """Median and interquartile range in milliseconds, and the foreign CPU share, per candidate."""
        for attempt in range(self.retries + 1):
            load = ForeignLoad()
            times = self._measure(candidates)
            share = load.share()
            if share is None or share <= self.max_foreign_share or attempt == self.retries:
                break
            print(f"  (other processes used {fmt_share(share)} of the CPU; timing again when idle)", flush=True)
            wait_for_idle(self.max_foreign_share / 2, self.idle_wait_s)
        extra = {} if share is None else {"foreign_cpu_share": share}
        return {name: {**t, **extra} for name, t in times.items()}

    def _measure(self, candidates: dict[str, Callable[[], object]]) -> dict[str, dict[str, float]]:
        start, rounds = time.perf_counter(), 0
        while rounds < max(self.warmup, 1) and (rounds == 0 or time.perf_counter() - start < self.max_row_s / 4):
            for fn in candidates.values():
                fn()
            self.sync()
            rounds += 1
        per_round = (time.perf_counter() - start) / rounds
        repeats = max(min(self.repeats, MIN_REPEATS), min(self.repeats, int(self.max_row_s / per_round)))
        names = list(candidates)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                candidates[name]()
                self.sync()
                samples[name].append((time.perf_counter() - start) * 1e3)
        return {name: _stats(v) for name, v in samples.items()}


def _stats(ms: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], ms[0], ms[0])
    return {"median_ms": statistics.median(ms), "iqr_ms": q3 - q1, "repeats": len(ms)}


def median(times: dict[str, dict[str, float]], name: str) -> float:
    return times[name]["median_ms"]


# --------------------------------------------------------------------------------------------------------------------
# Inputs and comparisons
# --------------------------------------------------------------------------------------------------------------------


def make_image(shape: Shape, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape.batch, shape.channels, *shape.size, generator=gen).to(device)


def make_theta(batch: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """Normalised ``src_from_dst`` affine rows ``(B, 2, 3)``: the identity plus small seeded noise."""
    noise = THETA_NOISE * torch.randn(batch, 2, 3, generator=gen)
    return (torch.eye(2, 3) + noise).to(device)


def make_homography(batch: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """Normalised ``src_from_dst`` homographies ``(B, 3, 3)`` with last entry 1."""
    h = torch.eye(3).repeat(batch, 1, 1)
    h[:, :2] += THETA_NOISE * torch.randn(batch, 2, 3, generator=gen)
    h[:, 2, :2] += PERSPECTIVE_NOISE * torch.randn(batch, 2, generator=gen)
    return h.to(device)


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


def rel_diff(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||a||`` over the whole tensor, for gradients (whose scale grows with the image size).

    Not a max: bilinear sampling has a kink at integer pixel coordinates, so a grid point that two implementations
    place ~1e-7 apart on either side of one takes a different one-sided derivative, and that single point moves one
    theta gradient entry by O(1) out of O(sqrt(H * W)).
    """
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-30))


def grad_of(t: Tensor) -> Tensor:
    if t.grad is None:
        raise RuntimeError("expected a gradient after backward()")
    return t.grad


def ratio(other: float | None, ours: float) -> float | None:
    return None if other is None else other / ours


def fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def fmt_err(v: float) -> str:
    return f"{v:.1e}"


def fmt_share(v: float | None) -> str:
    return "unknown" if v is None else f"{100 * v:.0f}%"


# --------------------------------------------------------------------------------------------------------------------
# Result tables
# --------------------------------------------------------------------------------------------------------------------

STANDARD_COLUMNS = ["shape", "ours ms", "torch ms", "kornia ms", "torch/ours", "kornia/ours", "max abs diff"]


@dataclass
class Section:
    """One markdown table plus its raw numbers for the JSON file."""

    key: str
    title: str
    description: str
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, str], raw: dict[str, Any]) -> None:
        share = max((t.get("foreign_cpu_share", 0.0) for t in raw.get("times", {}).values()), default=0.0)
        if share > LOADED_SHARE:
            row = {**row, "shape": f"{row['shape']} (other processes {fmt_share(share)})"}
        self.rows.append(row)
        self.raw.append(raw)
        print(" | ".join(row[c] for c in self.columns), flush=True)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.description, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if c == "shape" else "---:" for c in self.columns) + "|")
        lines += ["| " + " | ".join(row[c] for c in self.columns) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def standard_row(
    label: str, times: dict[str, dict[str, float]], diffs: dict[str, float], **extra: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Format a row of the standard columns (absent competitors show as a dash)."""
    ours = median(times, "ours")
    torch_ms = median(times, "torch") if "torch" in times else None
    kornia_ms = median(times, "kornia") if "kornia" in times else None
    row = {
        "shape": label,
        "ours ms": fmt_ms(ours),
        "torch ms": fmt_ms(torch_ms),
        "kornia ms": fmt_ms(kornia_ms),
        "torch/ours": fmt_ratio(ratio(torch_ms, ours)),
        "kornia/ours": fmt_ratio(ratio(kornia_ms, ours)),
        "max abs diff": ", ".join(f"{k} {fmt_err(v)}" for k, v in diffs.items()),
        **extra,
    }
    raw = {
        "shape": label,
        "times": times,
        "speedup": {k: median(times, k) / ours for k in times if k != "ours"},
        "diffs": diffs,
    }
    return row, raw


# --------------------------------------------------------------------------------------------------------------------
# 1. Affine forward
# --------------------------------------------------------------------------------------------------------------------


def bench_affine_forward(shape: Shape, timer: Timer, gen: torch.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    x = make_image(shape, gen, timer.device)
    theta = make_theta(shape.batch, gen, timer.device)
    params = theta.reshape(shape.batch, 6)
    # kornia takes OpenCV's pixel dst_from_src matrix; with align_corners=False both use pixel centres at i.
    m_pixel = torchstn.normalized_to_pixel(theta, shape.size, shape.out, align_corners=False)[:, :2].contiguous()
    size = [shape.batch, shape.channels, *shape.out]

    def ours() -> Tensor:
        return torchstn.warp(x, params, AFFINE, shape.out)

    def torch_path() -> Tensor:
        return F.grid_sample(x, F.affine_grid(theta, size, align_corners=False), align_corners=False)

    def kornia_path() -> Tensor:
        return warp_affine(x, m_pixel, dsize=shape.out, align_corners=False)

    ref = ours()
    diffs = {"torch": max_abs(ref, torch_path()), "kornia": max_abs(ref, kornia_path())}
    times = timer({"ours": ours, "torch": torch_path, "kornia": kornia_path})
    return standard_row(shape.label, times, diffs)


# --------------------------------------------------------------------------------------------------------------------
# 2. Affine forward + backward
# --------------------------------------------------------------------------------------------------------------------


def _kornia_theta_grads(x: Tensor, theta: Tensor, shape: Shape, weight: Tensor) -> tuple[Tensor, Tensor | None]:
    """kornia's gradient with respect to the *normalised* theta (through the pixel conversion), for checking."""
    th = theta.detach().clone().requires_grad_()
    xi = x.detach().clone().requires_grad_(x.requires_grad)
    m = torchstn.normalized_to_pixel(th, shape.size, shape.out, align_corners=False)[:, :2]
    warp_affine(xi, m, dsize=shape.out, align_corners=False).backward(weight)
    return grad_of(th), xi.grad


def bench_affine_backward(
    shape: Shape, timer: Timer, gen: torch.Generator, input_grad: bool
) -> tuple[dict[str, str], dict[str, Any]]:
    device = timer.device
    x0 = make_image(shape, gen, device)
    theta = make_theta(shape.batch, gen, device)
    weight = torch.randn(shape.batch, shape.channels, *shape.out, generator=gen).to(device)  # loss = (out * w).sum()
    size = [shape.batch, shape.channels, *shape.out]

    # Each candidate owns its leaves, in its natural parametrisation: ours (B, 6), torch (B, 2, 3), kornia pixels.
    x_ours, x_torch, x_kornia = (x0.clone().requires_grad_(input_grad) for _ in range(3))
    p_ours = theta.reshape(shape.batch, 6).clone().requires_grad_()
    th_torch = theta.clone().requires_grad_()
    m_kornia = torchstn.normalized_to_pixel(theta, shape.size, shape.out)[:, :2].contiguous().requires_grad_()

    def step(leaves: Sequence[Tensor], forward: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            for leaf in leaves:
                leaf.grad = None
            forward().backward(weight)

        return run

    ours = step((p_ours, x_ours), lambda: torchstn.warp(x_ours, p_ours, AFFINE, shape.out))
    torch_path = step(
        (th_torch, x_torch),
        lambda: F.grid_sample(x_torch, F.affine_grid(th_torch, size, align_corners=False), align_corners=False),
    )
    kornia_path = step((m_kornia, x_kornia), lambda: warp_affine(x_kornia, m_kornia, shape.out, align_corners=False))

    # Check: outputs and gradients (theta's gradient from kornia is taken through the pixel conversion).
    with torch.no_grad():
        out = torchstn.warp(x0, theta.reshape(shape.batch, 6), AFFINE, shape.out)
        diffs = {
            "torch": max_abs(
                out, F.grid_sample(x0, F.affine_grid(theta, size, align_corners=False), align_corners=False)
            ),
            "kornia": max_abs(out, warp_affine(x0, m_kornia, shape.out, align_corners=False)),
        }
    ours()
    torch_path()
    k_theta, k_x = _kornia_theta_grads(x_kornia, theta, shape, weight)
    g_ours = grad_of(p_ours).view(-1, 2, 3)
    grad = {"θ torch": rel_diff(g_ours, grad_of(th_torch)), "θ kornia": rel_diff(g_ours, k_theta)}
    if input_grad and k_x is not None:
        gx = grad_of(x_ours)
        grad |= {"x torch": rel_diff(gx, grad_of(x_torch)), "x kornia": rel_diff(gx, k_x)}

    times = timer({"ours": ours, "torch": torch_path, "kornia": kornia_path})
    label = f"{shape.label} ({'θ and x' if input_grad else 'θ'} grad)"
    row, raw = standard_row(
        label, times, diffs, **{"grad rel diff": ", ".join(f"{k} {fmt_err(v)}" for k, v in grad.items())}
    )
    raw |= {"input_grad": input_grad, "grad_rel_diffs": grad}
    return row, raw


# --------------------------------------------------------------------------------------------------------------------
# 3. Projective forward
# --------------------------------------------------------------------------------------------------------------------


def bench_projective(shape: Shape, timer: Timer, gen: torch.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    x = make_image(shape, gen, timer.device)
    hom = make_homography(shape.batch, gen, timer.device)
    params = hom.reshape(shape.batch, 9)[:, :8].contiguous()
    m_pixel = torchstn.normalized_to_pixel(hom, shape.size, shape.out, align_corners=False)

    def ours() -> Tensor:
        return torchstn.warp(x, params, PROJECTIVE, shape.out)

    def kornia_path() -> Tensor:
        return warp_perspective(x, m_pixel, dsize=shape.out, align_corners=False)

    diffs = {"kornia": max_abs(ours(), kornia_path())}
    times = timer({"ours": ours, "kornia": kornia_path})
    return standard_row(shape.label, times, diffs)


# --------------------------------------------------------------------------------------------------------------------
# 4. Thin-plate spline
# --------------------------------------------------------------------------------------------------------------------

TPS_COLUMNS = [
    "shape",
    "ours ms",
    "ours cold ms",
    "kornia ms (solve+warp)",
    "kornia warp-only ms",
    "kornia/ours",
    "kornia warp-only/ours",
    "max abs diff",
    "mean abs diff",
    "max grid diff (px)",
    "ours vs textbook TPS (px)",
    "ctrl-pt error ours, kornia",
]
TEXTBOOK_SAMPLES = 4  # the float64 reference spline is evaluated on this many samples of the batch


def textbook_tps(target: Tensor, source: Tensor, points: Tensor) -> Tensor:
    """The textbook thin-plate spline through ``f(target_k) = source_k``, kernels centred on the targets (float64).

    An independent reference for ours: ``U(r) = r^2 log r^2`` and ``[[K, P], [P^T, 0]] [w; a] = [source; 0]``.
    Shapes: ``target``, ``source`` ``(B, K, 2)``, ``points`` ``(B, N, 2)``; returns ``(B, N, 2)``.
    """
    t, s, pts = (v.double() for v in (target, source, points))

    def basis(x: Tensor) -> Tensor:  # (B, N, K + 3): U(|x - t_k|) for each k, then 1, x, y
        d2 = torch.cdist(x, t, compute_mode="donot_use_mm_for_euclid_dist").square()
        return torch.cat((d2 * torch.log(d2.clamp_min(1e-300)), torch.ones_like(x[..., :1]), x), dim=-1)

    b, k = t.shape[:2]
    lhs = torch.zeros(b, k + 3, k + 3, dtype=torch.float64, device=t.device)
    lhs[:, :k] = basis(t)
    lhs[:, k:, :k] = lhs[:, :k, k:].transpose(1, 2)
    rhs = torch.cat((s, s.new_zeros(b, 3, 2)), dim=1)
    coef: Tensor = torch.linalg.solve(lhs, rhs)  # (B, K + 3, 2)
    return basis(pts) @ coef


def bench_tps(shape: Shape, timer: Timer, gen: torch.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    """kornia's ``warp_image_tps`` keeps the input size, so the output here is the input size."""
    shape = shape.with_out(shape.size)
    device = timer.device
    tps = ThinPlateSpline(TPS_GRID)
    x = make_image(shape, gen, device)
    k = tps.num_controls
    target = tps.control_points(device).expand(shape.batch, k, 2).contiguous()  # output-space control points
    source = (target.cpu() + TPS_NOISE * torch.randn(shape.batch, k, 2, generator=gen)).to(device)
    params = source.reshape(shape.batch, 2 * k)

    def ours() -> Tensor:
        return torchstn.warp(x, params, tps, shape.out)

    def ours_cold() -> Tensor:  # a fresh transform: solves the spline system and builds the grid weights
        return torchstn.warp(x, params, ThinPlateSpline(TPS_GRID), shape.out)

    # get_tps_transform(a, b) fits f(a_i) = b_i with kernels centred on b (its *second* argument); the image warp
    # maps output points to input points, so a = target (output) and b = source (input) = the kernel centres.
    def kornia_solve() -> tuple[Tensor, Tensor]:
        return get_tps_transform(target, source)

    kernel_w, affine_w = kornia_solve()

    def kornia_warp() -> Tensor:
        return warp_image_tps(x, source, kernel_w, affine_w, align_corners=False)

    def kornia_total() -> Tensor:
        kw, aw = kornia_solve()
        return warp_image_tps(x, source, kw, aw, align_corners=False)

    out_ours, out_kornia = ours(), kornia_total()
    diff = (out_ours - out_kornia).abs()
    # Both splines interpolate the control points; away from them they differ (kornia centres its kernels on the
    # source points, the textbook TPS on the target points), so compare the grids too, in source pixels.
    grid_ours = tps.grid(params, shape.out)
    ys, xs = (torchstn.geometry.normalized_coords(n, device=device) for n in shape.out)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack((gx, gy), dim=-1).reshape(1, -1, 2).expand(shape.batch, -1, -1)
    grid_kornia = warp_points_tps(coords, source, kernel_w, affine_w)
    half_size = torch.tensor(shape.size[::-1], device=device, dtype=grid_ours.dtype) / 2  # normalised -> pixels
    grid_px = float(((grid_ours.reshape(shape.batch, -1, 2) - grid_kornia) * half_size).abs().max())
    n = TEXTBOOK_SAMPLES
    reference = textbook_tps(target[:n], source[:n], coords[:n])
    textbook_px = float(((grid_ours[:n].reshape(n, -1, 2).double() - reference) * half_size).abs().max())
    ctrl_ours = max_abs(tps.map_points(params, target), source)
    ctrl_kornia = max_abs(warp_points_tps(target, source, kernel_w, affine_w), source)

    times = timer({"ours": ours, "ours_cold": ours_cold, "kornia": kornia_total, "kornia_warp_only": kornia_warp})
    t_ours = median(times, "ours")
    row = {
        "shape": shape.label,
        "ours ms": fmt_ms(t_ours),
        "ours cold ms": fmt_ms(median(times, "ours_cold")),
        "kornia ms (solve+warp)": fmt_ms(median(times, "kornia")),
        "kornia warp-only ms": fmt_ms(median(times, "kornia_warp_only")),
        "kornia/ours": fmt_ratio(median(times, "kornia") / t_ours),
        "kornia warp-only/ours": fmt_ratio(median(times, "kornia_warp_only") / t_ours),
        "max abs diff": fmt_err(float(diff.max())),
        "mean abs diff": fmt_err(float(diff.mean())),
        "max grid diff (px)": f"{grid_px:.3f}",
        "ours vs textbook TPS (px)": fmt_err(textbook_px),
        "ctrl-pt error ours, kornia": f"{fmt_err(ctrl_ours)}, {fmt_err(ctrl_kornia)}",
    }
    raw = {
        "shape": shape.label,
        "times": times,
        "speedup": {name: median(times, name) / t_ours for name in times if name != "ours"},
        "diffs": {
            "kornia_max": float(diff.max()),
            "kornia_mean": float(diff.mean()),
            "grid_max_px": grid_px,
            "textbook_grid_max_px": textbook_px,
            "ctrl_error_ours": ctrl_ours,
            "ctrl_error_kornia": ctrl_kornia,
        },
    }
    return row, raw


# --------------------------------------------------------------------------------------------------------------------
# 5. Grid generation alone
# --------------------------------------------------------------------------------------------------------------------

GRID_COLUMNS = ["shape", "ours ms", "torch ms", "torch/ours", "max abs diff", "ours contiguous", "torch contiguous"]


def bench_grid(shape: Shape, timer: Timer, gen: torch.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    theta = make_theta(shape.batch, gen, timer.device)
    size = [shape.batch, shape.channels, *shape.out]

    def ours() -> Tensor:
        return torchstn.affine_grid(theta, shape.out, align_corners=False)

    def torch_path() -> Tensor:
        return F.affine_grid(theta, size, align_corners=False)

    g_ours, g_torch = ours(), torch_path()
    diff = max_abs(g_ours, g_torch)
    times = timer({"ours": ours, "torch": torch_path})
    row = {
        "shape": shape.label,
        "ours ms": fmt_ms(median(times, "ours")),
        "torch ms": fmt_ms(median(times, "torch")),
        "torch/ours": fmt_ratio(median(times, "torch") / median(times, "ours")),
        "max abs diff": fmt_err(diff),
        "ours contiguous": str(g_ours.is_contiguous()),
        "torch contiguous": str(g_torch.is_contiguous()),
    }
    raw = {
        "shape": shape.label,
        "times": times,
        "speedup": {"torch": median(times, "torch") / median(times, "ours")},
        "diffs": {"torch": diff},
        "contiguous": {"ours": g_ours.is_contiguous(), "torch": g_torch.is_contiguous()},
    }
    return row, raw


# --------------------------------------------------------------------------------------------------------------------
# 6. Breakdown of our affine warp
# --------------------------------------------------------------------------------------------------------------------

BREAKDOWN_COLUMNS = [
    "shape",
    "warp ms",
    "warp nonfinite='ignore' ms",
    "warp grid path ms",
    "grid ms",
    "grid (warp's layout) ms",
    "sample ms",
    "sample nonfinite='ignore' ms",
    "F.grid_sample ms",
    "warp fwd+bwd ms",
    "warp fwd+bwd nonfinite='ignore' ms",
    "warp fwd+bwd grid path ms",
    "F.grid_sample fwd+bwd ms",
]


def bench_breakdown(shape: Shape, timer: Timer, gen: torch.Generator) -> tuple[dict[str, str], dict[str, Any]]:
    """The pieces of ``torchstn.warp(x, p, Affine())``; ``grid_sample`` alone is the floor for every candidate."""
    x = make_image(shape, gen, timer.device)
    theta = make_theta(shape.batch, gen, timer.device)
    params = theta.reshape(shape.batch, 6)
    grid = AFFINE.grid(params, shape.out)
    weight = torch.randn(shape.batch, shape.channels, *shape.out, generator=gen).to(timer.device)
    p_leaf = params.clone().requires_grad_()
    g_leaf = grid.clone().requires_grad_()

    def backward(leaf: Tensor, forward: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf.grad = None
            forward().backward(weight)

        return run

    candidates: dict[str, Callable[[], object]] = {
        "warp": lambda: torchstn.warp(x, params, AFFINE, shape.out),
        "warp_ignore": lambda: torchstn.warp(x, params, AFFINE, shape.out, nonfinite="ignore"),
        "warp_grid_path": lambda: torchstn.warp(x, params, AFFINE, shape.out, backend="torch"),
        "grid": lambda: AFFINE.grid(params, shape.out),
        # warp asks for a grid it need not reshape: batch-strided where rows of 4 KiB multiples would alias
        "grid_warp": lambda: _affine_grid(theta, shape.out, False, contiguous=False),
        "sample": lambda: torchstn.sample(x, grid),
        "sample_ignore": lambda: torchstn.sample(x, grid, nonfinite="ignore"),
        "grid_sample": lambda: F.grid_sample(x, grid, align_corners=False),
        "warp_fwd_bwd": backward(p_leaf, lambda: torchstn.warp(x, p_leaf, AFFINE, shape.out)),
        "warp_fwd_bwd_ignore": backward(
            p_leaf, lambda: torchstn.warp(x, p_leaf, AFFINE, shape.out, nonfinite="ignore")
        ),
        "warp_fwd_bwd_grid_path": backward(
            p_leaf, lambda: torchstn.warp(x, p_leaf, AFFINE, shape.out, backend="torch")
        ),
        "grid_sample_fwd_bwd": backward(g_leaf, lambda: F.grid_sample(x, g_leaf, align_corners=False)),
    }
    times = timer(candidates)
    row = {"shape": shape.label}
    row |= {col: fmt_ms(median(times, name)) for col, name in zip(BREAKDOWN_COLUMNS[1:], candidates, strict=True)}
    return row, {"shape": shape.label, "times": times}


# --------------------------------------------------------------------------------------------------------------------
# Targets, machine, load
# --------------------------------------------------------------------------------------------------------------------


def check_targets(sections: dict[str, Section]) -> Section:
    """Whether ours is at least the target factor faster, on the target shapes."""
    section = Section(
        "targets",
        "Targets",
        f"Speed-up of ours over each competitor (median over median) on {', '.join(TARGET_SHAPES)}.",
        ["section", "shape", "vs", "speed-up", "target", "met"],
    )
    for key, competitor, factor in TARGETS:
        for raw in sections[key].raw:
            if not raw["shape"].startswith(TARGET_SHAPES):
                continue
            got = raw["speedup"][competitor]
            loaded = raw["times"]["ours"].get("foreign_cpu_share", 0.0) > LOADED_SHARE
            row = {
                "section": key,
                "shape": raw["shape"],
                "vs": competitor,
                "speed-up": fmt_ratio(got),
                "target": f">= {factor:g}x",
                "met": ("yes" if got >= factor else "**no**") + (" (loaded; rerun)" if loaded else ""),
            }
            section.add(row, {**row, "speedup": got, "target": factor, "met": got >= factor})
    return section


def warp_machine_info(device: torch.device) -> dict[str, Any]:
    """The shared machine description plus kornia's version, the device and the scheduling group."""
    # Whether warp's default backend could take the compiled kernel (torchstn.ext) on this machine.
    info = machine_info(kornia=kornia.__version__, device=str(device), fused_kernel=ext.available())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):  # Linux's per-session scheduling group and its nice value (priority)
        info["autogroup"] = Path("/proc/self/autogroup").read_text().strip()
    return info


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------

Job = Callable[[], tuple[dict[str, str], dict[str, Any]]]


def run_section(section: Section, jobs: Sequence[Job]) -> Section:
    print(f"\n## {section.title}\n" + " | ".join(section.columns), flush=True)
    for job in jobs:
        section.add(*job())
    return section


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for warp.md/json")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per candidate (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per candidate before timing")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, 1 warm-up")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-row-seconds", type=float, default=20.0, help=f"fewer repeats (>= {MIN_REPEATS}) for slower rows"
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="re-time a row this often while other processes load the CPU"
    )
    parser.add_argument("--idle-wait", type=float, default=120.0, help="seconds to wait for quiet before a retry")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.retries = 3, 1, 0
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    timer = Timer(args.repeats, args.warmup, device, args.max_row_seconds, LOADED_SHARE, args.retries, args.idle_wait)
    gen = torch.Generator().manual_seed(args.seed)  # one seeded stream; the workloads draw from it in order
    info = warp_machine_info(device)
    print(json.dumps(info, indent=2), flush=True)
    run_load = ForeignLoad()

    def jobs(bench: Callable[..., tuple[dict[str, str], dict[str, Any]]], *extra: Any) -> list[Job]:
        return [partial(bench, shape, timer, gen, *extra) for shape in SHAPES]

    sections = {
        s.key: s
        for s in (
            run_section(
                Section(
                    "affine_forward",
                    "1. Affine warp, forward",
                    "ours: `torchstn.warp(x, params, Affine(), output_size)`; torch: `F.grid_sample(x, "
                    "F.affine_grid(theta, ...))`; kornia: `warp_affine(x, M_pixel, dsize, align_corners=False)` with "
                    "`M_pixel = normalized_to_pixel(theta, src_size, dst_size)[:, :2]`. theta = identity + "
                    "N(0, 0.1²). Max abs diff: the competitor's output against ours.",
                    STANDARD_COLUMNS,
                ),
                jobs(bench_affine_forward),
            ),
            run_section(
                Section(
                    "affine_backward",
                    "2. Affine warp, forward + backward",
                    "Loss = (out * w).sum() with a fixed random w (i.e. `out.backward(w)`); leaves: theta (ours "
                    "`(B, 6)`, torch `(B, 2, 3)`, kornia the pixel matrix), and in the second variant the input too. "
                    "Grad rel diff = ||g_ours - g_other|| / ||g_ours|| (L2 over the tensor), kornia's theta gradient "
                    "taken through `normalized_to_pixel`.",
                    [*STANDARD_COLUMNS, "grad rel diff"],
                ),
                jobs(bench_affine_backward, False) + jobs(bench_affine_backward, True),
            ),
            run_section(
                Section(
                    "projective",
                    "3. Projective warp, forward",
                    "ours: `torchstn.warp(x, params, Projective(), output_size)`; kornia: `warp_perspective(x, "
                    "normalized_to_pixel(H, src_size, dst_size), dsize, align_corners=False)`; H = identity + "
                    "N(0, 0.1²) on the top rows, N(0, 0.02²) on the perspective entries. torch has no homography grid.",
                    STANDARD_COLUMNS,
                ),
                jobs(bench_projective),
            ),
            run_section(
                Section(
                    "tps",
                    "4. Thin-plate spline, 4x4 control points, forward",
                    "ours: `torchstn.warp(x, params, ThinPlateSpline((4, 4)))` (kernel cached by the transform; "
                    "'cold' builds a new transform per call); kornia: `get_tps_transform(target, source)` + "
                    "`warp_image_tps(x, source, ...)` on the same points (target = the 4x4 grid on [-1, 1], source = "
                    "target + N(0, 0.05²)). kornia keeps the input size, so the output is the input size here. "
                    "ctrl-pt error: max |f(target) - source|; grid diff: the two splines' sampling positions, in "
                    "source pixels (kornia centres its kernels on the source points, the textbook TPS on the target "
                    "points, so the two interpolants differ between control points); 'ours vs textbook': our grid "
                    f"against a float64 textbook TPS solved here, on {TEXTBOOK_SAMPLES} samples, in pixels.",
                    TPS_COLUMNS,
                ),
                jobs(bench_tps),
            ),
            run_section(
                Section(
                    "grid",
                    "5. Affine grid generation alone",
                    "ours: `torchstn.affine_grid(theta, (H', W'))`; torch: `F.affine_grid(theta, (B, C, H', W'))`.",
                    GRID_COLUMNS,
                ),
                jobs(bench_grid),
            ),
            run_section(
                Section(
                    "breakdown",
                    "6. Where our affine warp's time goes",
                    "Pieces of `torchstn.warp(x, params, Affine())`, timed in one loop: the warp (the fused kernel "
                    "where it is loaded) and the same warp on the grid path (`backend='torch'`: grid, then "
                    "`F.grid_sample`), the grid (`Affine().grid`, "
                    "contiguous, and in the layout warp uses, batch-strided where the rows are a multiple of 4 KiB), "
                    "`torchstn.sample` on a ready grid with its default finite check and with `nonfinite='ignore'` "
                    "(the difference is the check), bare `F.grid_sample`, and forward + backward (theta grad) with "
                    "and without the check; `F.grid_sample fwd+bwd` is the sampler alone with the grid as the leaf "
                    "(the floor for every candidate).",
                    BREAKDOWN_COLUMNS,
                ),
                jobs(bench_breakdown),
            ),
        )
    }
    sections["targets"] = check_targets(sections)
    info["foreign_cpu_share_run"] = run_load.share()  # the whole run, waits for quiet included
    shares = [t["foreign_cpu_share"] for s in sections.values() for r in s.raw for t in r.get("times", {}).values()]
    info["foreign_cpu_share_rows"] = {"median": statistics.median(shares), "max": max(shares)} if shares else None
    write_results(args, info, sections)


def write_results(args: argparse.Namespace, info: dict[str, Any], sections: dict[str, Section]) -> None:
    gpu = f" ({info['gpu']})" if "gpu" in info else ""
    rows = info["foreign_cpu_share_rows"]
    load = "unknown" if rows is None else f"median {fmt_share(rows['median'])}, max {fmt_share(rows['max'])}"
    autogroup = f" Scheduling group: `{info['autogroup']}`." if "autogroup" in info else ""
    kernel = "loaded, so ours is the fused warp" if info["fused_kernel"] else "not built, so ours is the grid path"
    header = [
        "# Warp benchmark",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Machine: {info['cpu']}, {info['logical_cores']} logical cores, torch threads {info['torch_threads']}, "
        f"device {info['device']}{gpu}; torch {info['torch']}, kornia {info['kornia']}, torchstn "
        f"{info['torchstn']}, Python {info['python']}. Fused kernel (torchstn.ext): {kernel}.",
        "",
        f"Median of {args.repeats} interleaved repetitions (fewer, at least {min(args.repeats, MIN_REPEATS)}, where a "
        f"row would take over {args.max_row_seconds:g} s; see `repeats` in warp.json) after up to {args.warmup} "
        "warm-up calls each; float32, align_corners=False, bilinear, zero padding. Ratios above 1 mean ours is faster.",
        "",
        f"Share of the machine's CPU time used by other processes while the rows were timed: {load} (0% is a "
        f"clean run; rows above {fmt_share(LOADED_SHARE)} are marked).{autogroup}",
        "",
    ]
    markdown = "\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections.values())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warp.md").write_text(markdown)
    payload = {
        "machine": info,
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "argv": sys.argv[1:]},
        "sections": {key: s.raw for key, s in sections.items()},
    }
    (args.out / "warp.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"\nOther processes' CPU share per row: {load}\nwrote {args.out / 'warp.md'} and {args.out / 'warp.json'}")


if __name__ == "__main__":
    main()
