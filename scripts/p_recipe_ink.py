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
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from error_anatomy import ink_outside as share_outside

from torchstn.data import generate, get_recipe, load_mnist


def ink_outside(corner_std: float, n: int) -> torch.Tensor:
    """Per digit, the share (0-1) of its warped ink outside the recipe's frame (``error_anatomy.ink_outside``)."""
    source = load_mnist().split("test")
    recipe = get_recipe("projective", corner_std=corner_std)
    batch = generate(recipe, source, n, seed=0, split="test")
    digits = source.images[recipe.source_index(torch.arange(n), source)]
    return share_outside(digits, batch.meta["matrix"]) / 100.0


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
