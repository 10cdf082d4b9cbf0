"""Copy finished runs' small records into the committed results tree, refusing any that cannot be audited.

A record is ``config.yaml``, ``meta.json``, ``log.jsonl`` and ``metrics.json`` of a run directory (and its
transformer pictures when each is under 120 KB; never checkpoints), written to
``results/<column>/<model>/e<epochs>-seed<seed>/``. The cell is read from the run's own config: its model,
``train.epochs`` and ``train.seed``, and the column of ``results/experiments.yaml`` whose config it matches.

A run is refused, and nothing of it is written, when:

* it is not finished (``metrics.json`` missing or its status not ``finished``, or fewer epochs logged than
  ``train.epochs``);
* its code cannot be checked out again: ``meta.json`` says ``git_dirty`` is true (or unknown), or its
  ``git_sha`` is not an ancestor of this repository's HEAD (``git merge-base --is-ancestor``), or it was resumed
  from other code than it started from (``meta.json``'s ``resumed`` entries);
* its config is not the cell's: it differs from the column's config file plus the column's overrides in a key
  other than the budget-only ones (``budget_keys`` of the experiments file: threads, evaluation batch, ...);
* the cell already has a record (pass ``--replace`` to overwrite it).

Usage::

    .venv/bin/python scripts/record.py runs/repro/rts/st_cnn_aff/e60-seed0 [more runs] --into results
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (
    MAX_PICTURE_BYTES,
    RECORD_FILES,
    ROOT,
    Cell,
    Experiments,
    RecordError,
    config_differences,
    read_record,
)

from torchstn._io import atomic_write_bytes

__all__ = ["cell_of_run", "check_code", "record_run"]


def check_code(meta: dict[str, object], repo: Path = ROOT) -> str:
    """The run's commit, if it is clean and an ancestor of ``repo``'s HEAD; RecordError otherwise."""
    sha, dirty = meta.get("git_sha"), meta.get("git_dirty")
    if dirty is not False:
        state = "uncommitted changes" if dirty else "an unknown working tree state"
        raise RecordError(f"the run was trained from {state} (git_dirty {dirty!r}): its code cannot be checked out")
    if not isinstance(sha, str) or not sha:
        raise RecordError("meta.json names no git_sha")
    known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, capture_output=True, check=False)
    ancestor = subprocess.run(
        ["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=repo, capture_output=True, check=False
    )
    if known.returncode != 0 or ancestor.returncode != 0:
        raise RecordError(f"code {sha[:10]} is not an ancestor of HEAD: commit (or merge) it before recording")
    resumed = meta.get("resumed") or []
    for entry in resumed if isinstance(resumed, list) else []:
        if (entry.get("git_sha"), entry.get("git_dirty")) != (sha, False):
            other = "uncommitted changes" if entry.get("git_dirty") else f"code {str(entry.get('git_sha'))[:10]}"
            raise RecordError(
                f"resumed at epoch {entry.get('at_epoch')} from {other}, not the {sha[:10]} it started from: a record "
                "names one commit, so resume a run from the commit it started from (or train it again)"
            )
    return sha


def cell_of_run(run: Path, experiments: Experiments, column: str | None = None) -> Cell:
    """The cell a run directory trained: its model, epochs and seed, in the one column whose config it matches."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    model, epochs, seed = config["model"]["name"], int(config["train"]["epochs"]), int(config["train"]["seed"])
    candidates = [column] if column else [c for c in experiments.columns if model in experiments.columns[c]["paper"]]
    mismatches = []
    for name in candidates:
        if name not in experiments.columns or model not in experiments.columns[name]["paper"]:
            raise RecordError(f"{run}: column {name!r} has no model {model!r} in {experiments.path.name}")
        cell = Cell(name, model, epochs, seed)
        diff = config_differences(config, experiments.config(cell), experiments.budget_keys)
        if not diff:
            return cell
        mismatches.append(f"{name} (differs in {', '.join(diff)})")
    raise RecordError(f"{run}: its config is no column's cell config: {'; '.join(mismatches) or 'no column'}")


def record_run(
    run: Path,
    into: Path,
    experiments: Experiments,
    *,
    column: str | None = None,
    replace: bool = False,
    repo: Path = ROOT,
) -> Path:
    """Check a run directory and copy its record to ``into/<cell>``; returns that folder (RecordError: refused)."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise RecordError(f"{run}: not a run directory (no config.yaml)")
    if not (run / "metrics.json").is_file():
        raise RecordError(f"{run}: the run is not finished (no metrics.json yet)")
    cell = cell_of_run(run, experiments, column)
    record = read_record(run, cell)  # refuses unfinished runs
    if record.logged_epochs != cell.epochs:
        raise RecordError(f"{run}: {record.logged_epochs} epochs logged of the {cell.epochs} of its schedule")
    try:
        check_code(json.loads((run / "meta.json").read_text()), repo)
    except RecordError as exc:
        raise RecordError(f"{run}: {exc}") from None
    dest = into / cell.path
    if (dest / "metrics.json").exists() and not replace:
        raise RecordError(f"{dest}: the cell is already recorded (--replace to overwrite it)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pictures = [p for p in record.pictures if p.stat().st_size <= MAX_PICTURE_BYTES]
    if pictures:
        (dest / "pictures").mkdir()
    for picture in pictures:
        atomic_write_bytes(dest / "pictures" / picture.name, picture.read_bytes())
    for name in RECORD_FILES:  # metrics.json last: a folder without it is not a record
        atomic_write_bytes(dest / name, (run / name).read_bytes())
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--into", type=Path, default=ROOT / "results", help="the results tree (default: results/)")
    parser.add_argument("--experiments", type=Path, default=ROOT / "results" / "experiments.yaml")
    parser.add_argument("--column", default=None, help="the run's column (default: the one its config matches)")
    parser.add_argument("--replace", action="store_true", help="overwrite a cell's existing record")
    args = parser.parse_args(argv)
    experiments = Experiments(args.experiments)
    refused = 0
    for run in args.runs:
        try:
            dest = record_run(run, args.into, experiments, column=args.column, replace=args.replace)
        except RecordError as exc:
            print(f"[refused] {exc}", file=sys.stderr)
            refused += 1
            continue
        print(f"[recorded] {run} -> {dest}")
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
