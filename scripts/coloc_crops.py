"""Where a co-localisation run's crops land on its test images: the hit rate (IoU > 0.5 with the true box), the
crops' scale against the true box's, how often the crop holds the whole true box, and how often the hit would
be scored with the crop's centre kept and its size set to the true box's (is the centre or the scale wrong?), how
many of the misses still overlap the box (IoU > 0.3: a crop beside the digit, not on a clutter piece elsewhere),
and the median distance in pixels from the crop's centre to the box's, over the hits and over the misses.

Reads run directories (their config.yaml and checkpoints/last.pt, not committed) and prints one row each::

    .venv/bin/python scripts/coloc_crops.py runs/coloc_clutter/coloc_attention/e20-seed*
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from torchstn.geometry import attention_boxes
from torchstn.train.factories import build_model
from torchstn.train.rundir import load_checkpoint
from torchstn.train.tasks import _mnist_sources, box_iou


def crops(run: Path) -> dict[str, float]:
    """The measurements of one run directory on its test split."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    _, test, _ = _mnist_sources(config)
    model = build_model(config)
    model.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    model.eval()
    x, boxes = test.images.float() / 255.0, test.meta["boxes"].to(torch.float32)  # as the task batches them
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with torch.no_grad():
        params = torch.cat([model(x[i : i + 256], return_params=True)[1] for i in range(0, len(x), 256)])
    pred = attention_boxes(params, size)
    iou = box_iou(pred, boxes)
    side = (boxes[:, 2] - boxes[:, 0]).clamp_min(1e-6)
    scale = (pred[:, 2] - pred[:, 0]) / side  # the crop's width over the true box's
    inside = (pred[:, 0] <= boxes[:, 0]) & (pred[:, 1] <= boxes[:, 1]) & (pred[:, 2] >= boxes[:, 2])
    inside &= pred[:, 3] >= boxes[:, 3]
    centre = (pred[:, :2] + pred[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    resized = torch.cat((centre - half, centre + half), -1)  # the crop's centre, the true box's size
    hit = iou > 0.5
    error = (centre - (boxes[:, :2] + boxes[:, 2:]) / 2).norm(dim=1)  # the crop's centre from the box's, pixels
    nan = float("nan")
    return {
        "hits %": 100.0 * float(hit.float().mean()),
        "median crop/box size": float(scale.median()),
        "holds the box %": 100.0 * float(inside.float().mean()),
        "hits at the true size %": 100.0 * float((box_iou(resized, boxes) > 0.5).float().mean()),
        "misses near the box % (IoU > 0.3)": 100.0 * float((iou[~hit] > 0.3).float().mean()) if (~hit).any() else nan,
        "centre error px (median), hits": float(error[hit].median()) if hit.any() else nan,
        "centre error px (median), misses": float(error[~hit].median()) if (~hit).any() else nan,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for run in args.runs:
        row = crops(run)
        print(f"{run}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
