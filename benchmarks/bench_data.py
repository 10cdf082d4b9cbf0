"""Distorted-data generation benchmark: the library's batched generator against per-sample generation.

Reproduce (from the repository root; CPU, torch's default thread count, an otherwise idle machine)::

    .venv/bin/python benchmarks/bench_data.py --out benchmarks/results

``--quick`` is a smoke run (one thread, ``--n 256``, 8 volumes; results are noise).

Source: real MNIST, the bundled copy (``torchstn.data.load_mnist()``), its ``train`` split. For every recipe
(``rotated``, ``rts``, ``projective``, ``elastic``, ``translated_cluttered``, ``addition``, ``colocalisation``, and
``volumetric`` with ``--n-volumetric`` samples, each one a 60^3 volume) three ways of producing the same ``n``
samples are timed in one process:

* **batched**: the library, ``torchstn.data.datasets.generate(recipe, source, n, seed, "train",
  batch_size=--batch-size)``: vectorised draws and one warp per batch.
* **one by one**: the library's recipe called once per sample with a batch of one index,
  ``recipe.generate(source, torch.tensor([i]), seed, "train")``, then concatenated: what a map-style
  ``Dataset.__getitem__`` that generates on the fly would do. Same samples, bit for bit (checked).
* **PIL** (``rotated``, ``rts``, ``projective``): the straightforward per-sample pipeline, with MNIST held as a
  ``uint8`` array (converted once, untimed), parameters drawn with Python's ``random``, and one Pillow call per
  sample (``Image.rotate``, ``Image.transform`` with ``AFFINE`` or ``PERSPECTIVE`` coefficients, a 4-point solve
  with numpy for the latter), bilinear resampling, results stacked into one tensor. Before timing, the PIL
  functions are fed the library's own drawn parameters and their images compared with the library's (grey-level
  difference, 0-255), so both sides provably do the same job.

Interleaving: each repetition runs every candidate of a recipe once, in an order rotated from one repetition to the
next, after one untimed warm-up on a few samples; tables report samples/s from the median of ``--repeats``
repetitions and the speed-up of the batched generator over each per-sample approach. The share of CPU time that
other processes used meanwhile (``/proc/stat``) is reported: above a few percent the numbers are not representative.

Outputs ``data.md`` (the table) and ``data.json`` (machine, settings, per recipe the medians, IQRs and checks) in
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor

from _common import interleaved, machine_info
from torchstn.data.datasets import generate
from torchstn.data.distort import Projected, Recipe, Rotated, RotatedTranslatedScaled, get_recipe
from torchstn.data.mnist import MNISTSplit, load_mnist

RECIPES = (
    "rotated",
    "rts",
    "projective",
    "elastic",
    "translated_cluttered",
    "addition",
    "colocalisation",
    "volumetric",
)
SPLIT = "train"
CHECK_SAMPLES = 64  # samples compared between approaches before timing
WARMUP_SAMPLES = 16
LOADED_SHARE = 0.05  # rows timed while other processes used more CPU than this are flagged
BILINEAR = Image.Resampling.BILINEAR

Job = Callable[[], object]


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# The library, batched and one sample at a time
# --------------------------------------------------------------------------------------------------------------------


def batched(recipe: Recipe, source: MNISTSplit, n: int, seed: int, batch_size: int) -> Tensor:
    """The library's generator: ``n`` samples in batches of ``batch_size``, ``(n, C, H, W)`` uint8."""
    return generate(recipe, source, n, seed, SPLIT, batch_size=batch_size).images


def one_by_one(recipe: Recipe, source: MNISTSplit, n: int, seed: int) -> Tensor:
    """The library's recipe called with a batch of one index per sample, then concatenated."""
    return torch.cat([recipe.generate(source, torch.tensor([i]), seed, SPLIT).images for i in range(n)])


# --------------------------------------------------------------------------------------------------------------------
# PIL, one sample at a time
# --------------------------------------------------------------------------------------------------------------------
# Pillow's transforms map output pixel positions to input positions in continuous pixel coordinates (pixel j spans
# [j, j + 1]), the align_corners=False convention of the library; a 28x28 digit's centre is (14, 14).


