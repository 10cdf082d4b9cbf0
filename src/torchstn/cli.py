"""The ``torchstn`` command.

``torchstn data NAME`` materialises a distorted MNIST split into the cache (or ``--cache-dir``) and writes a PNG
sheet of samples; ``torchstn data --list`` lists the recipes and their parameters.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parse_set(items: Sequence[str]) -> dict[str, object]:
    """``key=value`` pairs; values are Python literals (``0.5``, ``(0.7, 1.2)``, ``None``) or plain strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _cmd_data(args: argparse.Namespace) -> int:
    from torchstn.data import RECIPES, get_recipe, load_mnist, materialise
    from torchstn.viz import save_sheet

    if args.list:
        for name, cls in RECIPES.items():
            recipe = cls()
            fields = ", ".join(f"{k}={v!r}" for k, v in recipe.config().items() if k != "name")
            print(f"{name:<22} {fields}")
        return 0
    if args.name is None:
        raise SystemExit("data: give a recipe name (see `torchstn data --list`)")
    recipe = get_recipe(args.name, **_parse_set(args.set))
    mnist = load_mnist(args.mnist)
    source = mnist.split(args.split)
    n = len(source) if args.n is None else args.n
    if recipe.name == "volumetric" and n > 2000 and not args.force:
        raise SystemExit(f"data: {n} volumes of {recipe.shape()} take {n * 216_000 / 1e9:.1f} GB; pass --force")
    start = time.perf_counter()
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if not args.quiet:
            print(f"\r{recipe.name} {args.split}: {done}/{n}", end="", file=sys.stderr, flush=True)

    batch, path = materialise(recipe, source, args.split, n, args.seed, args.cache_dir, progress=progress)
    if not args.quiet and done:
        print(file=sys.stderr)
    print(f"{recipe.name} {args.split}: {len(batch.labels)} samples {tuple(batch.images.shape[1:])} -> {path}")
    print(f"  {'generated' if done else 'loaded from cache'} in {time.perf_counter() - start:.1f} s")
    sheet = Path(args.sheet) if args.sheet else path.with_suffix(".png")
    images = batch.images[:32]
    if images.ndim == 5:  # volumes: show the projection over depth
        images = images.float().mean(2) / 255.0
        images = images / images.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    boxes = batch.meta["boxes"][:32] if "boxes" in batch.meta else None
    save_sheet(sheet, images, labels=batch.labels[:32], boxes=boxes)
    print(f"  sheet: {sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchstn", description="Spatial Transformer Networks for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="materialise a distorted MNIST split and draw a sheet of samples")
    data.add_argument("name", nargs="?", help="recipe: rotated (r), rts, projective (p), elastic (e), tc, ...")
    data.add_argument("--list", action="store_true", help="list the recipes and their default parameters")
    data.add_argument("--split", default="train", help="train, valid, test or train+valid (default: train)")
    data.add_argument("--n", type=int, default=None, help="number of samples (default: one per source digit)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe parameters")
    data.add_argument("--mnist", default=None, help="IDX directory or mnist.pkl.gz (default: the bundled copy)")
    data.add_argument("--cache-dir", default=None, help="default: $TORCHSTN_CACHE or ~/.cache/torchstn")
    data.add_argument("--sheet", default=None, help="PNG path for the sample sheet (default: beside the cache)")
    data.add_argument("--force", action="store_true", help="allow very large volumetric sets")
    data.add_argument("--quiet", action="store_true", help="no progress output")
    data.set_defaults(func=_cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
