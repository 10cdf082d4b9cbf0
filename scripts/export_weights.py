"""Ship a finished run's final weights inside the package (``src/torchstn/weights``), from its committed record.

For each ``RUN`` (a run directory holding ``checkpoints/last.pt``) the script

1. finds the run's committed record (``results/<column>/<model>/e<E>-seed<S>``, located as ``scripts/record.py``
   files it) and refuses the run unless its ``meta.json`` and ``metrics.json`` are the record's, byte for byte
   (the weights must be those of the run whose numbers RESULTS.md shows);
2. writes the model's ``state_dict`` (and nothing else) to ``src/torchstn/weights/<model>-<column>.pt``;
3. measures the error on a fixed slice of the run's test set (its first ``--check`` samples, regenerated from the
   recipe and data seed) and writes the file's entry in ``weights/index.json``: model, architecture arguments,
   SHA-256, record, code sha, the record's test error and the slice's error. ``tests/test_pretrained.py``
   checks the same slice again.

``--if-best`` ships a run only if its cell is one that ``results/experiments.yaml`` ships (``shipped``), at the
column's chosen schedule, and its recorded test error is below the shipped seed's (or none is shipped): how
``scripts/reproduce.py --record --ship`` keeps the best seed in the package as each record lands, while the
run's checkpoint still exists. ``--weights DIR`` writes into another copy of the weights folder (a checkout's
``src/torchstn/weights``; default: the imported package's).

Usage::

    .venv/bin/python scripts/export_weights.py /work/runs/rts/st_cnn_aff/e30-seed0 [more runs] [--check 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ROOT, Cell, Experiments, RecordError
from record import cell_of_run

from torchstn._io import atomic_write_bytes, atomic_write_text
from torchstn.models import create_model
from torchstn.models import pretrained as shipped
from torchstn.train import load_checkpoint
from torchstn.train.factories import model_kwargs

__all__ = ["export_run"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def export_run(
    run: Path,
    results: Path,
    experiments: Experiments,
    n_check: int,
    *,
    weights_dir: Path = shipped.WEIGHTS_DIR,
    if_best: bool = False,
) -> shipped.PretrainedWeights | None:
    """Ship a recorded run's weights into ``weights_dir``; returns the entry written, or None when ``if_best`` and
    the shipped seed of its cell is at least as good (RecordError: the run cannot be shipped)."""
    cell = cell_of_run(run, experiments)
    record = results / cell.column / cell.model / f"e{cell.epochs}-seed{cell.seed}"
    if not record.is_dir():
        raise RecordError(f"{run}: its cell has no committed record at {record} (record it first)")
    for name in ("meta.json", "metrics.json"):
        if (run / name).read_bytes() != (record / name).read_bytes():
            raise RecordError(f"{run}: {name} differs from the record's {record / name}: not the recorded run")
    meta = json.loads((record / "meta.json").read_text())
    metrics = json.loads((record / "metrics.json").read_text())
    if if_best:
        if cell.model not in experiments.shipped.get(cell.column, []):
            raise RecordError(f"{run}: {cell.column}/{cell.model} is not shipped (`shipped` in experiments.yaml)")
        chosen = experiments.chosen_epochs(cell.column, cell.model)
        if not experiments.ships(cell):
            raise RecordError(f"{run}: {cell.epochs} epochs, not its column's chosen {chosen}: not the table's cell")
        kept = [w for w in shipped.read_index(weights_dir) if (w.model, w.tag) == (cell.model, cell.column)]
        # the shipped seed stays if it is at least as good at the same schedule (another schedule's is replaced)
        same = kept and Cell.from_path(Path(kept[0].record)).epochs == chosen
        if same and kept[0].test_error <= float(metrics["test_error"]):
            return None
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    config = yaml.safe_load((record / "config.yaml").read_text())
    if config.get("task") != "classify" or config["data"].get("dataset", "distorted_mnist") != "distorted_mnist":
        raise RecordError(f"{run}: only distorted-MNIST classifiers are shipped (task {config.get('task')!r})")
    kwargs = _jsonable(model_kwargs(config))
    name = config["model"]["name"]
    model = create_model(name, **kwargs)
    model.load_state_dict(state["model"], strict=True)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    data = buf.getvalue()
    file = f"{name}-{cell.column}.pt"
    data_cfg = config["data"]
    check = {
        "recipe": data_cfg["recipe"],
        "recipe_params": data_cfg.get("recipe_params") or {},
        "split": data_cfg["test_split"],
        "seed": int(data_cfg["seed"]),
        "n": n_check,
    }
    check["error"] = shipped.check_slice_error(model, check)
    entry = shipped.PretrainedWeights(
        model=name,
        tag=cell.column,
        kwargs=kwargs,
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        record=f"results/{cell.path.as_posix()}",  # the committed tree's layout, wherever ``results`` is
        code_sha=str(meta["git_sha"]),
        test_error=float(metrics["test_error"]),
        check=check,
    )
    weights_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights_dir / file, data)
    index = [w for w in shipped.read_index(weights_dir) if (w.model, w.tag) != (entry.model, entry.tag)] + [entry]
    rows = [vars(w) for w in sorted(index, key=lambda w: (w.model, w.tag))]
    atomic_write_text(weights_dir / shipped.INDEX, json.dumps(rows, indent=1) + "\n")
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--experiments", type=Path, default=ROOT / "results" / "experiments.yaml")
    parser.add_argument("--check", type=int, default=2000, help="test samples in the check slice (default 2000)")
    parser.add_argument(
        "--if-best", action="store_true", help="only a shipped cell's run that beats the shipped seed (else: kept)"
    )
    parser.add_argument("--weights", type=Path, default=shipped.WEIGHTS_DIR, help="the weights folder to write")
    args = parser.parse_args()
    experiments = Experiments(args.experiments)
    status = 0
    for run in args.runs:
        try:
            w = export_run(run, args.results, experiments, args.check, weights_dir=args.weights, if_best=args.if_best)
        except RecordError as err:
            print(f"refused {run}: {err}", file=sys.stderr)
            status = 1
            continue
        if w is None:
            print(f"kept the shipped weights of {run}'s cell: they are at least as good")
            continue
        print(
            f"{w.file}: {w.model} from {w.record} (code {w.code_sha[:7]}, test error {w.test_error:.2f}%, "
            f"{w.check['n']}-sample check {w.check['error']:.2f}%)"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
