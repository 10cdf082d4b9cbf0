"""Where a co-localisation run's crops land on its test images: the hit rate (IoU > 0.5 with the true box), the
crops' scale against the true box's, how often the crop holds the whole true box, and how often the hit would
be scored with the crop's centre kept and its size set to the true box's (is the centre or the scale wrong?), how
many of the misses still overlap the box (IoU > 0.3: a crop beside the digit, not on a clutter piece elsewhere),
and the median distance in pixels from the crop's centre to the box's, over the hits and over the misses.

Reads run directories (their config.yaml and checkpoints/last.pt, not committed) and prints one row each::

    .venv/bin/python scripts/coloc_crops.py runs/coloc_clutter/coloc_attention/e20-seed*

With ``--record RESULTS`` it also writes the measurements of each run into its committed record, as
``RESULTS/<column>/<model>/e<epochs>-seed<seed>/crops.json``, where ``scripts/make_results.py`` shows them (the
table of crops). A run is refused, and nothing of it written, unless its record exists, names the same code and
config, the checkpoint is that of the run's last epoch, and the hit rate measured again from the checkpoint
is the record's logged one: the measurements are of the model the record scored. The measuring code (``src/``
and ``scripts/``) must be committed, and ``crops.json`` names its commit and the checkpoint's SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import CROPS_FILE, HIT_TOLERANCE, ROOT, Experiments, RecordError, config_differences, read_record
from record import cell_of_run

from torchstn._io import atomic_write_text
from torchstn.geometry import attention_boxes
from torchstn.train.factories import build_model
from torchstn.train.rundir import git_info, load_checkpoint
from torchstn.train.tasks import _mnist_sources, box_iou

__all__ = ["crops", "measuring_code", "record_crops"]


def crops(run: Path, state: dict[str, Any] | None = None) -> dict[str, float]:
    """The measurements of one run directory on its test split (``state``: its loaded last checkpoint)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    _, test, _ = _mnist_sources(config)
    model = build_model(config)
    model.load_state_dict((state or load_checkpoint(run / "checkpoints" / "last.pt"))["model"])
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


def measuring_code(repo: Path = ROOT) -> dict[str, Any]:
    """The commit the measurement runs from, and whether the code it runs (``src/``, ``scripts/``) has uncommitted
    changes: the records' own files (an earlier ``crops.json`` not yet committed) do not make it dirty."""
    return git_info(repo, ("src", "scripts"))


def record_crops(run: Path, into: Path, experiments: Experiments, code: dict[str, Any] | None = None) -> Path:
    """Measure ``run`` and write the measurements into its committed record under ``into``; returns the file
    written. RecordError when the record is missing or is not of this run, or the measuring code is not committed
    (``code``: its ``measuring_code``, default this repository's)."""
    code = measuring_code() if code is None else code
    if code.get("git_dirty") is not False or not code.get("git_sha"):
        raise RecordError("the measuring code has uncommitted changes (or no commit): commit it first")
    cell = cell_of_run(run, experiments)
    dest = into / cell.path
    if not (dest / "metrics.json").is_file():
        raise RecordError(f"{run}: no committed record {dest} to measure for")
    record = read_record(dest, cell)
    run_meta, record_meta = (json.loads((d / "meta.json").read_text()) for d in (run, dest))
    if run_meta.get("git_sha") != record_meta.get("git_sha"):
        raise RecordError(f"{run}: trained from {run_meta.get('git_sha')}, its record names {record.sha}")
    diff = config_differences(yaml.safe_load((run / "config.yaml").read_text()), record.config)
    if diff:
        raise RecordError(f"{run}: its config differs from its record's in {', '.join(diff)}")
    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        raise RecordError(f"{run}: no checkpoints/last.pt to measure")
    data = path.read_bytes()
    state = load_checkpoint(path)
    if state.get("epoch") != cell.epochs or state.get("partial"):
        raise RecordError(f"{path}: the checkpoint of epoch {state.get('epoch')}, not the last ({cell.epochs})")
    measures = crops(run, state)
    logged = 100.0 - record.test_error
    if abs(measures["hits %"] - logged) > HIT_TOLERANCE:
        raise RecordError(f"{run}: {measures['hits %']:.2f}% of boxes found again, the record logged {logged:.2f}")
    out = dest / CROPS_FILE
    body = {
        "measures": {k: None if math.isnan(v) else v for k, v in measures.items()},  # no misses: no miss's figures
        "checkpoint_sha256": hashlib.sha256(data).hexdigest(),
        "code": code["git_sha"],
        "command": f"scripts/coloc_crops.py --record {into.name} {run.as_posix()}",
    }
    atomic_write_text(out, json.dumps(body, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--record", type=Path, default=None, metavar="RESULTS", help="write each run's crops.json there")
    ap.add_argument("--experiments", type=Path, default=ROOT / "results" / "experiments.yaml")
    args = ap.parse_args(argv)
    experiments = Experiments(args.experiments) if args.record else None
    code = measuring_code()
    refused = 0
    for run in args.runs:
        if experiments is not None:
            try:
                out = record_crops(run, args.record, experiments, code)
            except RecordError as exc:
                print(f"[refused] {exc}", file=sys.stderr)
                refused += 1
                continue
            row = json.loads(out.read_text())["measures"]
            print(f"[recorded] {out}")
        else:
            row = crops(run)
        shown = ("-" if v is None else f"{v:.2f}" for v in row.values())  # None: a run without misses
        print(f"{run}: " + "  ".join(f"{k} {v}" for k, v in zip(row, shown, strict=True)), flush=True)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