def pil_rotated(digit: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a ``(28, 28)`` uint8 digit about its centre; ``angle`` in the recipe's sense (Pillow's is opposite)."""
    return np.asarray(Image.fromarray(digit).rotate(-angle, resample=BILINEAR))


def pil_rts(digit: np.ndarray, angle: float, scale: float, offset: tuple[float, float], canvas: int) -> np.ndarray:
    """Rotate, scale and place a digit in a ``canvas`` square; ``offset`` (x, y) pixels from the canvas centre.

    Output pixel ``p`` reads the digit at ``q = R(-angle) (p - centre - offset) / scale + 14``.
    """
    a = math.radians(angle)
    k, c, s = 1.0 / scale, math.cos(a), math.sin(a)
    px, py = canvas / 2 + offset[0], canvas / 2 + offset[1]
    coeffs = (k * c, k * s, 14 - k * (c * px + s * py), -k * s, k * c, 14 - k * (-s * px + c * py))
    img = Image.fromarray(digit).transform((canvas, canvas), Image.Transform.AFFINE, coeffs, resample=BILINEAR)
    return np.asarray(img)


_UNIT = ((-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0))  # the recipe's corner order, normalised
_SOURCE_CORNERS = ((0.0, 0.0), (28.0, 0.0), (0.0, 28.0), (28.0, 28.0))  # the same in pixels


def pil_projective(digit: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Warp a digit so that its corners land at ``corners`` ``(4, 2)`` (pixels, x y); 28x28 output."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for r, ((x, y), (u, v)) in enumerate(zip(corners, _SOURCE_CORNERS, strict=True)):
        a[r] = (x, y, 1, 0, 0, 0, -u * x, -u * y)
        a[r + 4] = (0, 0, 0, x, y, 1, -v * x, -v * y)
        b[r], b[r + 4] = u, v
    coeffs = tuple(np.linalg.solve(a, b).tolist())
    img = Image.fromarray(digit).transform((28, 28), Image.Transform.PERSPECTIVE, coeffs, resample=BILINEAR)
    return np.asarray(img)


def pil_generate(recipe: Recipe, digits: np.ndarray, n: int, seed: int) -> Tensor:
    """``n`` samples the straightforward way: Python ``random`` draws, one Pillow call each; ``(n, 1, H, W)``."""
    rng = random.Random(seed)
    out: list[np.ndarray] = []
    for i in range(n):
        digit = digits[i % len(digits)]
        if isinstance(recipe, Rotated):
            out.append(pil_rotated(digit, rng.uniform(*recipe.angle)))
        elif isinstance(recipe, RotatedTranslatedScaled):
            angle, scale = rng.uniform(*recipe.angle), rng.uniform(*recipe.scale)
            room = (recipe.canvas - 28 * scale) / 2
            offset = (rng.uniform(-room, room), rng.uniform(-room, room))
            out.append(pil_rts(digit, angle, scale, offset, recipe.canvas))
        elif isinstance(recipe, Projected):
            scale = rng.uniform(*recipe.scale)
            corners = np.array(
                [[14 + 14 * cx * scale + rng.gauss(0, recipe.corner_std) for cx in corner] for corner in _UNIT]
            )
            out.append(pil_projective(digit, corners))
        else:
            raise TypeError(f"no PIL baseline for {recipe.name}")
    return torch.from_numpy(np.stack(out)[:, None])


def has_pil(recipe: Recipe) -> bool:
    return isinstance(recipe, Rotated | RotatedTranslatedScaled | Projected)


def pil_from_library(recipe: Recipe, digits: np.ndarray, meta: dict[str, Tensor], i: int) -> np.ndarray:
    """Sample ``i`` rendered by the PIL functions from the parameters the library drew for it."""
    digit = digits[i % len(digits)]
    if isinstance(recipe, Rotated):
        return pil_rotated(digit, float(meta["angle"][i]))
    if isinstance(recipe, RotatedTranslatedScaled):
        off = meta["offset"][i].tolist()
        return pil_rts(digit, float(meta["angle"][i]), float(meta["scale"][i]), (off[0], off[1]), recipe.canvas)
    return pil_projective(digit, (meta["corners"][i].numpy() + 1.0) * 14.0)


# --------------------------------------------------------------------------------------------------------------------
# One recipe
# --------------------------------------------------------------------------------------------------------------------


def checks(recipe: Recipe, source: MNISTSplit, digits: np.ndarray, seed: int, batch_size: int) -> dict[str, Any]:
    """Batched == one by one (bit for bit) and PIL vs library (grey levels) on the first samples."""
    k = min(CHECK_SAMPLES, 8) if recipe.name == "volumetric" else CHECK_SAMPLES
    ref = generate(recipe, source, k, seed, SPLIT, batch_size=batch_size)
    result: dict[str, Any] = {
        "samples": k,
        "one_by_one_equal": bool(torch.equal(ref.images, one_by_one(recipe, source, k, seed))),
    }
    if has_pil(recipe):
        ours = ref.images[:, 0].numpy().astype(np.int16)
        pil = np.stack([pil_from_library(recipe, digits, ref.meta, i) for i in range(k)]).astype(np.int16)
        diff = np.abs(pil - ours)
        result["pil_max_abs_diff"] = int(diff.max())
        result["pil_mean_abs_diff"] = float(diff.mean())
    return result


def bench_recipe(name: str, source: MNISTSplit, digits: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    recipe = get_recipe(name)
    n = args.n_volumetric if name == "volumetric" else args.n
    check = checks(recipe, source, digits, args.seed, args.batch_size)

    def candidates(m: int) -> dict[str, Job]:
        jobs: dict[str, Job] = {
            "batched": lambda: batched(recipe, source, m, args.seed, args.batch_size),
            "one_by_one": lambda: one_by_one(recipe, source, m, args.seed),
        }
        if has_pil(recipe):
            jobs["pil"] = lambda: pil_generate(recipe, digits, m, args.seed)
        return jobs

    for job in candidates(min(n, WARMUP_SAMPLES)).values():
        job()
    times, share = interleaved(candidates(n), args.repeats)
    rate = {k: n / (t.median_ms / 1e3) for k, t in times.items()}
    row = {
        "recipe": name,
        "shape": list(recipe.shape()),
        "n": n,
        "times": {k: vars(t) for k, t in times.items()},
        "samples_per_s": rate,
        "speedup_vs_one_by_one": rate["batched"] / rate["one_by_one"],
        "speedup_vs_pil": rate["batched"] / rate["pil"] if "pil" in rate else None,
        "checks": check,
        "foreign_cpu_share": share,
    }
    print(format_row(row), flush=True)
    return row


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------

COLUMNS = [
    "recipe",
    "sample shape",
    "n",
    "batched /s",
    "one by one /s",
    "PIL /s",
    "batched / one by one",
    "batched / PIL",
    "checks",
    "other CPU",
]


def fmt_rate(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}x"


def format_row(r: dict[str, Any]) -> str:
    return " | ".join(row_cells(r))


def row_cells(r: dict[str, Any]) -> list[str]:
    rate, check = r["samples_per_s"], r["checks"]
    notes = ["same bytes" if check["one_by_one_equal"] else "**one by one differs**"]
    if "pil_max_abs_diff" in check:
        notes.append(f"PIL max {check['pil_max_abs_diff']}, mean {check['pil_mean_abs_diff']:.2f} grey levels")
    share = r["foreign_cpu_share"]
    return [
        f"`{r['recipe']}`",
        "x".join(str(v) for v in r["shape"]),
        str(r["n"]),
        fmt_rate(rate["batched"]),
        fmt_rate(rate["one_by_one"]),
        fmt_rate(rate.get("pil")),
        fmt_ratio(r["speedup_vs_one_by_one"]),
        fmt_ratio(r["speedup_vs_pil"]),
        "; ".join(notes),
        "?" if share is None else f"{100 * share:.0f}%",
    ]


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    shares = [r["foreign_cpu_share"] for r in rows if r["foreign_cpu_share"] is not None]
    loaded = max(shares, default=0.0) > LOADED_SHARE
    lines = [
        "# Distorted-data generation",
        "",
        "Generated by `benchmarks/bench_data.py`; reproduce with:",
        "",
        f"    {command}",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores of {info['logical_cores']}, "
        f"torch {info['torch']}, {info['torch_threads']} torch threads, Pillow {info['pillow']}, "
        f"Python {info['python']}. Samples/s from the median of {args.repeats} interleaved repetitions; generator "
        f"batch size {args.batch_size}; source: MNIST `{SPLIT}` ({info['source']})."
        + (" **--quick: a smoke run, not a measurement.**" if args.quick else ""),
        "",
        "`batched`: `torchstn.data.datasets.generate` (vectorised). `one by one`: the same recipe called with a batch "
        "of one index per sample. `PIL`: per-sample Pillow pipeline (Python `random` draws, `Image.rotate` / "
        "`Image.transform` AFFINE or PERSPECTIVE, bilinear). `checks`: one-by-one output equal to the batched output "
        f"byte for byte, and PIL fed the library's drawn parameters vs the library, on the first {CHECK_SAMPLES} "
        "samples (8 volumes). `other CPU`: share of the machine's CPU that other processes used meanwhile."
        + (
            " **Timed under load (other processes used up to "
            f"{100 * max(shares):.0f}% of the CPU): these numbers are not representative.**"
            if loaded
            else ""
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "|".join("---:" for _ in COLUMNS[2:8]) + "|---|---:|",
    ]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where data.md and data.json go")
    p.add_argument("--n", type=int, default=None, help="samples per candidate (default 8192; 256 with --quick)")
    p.add_argument("--n-volumetric", type=int, default=None, help="volumes per candidate (default 64; 8 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per recipe")
    p.add_argument("--batch-size", type=int, default=4096, help="batch size of the library's generator")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --quick)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, metavar="RECIPE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: one thread, few samples")
    args = p.parse_args(argv)
    q = args.quick
    args.n = args.n if args.n is not None else (256 if q else 8192)
    args.n_volumetric = args.n_volumetric if args.n_volumetric is not None else (8 if q else 64)
    args.threads = args.threads if args.threads is not None else (1 if q else None)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mnist = load_mnist()
    source = mnist.split(SPLIT)
    digits = (source.images * 255.0).round().to(torch.uint8).numpy()  # a per-sample pipeline holds uint8 digits
    info = machine_info(
        numpy=np.__version__,
        pillow=PIL.__version__,
        source=Path(mnist.source).name,
        mnist_load_s=time.perf_counter() - start,
    )
    print(f"{info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    print(" | ".join(COLUMNS), flush=True)
    rows = [bench_recipe(name, source, digits, args) for name in args.recipes]
    info["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    command = (".venv/bin/python benchmarks/bench_data.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    md = markdown(rows, info, args, command)
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.md").write_text(md)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {
        "machine": info,
        "settings": settings,
        "command": command,
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "data.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'data.md'} and {args.out / 'data.json'} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
