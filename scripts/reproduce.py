"""Train the reproduction cells (model x dataset x seed) one after another, resuming what was interrupted.

Each cell is a run directory ``RUNS/<column>/<model>-seed<k>`` made by ``torchstn train`` from
``configs/<column>.yaml`` with the model, seed and any ``--set`` overrides. A cell whose ``metrics.json`` says
``finished`` is skipped; a stopped one is resumed. Run it in the background and regenerate the report with
``scripts/make_results.py`` whenever you like; cells not yet run are reported as such.

Example (the command behind RESULTS.md is written there)::

    nohup .venv/bin/python scripts/reproduce.py --columns r rts --seeds 0 > runs/repro.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Cheapest first, so that a column fills from the fast cells while the slow ones train.
TABLE1_MODELS = [
    "fcn_baseline",
    "st_fcn_aff",
    "st_fcn_proj",
    "st_fcn_tps",
    "st_cnn_aff",
    "cnn_baseline",
    "st_cnn_proj",
    "st_cnn_tps",
]
COLUMNS = {
    "r": TABLE1_MODELS,
    "rts": TABLE1_MODELS,
    "p": TABLE1_MODELS,
    "e": TABLE1_MODELS,
    "tc": ["fcn_baseline", "cnn_baseline", "st_fcn_aff", "st_cnn_aff"],
    "addition": [
        "addition_fcn",
        "addition_cnn",
        "addition_st_fcn_aff",
        "addition_st_fcn_proj",
        "addition_st_fcn_tps",
        "addition_2xst_fcn_aff",
        "addition_2xst_fcn_proj",
        "addition_2xst_fcn_tps",
    ],
    "coloc": ["coloc_attention"],
    "coloc_clutter": ["coloc_attention"],
}
# Columns that reuse another column's config with extra overrides.
COLUMN_CONFIGS = {"coloc_clutter": ("coloc", ["data.recipe_params.clutter=16"])}


def _status(run: Path) -> str | None:
    path = run / "metrics.json"
    return json.loads(path.read_text()).get("status") if path.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--columns", nargs="+", default=["r", "rts"], choices=sorted(COLUMNS))
    parser.add_argument("--models", nargs="*", default=None, help="default: every model of each column")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--runs", default="runs/repro")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every cell")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "torchstn.cli", "train", "--quiet"]
    for seed in args.seeds:
        for column in args.columns:
            for model in args.models or COLUMNS[column]:
                if model not in COLUMNS[column]:
                    continue
                run = Path(args.runs) / column / f"{model}-seed{seed}"
                status = _status(run)
                if status == "finished":
                    print(f"[skip] {run} finished", flush=True)
                    continue
                if (run / "checkpoints" / "last.pt").exists():
                    cmd = [*exe, "--resume", str(run)]
                else:
                    config, extra = COLUMN_CONFIGS.get(column, (column, []))
                    sets = [f"model.name={model}", f"train.seed={seed}", f"name={column}-{model}", *extra, *args.set]
                    # --overwrite: a cell killed before its first checkpoint starts again
                    cmd = [*exe, "--config", f"configs/{config}.yaml", "--out", str(run), "--overwrite", "--set", *sets]
                print(f"[run ] {' '.join(cmd[1:])}", flush=True)
                if args.dry_run:
                    continue
                start = time.perf_counter()
                done = subprocess.run(cmd, check=False)
                print(f"[done] {run} rc={done.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
