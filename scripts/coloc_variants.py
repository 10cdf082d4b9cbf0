"""Co-localisation variants: which reading of the paper's loss keeps the attention off the blank background?

Taken literally (gradients through both crops of a pair, one partner per anchor, random crops at the
transformer's scale) the paper's co-localisation loss collapsed in our runs: every crop ended on empty background.
This script trains the same attention transformer on a small set (3000 training and 500 test images of one digit,
8 epochs, batch 64, Adam 1e-3, one thread) under variations, and prints per epoch the mean loss, the % of test
boxes with IoU > 0.5 and the mean scale. Before training it prints the encoder's typical squared feature
distances between two digits' crops and between a digit and a blank crop, the scale the margin is measured
against. The runs RESULTS.md tabulates and quotes are records in ``results/coloc-variants/``, one per command::

    python scripts/coloc_variants.py --start whole --bounds --record results/coloc-variants/whole-bounded.json

Variants (the defaults are the literal reading): ``--start`` where the crop begins (``digit``: the centre at the
digit's scale 28/84, as the model's default; ``half``: scale 0.5; ``whole``: the whole image); ``--bounds`` scale
in (0.2, 1.05) and translation in (-0.8, 0.8); ``--negatives digit`` draws the random crops at the digit's scale
(28x28 pixels, ``ColocTask(negatives="crop")``) instead of the transformer's; ``--lock-scale`` fixes the scale at
the digit's, so only the position is learnt; ``--positive detach`` lets the gradient reach a crop only through its
anchor terms; ``--pairs all`` uses every pair of the batch instead of one partner per anchor; ``--embedding``
compares raw encoder features, unit-normalised ones, or the classifier's softmax; ``--margin``; ``--clutter``.

``--record results/coloc-variants/NAME.json`` also writes the run as a record that ``scripts/make_results.py``
tabulates in RESULTS.md: the flags, the code's git sha, the machine, the encoder's distances and every epoch's
numbers. It refuses to start from a working tree with uncommitted changes, whose code nobody could check out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchstn._io import atomic_write_text
from torchstn.data import load_mnist
from torchstn.data.datasets import DistortedMNIST
from torchstn.data.distort import get_recipe
from torchstn.modules import Bounds, SpatialTransformer, conv_localisation
from torchstn.sampling import warp
from torchstn.train.rundir import git_info
from torchstn.train.tasks import ColocTask, TensorSource, train_encoder
from torchstn.transforms import Attention

DIGIT_SCALE = 28 / 84
STARTS = {"digit": DIGIT_SCALE, "half": 0.5, "whole": 1.0}


class LockedScale(nn.Module):
    """Replace the regressed scale with the digit's: only the translation is learnt."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        p = self.inner(x)
        return torch.cat((torch.full_like(p[:, :1], DIGIT_SCALE), p[:, 1:]), -1)


class Normalised(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: Tensor) -> Tensor:
        e = self.inner(x)
        return e.softmax(-1) if self.kind == "softmax" else torch.nn.functional.normalize(e, dim=-1)


def embedding(encoder: nn.Module, args: argparse.Namespace) -> nn.Module:
    return encoder if args.embedding == "features" else Normalised(encoder, args.embedding)


def _flags(argv: list[str]) -> str:
    """The command line's variant flags, without ``--record PATH``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--record":
            skip = True
        elif not arg.startswith("--record="):
            out.append(arg)
    return " ".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", choices=sorted(STARTS), default="digit")
    parser.add_argument("--bounds", action="store_true")
    parser.add_argument("--negatives", choices=["transformer", "digit"], default="transformer")
    parser.add_argument("--lock-scale", action="store_true")
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--clutter", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--embedding", choices=["features", "unit", "softmax"], default="features")
    parser.add_argument("--positive", choices=["grad", "detach"], default="grad")
    parser.add_argument("--pairs", choices=["one", "all"], default="one")
    parser.add_argument("--record", type=Path, default=None, help="write the run's record (JSON) here")
    args = parser.parse_args()
    git = git_info()
    if args.record is not None and git["git_dirty"] is not False:
        parser.error("--record: the working tree has uncommitted changes (or is no git checkout); commit first")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mnist = load_mnist(None)
    recipe = get_recipe("colocalisation", digit=3, clutter=args.clutter)
    train = DistortedMNIST(recipe, "train", n=3000, seed=0, mnist=mnist)
    test = DistortedMNIST(recipe, "test", n=500, seed=0, mnist=mnist)
    encoder = embedding(train_encoder(mnist.split("train"), 2, 0, keep_head=args.embedding == "softmax"), args)
    x, _ = train.tensors()
    x_test, _ = test.tensors()
    boxes, test_boxes = train.meta["boxes"], test.meta["boxes"]
    with torch.no_grad():  # the encoder's distance scale: crops centred on the true boxes, and a blank crop
        b = boxes[:200].float()
        cx, cy = (b[:, 0] + b[:, 2]) / 2 / 42 - 1, (b[:, 1] + b[:, 3]) / 2 / 42 - 1
        centred = warp(x[:200], torch.stack((torch.full_like(cx, DIGIT_SCALE), cx, cy), -1), Attention(), (28, 28))
        e3, e0 = encoder(centred), encoder(torch.zeros(1, 1, 28, 28))
        pair = (e3 - e3.roll(1, 0)).square().sum(-1).mean()
        blank = (e3 - e0).square().sum(-1).mean()
        print(f"d(3,3') {pair:.1f}  d(3,blank) {blank:.1f}", flush=True)
    epochs: list[dict[str, Any]] = []
    t = Attention()
    bounds = Bounds(translation=0.8, scale=(0.2, 1.05)) if args.bounds else None
    init = torch.tensor([STARTS[args.start], 0.0, 0.0])
    loc: nn.Module = conv_localisation(
        (1, 84, 84), t, channels=(8,), kernel_size=9, stride=4, hidden=(8, 8), init=init, bounds=bounds
    )
    if args.lock_scale:
        loc = LockedScale(loc)
    model = SpatialTransformer(loc, t, output_size=(28, 28))
    task = ColocTask(
        TensorSource(train.images, train.labels, meta=train.meta, target="boxes"),
        TensorSource(test.images, test.labels, meta=test.meta, target="boxes"),
        encoder,
        args.margin,
        84,
        positive=args.positive,
        pairs=args.pairs,
        negatives="crop" if args.negatives == "digit" else "transformer",
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        start, order, total = time.time(), torch.randperm(len(x)), 0.0
        for lo in range(0, len(x), 64):
            idx = order[lo : lo + 64]
            loss, _ = task.loss(model, x[idx], boxes[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            _, p = model(x_test, return_params=True)
            hit = 1 - task._misses(p, test_boxes).item() / len(x_test)
        epochs.append(
            {
                "epoch": epoch,
                "loss": total / len(x),
                "hit": 100 * hit,
                "scale": float(p[:, 0].mean()),
                "seconds": time.time() - start,
            }
        )
        print(
            f"epoch {epoch} loss {total / len(x):.3f} hit {100 * hit:.1f}% scale {p[:, 0].mean():.3f} "
            f"{time.time() - start:.0f}s",
            flush=True,
        )
    if args.record is not None:
        record = {
            "flags": _flags(sys.argv[1:]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "record"},
            "meta": {
                **git,
                "command": sys.argv,
                "torch": torch.__version__,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1},
            },
            "distances": {"digit_digit": float(pair), "digit_blank": float(blank)},
            "epochs": epochs,
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.record, json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
