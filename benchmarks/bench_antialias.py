"""Anti-aliased warps (``antialias=True``): quality, flicker and cost against plain bilinear, in one process.

Reproduce (from the repository root; CPU, no network)::

    .venv/bin/python benchmarks/bench_antialias.py --out benchmarks/results

Sections:
    1. **Quality.** PSNR (dB, images in [0, 1]) against a reference computed by dense supersampling in float64:
       the same warp evaluated at ``--sub`` x ``--sub`` sub-pixel positions per output pixel (the grid of a
       ``sub`` times larger output, whose points are exactly those sub-positions) on the continuous bilinear
       image, box-filtered back (``avg_pool2d``). Images: a zone plate (``cos(pi r^2 / n)``, Nyquist at the
       edges), a fine checkerboard (2-pixel squares) and MNIST-RTS digits (``torchstn.data``, 42x42). Warps: a
       zoom out by 1, 1.5, 2, 4 and 8 (the output ``1/s`` of the input, a sub-pixel translation so that the
       sampling phase is not the lucky one where bilinear at exactly 2x equals a 2x2 box), a 30-degree rotation
       without and with a 2x shrink, and a strong perspective. Methods: ``F.grid_sample`` on our grid (plain),
       ``torchstn.warp`` without the option (its default backend: the fused kernel when built), with the option,
       and kornia's ``warp_affine``/``warp_perspective`` when kornia is importable.
    2. **Flicker.** The zone plate and the checkerboard translated by sub-pixel steps (``--frames`` steps of a
       quarter source pixel) under a 4x shrink; per frame the output's AC energy (variance); flicker is the mean
       absolute frame-to-frame energy change over the mean energy. Target: >= 5x lower than plain.
    3. **Cost.** Forward and forward+backward (gradients for the input and the parameters) of the plain grid
       path, the default warp and ``antialias=True`` at the birds shape (B x 3 x 448 x 448 -> 224: a 2x shrink,
       by a near-identity affine, the general path, and by the attention transform the paper's CUB
       transformers use, the axis-aligned path) and the co-localisation shape (B x 1 x 84 x 84 -> 28 crops with
       an attention transform of scale ~1: a 3x shrink); interleaved repetitions, medians
       (``_common.interleaved``) and the ratios. Target: <= 2x the plain warp.

Writes ``antialias.json`` (machine, settings, every number) into ``--out`` and prints a summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchstn
from _common import interleaved, machine_info
from torchstn._io import atomic_write_text
from torchstn.transforms import Affine, Attention, MatrixTransform, Projective, Transform

try:
    import kornia  # type: ignore[import-not-found]
except ImportError:  # the library never needs it
    kornia = None

SHRINKS = (1.0, 1.5, 2.0, 4.0, 8.0)
PHASE = (0.37, 0.21)  # source pixels


def zone_plate(n: int) -> Tensor:
    r = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return (0.5 + 0.5 * torch.cos(math.pi * (x * x + y * y) / n)).view(1, 1, n, n)


def checkerboard(n: int, cell: int = 2) -> Tensor:
    i = torch.arange(n) // cell
    return ((i.view(-1, 1) + i.view(1, -1)) % 2).to(torch.float64).view(1, 1, n, n)


def mnist_rts(n: int) -> Tensor | None:
    try:
        from torchstn.data import RotatedTranslatedScaled, generate, load_mnist

        batch = generate(RotatedTranslatedScaled(), load_mnist().test, n, seed=0, split="test")
    except (FileNotFoundError, ImportError) as err:
        print(f"MNIST-RTS skipped: {err}", flush=True)
        return None
    return batch.images.to(torch.float64) / 255.0


def warps(n: int) -> dict[str, tuple[Transform, Tensor, tuple[int, int]]]:
    """name -> (transform, params (1, P) float64, output size) for an ``n x n`` source."""
    tx, ty = (2 * PHASE[0] / n, 2 * PHASE[1] / n)
    out: dict[str, tuple[Transform, Tensor, tuple[int, int]]] = {}
    for s in SHRINKS:
        m = round(n / s)
        out[f"shrink {s:g}x"] = (Affine(), torch.tensor([[1.0, 0, tx, 0, 1.0, ty]], dtype=torch.float64), (m, m))
    c, sn = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = torch.tensor([[c, -sn, tx, sn, c, ty]], dtype=torch.float64)
    out["rotate 30deg"] = (Affine(), rot, (n, n))
    out["rotate 30deg + 2x"] = (Affine(), rot, (n // 2, n // 2))
    persp = torch.tensor([[1.0, 0, tx, 0, 1.0, ty, 0, 0.6]], dtype=torch.float64)
    out["perspective"] = (Projective(), persp, (n // 2, n // 2))
    return out


def kornia_warp(x: Tensor, t: MatrixTransform, p: Tensor, size: tuple[int, int]) -> Tensor:
    """kornia's pixel-space warp of the same map (its ``warp_*`` take dst->src inverted, in pixels)."""
    assert kornia is not None
    h, w = x.shape[-2:]
    m = t.matrix(p, src_size=(h, w))  # (1, 3, 3) normalised src_from_dst
    src_pix = torch.tensor([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]], dtype=x.dtype)
    dst_norm = torch.tensor(
        [[2 / size[1], 0, 1 / size[1] - 1], [0, 2 / size[0], 1 / size[0] - 1], [0, 0, 1]], dtype=x.dtype
    )
    dst_from_src = torch.linalg.inv(src_pix @ m[0] @ dst_norm)[None]
    out: Tensor = kornia.geometry.transform.warp_perspective(x, dst_from_src, size, align_corners=True)
    return out


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def quality(images: dict[str, Tensor], sub: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, x in images.items():
        n = x.shape[-1]
        for wname, (t, p, size) in warps(n).items():
            pb = p.expand(x.shape[0], -1).contiguous()
            big = (size[0] * sub, size[1] * sub)
            ref = F.avg_pool2d(torchstn.warp(x, pb, t, big, backend="torch"), sub)
            plain = torchstn.warp(x, pb, t, size, backend="torch")
            row = {
                "plain": psnr(plain, ref),
                "ours": psnr(torchstn.warp(x, pb, t, size), ref),
                "ours_antialias": psnr(torchstn.warp(x, pb, t, size, antialias=True), ref),
                # the same call without the option (the fused kernel where it runs, else the grid path)
                "antialias_equals_plain": bool(
                    torch.equal(torchstn.warp(x, pb, t, size, antialias=True), torchstn.warp(x, pb, t, size))
                ),
            }
            if kornia is not None and isinstance(t, MatrixTransform):
                row["kornia"] = psnr(kornia_warp(x, t, pb, size), ref)
            row["gain_db"] = row["ours_antialias"] - row["plain"]
            rows[f"{name} / {wname}"] = row
            print(
                f"  {name:12s} {wname:18s} "
                + "  ".join(f"{k}={v:.2f}" for k, v in row.items() if k != "antialias_equals_plain")
                + f"  identical={row['antialias_equals_plain']}",
                flush=True,
            )
    return rows


def flicker(images: dict[str, Tensor], frames: int, sub: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    t = Affine()
    for name, x in images.items():
        n = x.shape[-1]
        m = n // 4
        energies: dict[str, list[float]] = {"plain": [], "ours_antialias": [], "reference": []}
        for k in range(frames):
            shift = 0.25 * k * 2 / n  # a quarter source pixel per frame, along both axes
            p = torch.tensor([[1.0, 0, shift, 0, 1.0, 0.7 * shift]], dtype=torch.float64)
            outs = {
                "plain": torchstn.warp(x, p, t, (m, m), backend="torch"),
                "ours_antialias": torchstn.warp(x, p, t, (m, m), antialias=True),
                "reference": F.avg_pool2d(torchstn.warp(x, p, t, (m * sub, m * sub), backend="torch"), sub),
            }
            for key, out in outs.items():
                energies[key].append(float(out.var()))
        row: dict[str, Any] = {}
        for key, e in energies.items():
            mean = sum(e) / len(e)
            row[key] = sum(abs(b - a) for a, b in itertools.pairwise(e)) / (len(e) - 1) / mean
        row["plain_over_ours"] = row["plain"] / row["ours_antialias"]
        rows[name] = row
        print(f"  {name:12s} " + "  ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
    return rows


def cost(repeats: int, birds_batch: int, coloc_batch: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[Tensor, Transform, Tensor, tuple[int, int]]] = {
        "birds 448->224": (
            torch.rand(birds_batch, 3, 448, 448, generator=gen),
            Affine(),
            Affine().identity_params(birds_batch) + 0.02 * torch.randn(birds_batch, 6, generator=gen),
            (224, 224),
        ),
        "birds 448->224, attention": (
            torch.rand(birds_batch, 3, 448, 448, generator=gen),
            Attention(),
            Attention().identity_params(birds_batch) + 0.02 * torch.randn(birds_batch, 3, generator=gen),
            (224, 224),
        ),
        "co-localisation 84->28": (
            torch.rand(coloc_batch, 1, 84, 84, generator=gen),
            Attention(),
            Attention().identity_params(coloc_batch) + 0.02 * torch.randn(coloc_batch, 3, generator=gen),
            (28, 28),
        ),
    }
    rows: dict[str, Any] = {}
    for name, (x, t, p, size) in shapes.items():
        variants: dict[str, dict[str, Any]] = {
            "plain (grid path)": {"backend": "torch"},
            "ours default": {},
            "ours antialias": {"antialias": True},
        }

        def forward(
            kw: dict[str, Any], x: Tensor = x, p: Tensor = p, t: Transform = t, size: tuple[int, int] = size
        ) -> Callable[[], object]:
            def run() -> object:
                with torch.no_grad():
                    return torchstn.warp(x, p, t, size, **kw)

            return run

        def backward(
            kw: dict[str, Any], x: Tensor = x, p: Tensor = p, t: Transform = t, size: tuple[int, int] = size
        ) -> Callable[[], object]:
            xg, pg = x.clone().requires_grad_(), p.clone().requires_grad_()

            def run() -> object:
                out = torchstn.warp(xg, pg, t, size, **kw)
                return torch.autograd.grad(out.square().mean(), (xg, pg))

            return run

        row: dict[str, Any] = {"shape": f"{tuple(x.shape)} -> {size}"}
        for label, make in (("forward", forward), ("forward+backward", backward)):
            stats, load = interleaved({k: make(kw) for k, kw in variants.items()}, repeats, warmup=2)
            med = {k: s.median_ms for k, s in stats.items()}
            row[label] = {
                "median_ms": med,
                "iqr_ms": {k: s.iqr_ms for k, s in stats.items()},
                "repeats": repeats,
                "other_processes_cpu_share": load,
                "ratio_antialias_over_plain": med["ours antialias"] / med["plain (grid path)"],
                "ratio_antialias_over_default": med["ours antialias"] / med["ours default"],
            }
            print(
                f"  {name:26s} {label:17s} "
                + "  ".join(f"{k}={v:.2f}ms" for k, v in med.items())
                + f"  ratio vs plain={row[label]['ratio_antialias_over_plain']:.2f}"
                + f" vs default={row[label]['ratio_antialias_over_default']:.2f}  load={load}",
                flush=True,
            )
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--size", type=int, default=256, help="zone plate and checkerboard size")
    ap.add_argument("--sub", type=int, default=16, help="reference sub-samples per output pixel and axis")
    ap.add_argument("--digits", type=int, default=16, help="MNIST-RTS digits")
    ap.add_argument("--frames", type=int, default=16, help="flicker sweep frames")
    ap.add_argument("--repeats", type=int, default=10, help="timed repetitions per cost row")
    ap.add_argument("--birds-batch", type=int, default=2)
    ap.add_argument("--coloc-batch", type=int, default=16)
    args = ap.parse_args(argv)

    images = {"zone plate": zone_plate(args.size), "checkerboard": checkerboard(args.size)}
    digits = mnist_rts(args.digits)
    if digits is not None:
        images["MNIST-RTS"] = digits
    notes = [] if kornia is not None else ["kornia is not importable here: its columns are skipped"]
    print("1. quality (PSNR dB vs the supersampled reference)", flush=True)
    q = quality(images, args.sub)
    print("2. flicker (mean |frame-to-frame energy change| / mean energy, 4x shrink)", flush=True)
    fl = flicker({k: v for k, v in images.items() if k != "MNIST-RTS"}, args.frames, args.sub)
    print("3. cost (ms, medians)", flush=True)
    c = cost(args.repeats, args.birds_batch, args.coloc_batch)
    payload = {
        "command": "python benchmarks/bench_antialias.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "settings": vars(args) | {"out": str(args.out), "phase_px": PHASE, "shrinks": SHRINKS},
        "notes": notes,
        "quality_psnr_db": q,
        "flicker": fl,
        "cost": c,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "antialias.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    for note in notes:
        print("note:", note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
