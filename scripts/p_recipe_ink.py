"""How much of each digit the P recipe pushes out of its 28x28 frame, for one or more corner spreads.

The P column (projective distortion) as reconstructed is much harder for every model than the paper's P. One
suspect is clipping: corners moved by N(0, 5 px) on a 28-pixel image could push strokes out of the frame. This
script warps the same test digits with the recipe's own homographies onto a canvas three times as wide and
reports the share of the ink that lands outside the central 28x28 window (the recipe's output).

Usage::

    .venv/bin/python scripts/p_recipe_ink.py [--n 2000] [--corner-std 5 2.5]
"""

from __future__ import annotations

import argparse

import torch

import torchstn
from torchstn.data import generate, get_recipe, load_mnist
from torchstn.transforms import Projective


def ink_outside(corner_std: float, n: int, widen: float = 3.0) -> torch.Tensor:
    """Per digit, the share of its warped ink outside the recipe's frame."""
    source = load_mnist().split("test")
    recipe = get_recipe("projective", corner_std=corner_std)
    batch = generate(recipe, source, n, seed=0, split="test")
    h = batch.meta["matrix"] @ torch.diag(torch.tensor([widen, widen, 1.0], dtype=torch.float64))
    digits = source.images[recipe.source_index(torch.arange(n), source)][:, None].float() / 255.0
    side = round(28 * widen)
    wide = torchstn.warp(digits, (h / h[:, 2:, 2:]).reshape(-1, 9)[:, :8].float(), Projective(), (side, side))
    lo, hi = (side - 28) // 2, (side - 28) // 2 + 28
    return 1.0 - wide[..., lo:hi, lo:hi].sum((1, 2, 3)) / wide.sum((1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--corner-std", type=float, nargs="+", default=[5.0, 2.5])
    args = parser.parse_args()
    for std in args.corner_std:
        lost = ink_outside(std, args.n)
        print(
            f"corner_std={std:g} px: ink outside the 28x28 frame: mean {100 * float(lost.mean()):.1f}%, "
            f"more than 10% lost in {100 * float((lost > 0.1).float().mean()):.1f}% of the digits, "
            f"more than 25% in {100 * float((lost > 0.25).float().mean()):.1f}%"
        )


if __name__ == "__main__":
    main()
