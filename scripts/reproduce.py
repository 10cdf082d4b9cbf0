"""Train the reproduction's cells, one after another or ``--jobs`` at once: skip the recorded, resume the
interrupted, start the rest.

The cells come from ``results/experiments.yaml``: for each seed, column and model (cheapest first), the schedule
the column chose for the model's family (or the ``--epochs`` given, or with ``--curve`` the learning curve's
schedule lengths). A cell whose record is committed in ``results/`` is skipped; otherwise its run directory
``runs/repro/<column>/<model>/e<epochs>-seed<seed>`` is resumed from its last checkpoint if it has one and started
from this checkout's commit (from another, it is left alone with the command that resumes it there: a record
names one commit), left alone
if it finished (record it with ``scripts/record.py``, or pass ``--record``), else started with ``torchstn train``
from the column's config and the cell's overrides. ``--set`` may change only the budget-only keys of the
experiments file (threads, evaluation batch, ...): anything else would train a run that is not the cell.

First it prints the plan: each cell to train with an estimate of its one-thread training time, the median time an
epoch of the committed records most like it took (``estimate``; for an interrupted cell, its own logged epochs), and
the total; ``--dry-run`` stops there.
``--jobs N`` keeps N cells training at once, each its own process, starting the next in the plan's order as one
ends (a 2-core machine: ``--jobs 2 --set train.threads=1``, which is how the records here were trained).
``--within MINUTES`` starts a cell only if its estimate fits in the time left, so that what starts in a session
of limited length also finishes in it (a cell with no estimate is started; one longer than any session never is:
train it without ``--within`` and resume it session after session, on a machine that keeps its run directory,
from a checkout of the commit it started from, e.g. a ``git worktree``).
``--worktrees DIR`` does that checkout itself, for every cell: each trains in a detached ``git worktree`` of its
commit under ``DIR`` (made once, reused), that commit's ``torchstn`` imported from the worktree's ``src/`` with this
checkout's environment (its compiled layers built for that source): an interrupted cell that started from another
commit resumes in one of that commit, so its record names one commit, and every other cell in one of this
checkout's HEAD, so that the checkout can change while they train (uncommitted changes are not trained: a record
must name a commit anyway). With ``--record`` this checkout records each when it finishes.
Ctrl-C or SIGTERM stops it: every running cell checkpoints (``torchstn train`` does on SIGTERM), and the same
command resumes. ``--stop-after MINUTES`` stops it the same way when that much time has passed (exit status 0), with
``--park`` parking what it stops: one command for a session of limited length.

A cell longer than a session, on machines that do not keep ``runs/`` from one session to the next, is carried in the
repository: ``--park`` copies each cell it stops into ``parked/<cell>`` (``--parked DIR``): its config, meta, log
and metrics and its last checkpoint, which is checked against its checksum, never the other checkpoints (the size is
printed: a TC ST-CNN's was 1.5 MB; an FCN-family model's 1.36M parameters with Adam's two moments come to about 16
MB, so park the long cells only); ``--park-only`` parks every interrupted cell of the selection without training
(refused while a process trains it). Commit that folder. Later, on any machine, a cell whose run directory has no
checkpoint is restored from its parked copy (checked again) and resumed, from the commit it started from like any
interrupted cell; ``--record`` deletes the parked copy of each cell it records (commit the deletion with the
record). ``--ship`` (with ``--record``) exports the weights of each recorded cell that experiments.yaml ships
(``shipped``) into the package's weights folder (``--weights DIR``) when they beat the shipped seed, while the run's
checkpoint still exists.

Examples (the commands behind RESULTS.md are listed there)::

    nohup .venv/bin/python scripts/reproduce.py --columns rts --seeds 0 1 2 --jobs 2 --set train.threads=1 \
        >repro.log 2>&1 &
    # a session of limited length on a machine that keeps nothing: commit results/, parked/ and the weights after
    nohup .venv/bin/python scripts/reproduce.py --columns r p_polar e --seeds 0 --jobs 2 --set train.threads=1 \
        --record --ship --worktrees ../worktrees --park --stop-after 150 >repro.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ROOT, Cell, Experiments, Record, RecordError, config_differences, load_records, log_rows

from torchstn.data import get_recipe
from torchstn.errors import CheckpointError, RunError, STNError
from torchstn.models import count_macs
from torchstn.train.config import parse_overrides
from torchstn.train.factories import build_model
from torchstn.train.rundir import git_info, load_checkpoint, lock_run

__all__ = ["cells", "command", "estimate", "plan"]


def cells(
    exp: Experiments,
    columns: Sequence[str],
    seeds: Sequence[int],
    models: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells to train, seed by seed (all of seed 0 first), each column's models cheapest first."""
    out = []
    for seed in seeds:
        for column in columns:
            for model in exp.column_models(column):
                if models and model not in models:
                    continue
                for e in epochs or [exp.chosen_epochs(column, model)]:
                    out.append(Cell(column, model, int(e), seed))
    return out


def curve_cells(exp: Experiments, seeds: Sequence[int], models: Sequence[str] | None = None) -> list[Cell]:
    """The learning curve's cells: its column and models at each of its schedule lengths, shortest first."""
    curve = exp.curve
    chosen = [m for m in curve["models"] if not models or m in models]
    return [Cell(curve["column"], m, int(e), s) for s in seeds for e in curve["epochs"] for m in chosen]


def _status(run: Path) -> str | None:
    path = run / "metrics.json"
    return json.loads(path.read_text()).get("status") if path.exists() else None


def command(exp: Experiments, cell: Cell, run: Path, extra: Sequence[str], root: Path = ROOT) -> list[str]:
    """The ``torchstn train`` arguments that start (or resume) a cell's run directory, from the column's config file
    in the checkout ``root``."""
    exe = [sys.executable, "-m", "torchstn.cli", "train", "--quiet"]
    if (run / "checkpoints" / "last.pt").exists():
        return [*exe, "--resume", str(run)]
    config = exp.columns[cell.column]["config"]
    # --overwrite: a cell killed before its first checkpoint starts again (its run directory holds no epoch)
    again = ["--overwrite"] if run.exists() else []
    return [*exe, "--config", str(root / config), "--out", str(run), *again, "--set", *exp.overrides(cell), *extra]


def _stale(exp: Experiments, cell: Cell, run: Path) -> list[str]:
    """The keys in which an existing run directory's config is not the cell's (empty: it is, or there is none)."""
    if not (run / "config.yaml").is_file():
        return []
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    return config_differences(recorded, exp.config(cell), exp.budget_keys)


def _started_from(run: Path) -> str | None:
    """The commit a run directory's training started from (its ``meta.json``), None if it does not say."""
    try:
        sha = json.loads((run / "meta.json").read_text()).get("git_sha")
    except (OSError, ValueError):
        return None
    return sha if isinstance(sha, str) and sha else None


def plan(
    exp: Experiments,
    todo: Sequence[Cell],
    runs: Path,
    results: Path,
    code: str | None = None,
    parked: Path | None = None,
) -> list[tuple[Cell, str]]:
    """What to do with each cell: ``recorded``, ``stale`` (its run directory, or its parked copy, trained another
    config: left alone), ``finished`` (not yet recorded), ``other_code`` (interrupted, started from another commit
    than ``code``, this checkout's: resumed here its record could not name one commit, so it is left alone),
    ``resume``, ``unpark`` (its run directory has no checkpoint and ``parked`` holds one: restore it, then resume it
    or, started from other code, leave it as ``other_code``) or ``start``."""
    out = []
    for cell in todo:
        run = runs / cell.path
        kept = parked / cell.path if parked is not None else None
        if (results / cell.path / "metrics.json").exists():
            out.append((cell, "recorded"))
        elif _stale(exp, cell, run):
            out.append((cell, "stale"))
        elif _status(run) == "finished":
            out.append((cell, "finished"))
        elif (run / "checkpoints" / "last.pt").exists():
            started = _started_from(run)
            out.append((cell, "other_code" if code and started and started != code else "resume"))
        elif kept is not None and (kept / "checkpoints" / "last.pt").exists():
            out.append((cell, "stale" if _stale(exp, cell, kept) else "unpark"))
        else:
            out.append((cell, "start"))
    return out


PARK_SKIP = (".",)  # names not parked: the run's lock, half-written temporaries


def _copy_checked(source: Path, dest: Path) -> None:
    """Copy a run directory's small files and its last checkpoint from ``source`` into a new ``dest``, atomically
    (a sibling temporary renamed into place; an old ``dest`` is replaced), after checking the checkpoint against
    its checksum (CheckpointError: it does not match, nothing is copied)."""
    ckpt = source / "checkpoints" / "last.pt"
    load_checkpoint(ckpt)  # its checksum, before anything is copied
    tmp = dest.with_name(dest.name + ".copying")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "checkpoints").mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(PARK_SKIP):
            shutil.copy2(item, tmp / item.name)
    shutil.copy2(ckpt, tmp / "checkpoints" / "last.pt")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def park(run: Path, dest: Path) -> Path:
    """Copy an interrupted run directory into ``dest`` (its parked copy, to commit): the config, meta, log and
    metrics files and ``checkpoints/last.pt``, checked against its checksum. Holds the run's lock while it copies
    (RunError: a process is training it); RunError also when the run has no checkpoint to resume from."""
    if not (run / "checkpoints" / "last.pt").is_file():
        raise RunError(f"{run}: no checkpoints/last.pt to park (nothing to resume from)")
    with lock_run(run):
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy_checked(run, dest)
    return dest


def worktree(sha: str, under: Path, repo: Path = ROOT) -> Path:
    """A detached git worktree of commit ``sha`` of ``repo``: ``under/<sha[:12]>``, added if missing (RunError:
    the commit is unknown, the folder holds another commit, or git cannot add it)."""
    tree = under / sha[:12]
    if tree.exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False)
        if head.returncode != 0 or head.stdout.strip() != sha:
            raise RunError(f"{tree}: expected a git worktree of {sha[:10]}; it holds {head.stdout.strip() or 'none'}")
        return tree
    known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, capture_output=True, check=False)
    if known.returncode != 0:
        raise RunError(f"code {sha[:10]} is not a commit of {repo}: fetch it, or delete the run to start again")
    under.mkdir(parents=True, exist_ok=True)
    add = subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), sha], cwd=repo, capture_output=True, text=True, check=False
    )
    if add.returncode != 0:
        raise RunError(f"git worktree add {tree} {sha[:10]} failed: {add.stderr.strip()}")
    return tree


def _tree(sha: str, args: argparse.Namespace) -> Path:
    """The worktree of ``sha`` under ``args.worktrees``, made and prepared once per invocation (RunError)."""
    ready: dict[str, Path] = args.trees
    if sha not in ready:
        tree = worktree(sha, args.worktrees)
        failed = prepare_tree(tree)
        if failed:
            print(f"[warning] {tree}: compiled layers not built ({failed}); torch's kernels", flush=True)
        ready[sha] = tree
    return ready[sha]


def code_env(tree: Path) -> dict[str, str]:
    """The environment that makes a child process import ``tree``'s own ``torchstn`` (its ``src/`` first on the
    path) with this interpreter's packages."""
    path = [str(tree / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


_PROBE = "import pathlib, torchstn; print(pathlib.Path(torchstn.__file__).resolve())"


def prepare_tree(tree: Path) -> str | None:
    """Check that ``code_env(tree)`` imports the worktree's ``torchstn`` (RunError otherwise: its run would name a
    commit whose code it did not run) and build its compiled layers; returns why the build failed (None: built),
    in which case training runs torch's native kernels."""
    if not (tree / "src" / "torchstn").is_dir():
        raise RunError(f"{tree}: no src/torchstn to train with")
    env = code_env(tree)
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, env=env, capture_output=True, text=True)
    where = Path(probe.stdout.strip()) if probe.returncode == 0 else None
    if where is None or not where.is_relative_to((tree / "src").resolve()):
        found = where or probe.stderr.strip().splitlines()[-1:]
        raise RunError(f"{tree}: its torchstn is not what a child process imports ({found})")
    build = subprocess.run(
        [sys.executable, "-m", "torchstn.ext", "build"], cwd=tree, env=env, capture_output=True, text=True
    )
    if build.returncode != 0:
        return (build.stderr.strip().splitlines() or [f"exit status {build.returncode}"])[-1]
    return None


PARKED_README = """# Parked cells

Reproduction cells stopped before they finished, carried here between machines by `scripts/reproduce.py --park`
(or `--park-only`): each folder `<column>/<model>/e<epochs>-seed<seed>` holds the run's config, meta (the commit it
started from, `git_sha`), log and metrics files and its last checkpoint (checked against its checksum when parked
and when restored). Not a result: RESULTS.md reads only `results/`.

To resume one, run `scripts/reproduce.py` with the cell's selection and `--worktrees DIR`: it restores the parked
copy into `--runs` and resumes it in a git worktree of the commit it started from, made under `DIR` (or run the
command yourself from a checkout of that commit: `git worktree add --detach DIR <git_sha>`).
`--record` deletes the parked copy once the cell's record is written; commit the deletion with the record.
"""


def unpark(kept: Path, run: Path) -> Path:
    """Restore a parked copy into the run directory ``run`` (which has no checkpoint: at most what a start killed
    before its first epoch left), checking the checkpoint against its checksum first (CheckpointError)."""
    run.parent.mkdir(parents=True, exist_ok=True)
    # a start still in its first epoch holds the lock of an existing run directory (RunError)
    with lock_run(run) if run.exists() else contextlib.nullcontext():
        _copy_checked(kept, run)
    return run


def _logged_epochs(run: Path) -> int:
    """How many epochs an interrupted run directory has logged (a resumed epoch logged twice counts once)."""
    path = run / "log.jsonl"
    return len(log_rows(path)) if path.is_file() else 0


def _own_epoch_seconds(run: Path) -> list[float]:
    """The seconds of each epoch an interrupted one-thread run directory has logged (empty: none, or not at one
    thread, or unreadable)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        rows = log_rows(run / "log.jsonl")
    except (OSError, ValueError, yaml.YAMLError):
        return []
    if (config.get("train") or {}).get("threads") != 1:
        return []
    return [float(r["epoch_seconds"]) for r in rows if isinstance(r.get("epoch_seconds"), (int, float))]


def estimate(
    exp: Experiments,
    cell: Cell,
    records: dict[Cell, Record],
    done: int = 0,
    own: Path | None = None,
    siblings: Sequence[Path] = (),
) -> tuple[float, str] | None:
    """The one-thread training seconds a cell's remaining ``cell.epochs - done`` epochs should take, as the records
    of the cells most like it ran (same load, same machine), and where that figure comes from; None without one.
    An interrupted cell's own run directory (``own``), if it logged epochs at one thread, is the cell most like
    it: its median epoch is used instead (the records may have run older, slower code). Next come the records of
    its own column and model (other seeds), then the run directories of other seeds or schedules of the same column
    and model that are training or parked (``siblings``, those of the cell's data and model settings, at one
    thread), and only then the records of other columns.

    The per-epoch time is the median over the one-thread records of the same model that are closest to the cell:
    of its own column if it has any, else those whose data and model settings differ from the cell's in the fewest
    keys, which the source names. A model that no other column has (the addition column's) borrows the records
    of the other models of its family in its own column. Such a record's time is scaled by the ratio of the two
    models' multiply-adds in a training step (``torchstn.models.count_macs``): another input size, or another
    pooling of the transformer's output, changes a convolution's cost, while the FCN family's fixed budget keeps
    its cost about the same."""
    mine = _own_epoch_seconds(own) if own is not None else []
    if mine:
        plural = "s" if len(mine) > 1 else ""
        return statistics.median(mine) * max(cell.epochs - done, 0), f"its own {len(mine)} logged epoch{plural}"
    want = exp.config(cell)

    def differences(rec: Record) -> list[str]:
        keep = ("data", "model")
        return config_differences({k: rec.config.get(k) for k in keep}, {k: want.get(k) for k in keep})

    def scale(rec: Record) -> float:
        ours, theirs = step_macs(want), step_macs(rec.config)
        per_step = ours / theirs if ours and theirs else 1.0
        return per_step * _train_images(want, rec.config)

    usable = [r for r in records.values() if r.threads == 1 and r.logged_epochs]
    like = [r for r in usable if r.cell.model == cell.model]
    own = [r for r in like if r.cell.column == cell.column]
    if not own:
        keep = ("data", "model")
        logged = {p: _own_epoch_seconds(p) for p in siblings if _same_settings(p, {k: want.get(k) for k in keep})}
        same = [p for p, seconds in logged.items() if seconds]
        theirs = [t for p in same for t in logged[p]]
        if theirs:
            return statistics.median(theirs) * max(cell.epochs - done, 0), (
                f"{len(theirs)} logged epochs of {len(same)} other run{'s' if len(same) > 1 else ''} of the cell's "
                "column and model"
            )
    found, diff = own, []
    alone = not any(cell.model in spec["paper"] for c, spec in exp.columns.items() if c != cell.column)
    if not like and alone:  # a model of its column alone (addition's): the column's other models of its family
        family = exp.models[cell.model]["family"]
        found = [r for r in usable if r.cell.column == cell.column and exp.models[r.cell.model]["family"] == family]
        diff = ["model.name"] if found else []
    elif not own and like:
        diffs = {r.cell: differences(r) for r in like}  # each record's differing keys, once
        fewest = min(len(d) for d in diffs.values())
        found = [r for r in like if len(diffs[r.cell]) == fewest]
        keys = {k for r in found for k in diffs[r.cell]}
        diff = sorted(k for k in keys if not any(o.startswith(k + ".") for o in keys))  # the deepest key only
    if not found:
        return None
    scales = {r.cell: scale(r) if diff else 1.0 for r in found}  # each borrowed record's factor, once
    per_epoch = statistics.median(r.seconds / r.logged_epochs * scales[r.cell] for r in found)
    columns = "/".join(sorted({r.cell.column for r in found}))
    source = f"{len(found)} {columns} record{'s' if len(found) > 1 else ''}"
    if diff == ["model.name"]:
        diff = [f"the model ({', '.join(sorted({r.cell.model for r in found}))})"]
    if diff:
        source += f", which differ{'s' if len(found) == 1 else ''} in {', '.join(diff)}"
        factors = sorted({round(f, 2) for f in scales.values()} - {1.0})
        if factors:
            by = "multiply-adds" if "data.n_train" not in diff else "multiply-adds and training images"
            source += f" (scaled by their {by}, x{'/'.join(f'{f:g}' for f in factors)})"
    return per_epoch * max(cell.epochs - done, 0), source


def _same_settings(run: Path, want: dict[str, Any]) -> bool:
    """Whether a run directory's config has the data and model sections ``want`` has (False: unreadable)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return not config_differences({k: config.get(k) for k in want}, want)


def _train_images(want: dict[str, Any], theirs: dict[str, Any]) -> float:
    """The ratio of the training images an epoch of ``want`` sees to those of ``theirs`` (``data.n_train``; 1.0
    when either does not say)."""
    a, b = ((c.get("data") or {}).get("n_train") for c in (want, theirs))
    if type(a) is int and type(b) is int and a > 0 and b > 0:
        return a / b
    return 1.0


_MACS: dict[str, int | None] = {}


def step_macs(config: dict[str, Any]) -> int | None:
    """Multiply-adds per sample of a training step of the config's model, on its ``model.kwargs.input_shape`` or
    else the shape of its data recipe's samples (None: neither is known, or the model cannot be built or run from
    the config alone). Cached per model and data section."""
    key = json.dumps([config.get("model"), config.get("data")], sort_keys=True, default=str)
    if key not in _MACS:
        shape = ((config.get("model") or {}).get("kwargs") or {}).get("input_shape")
        try:
            if shape is None and (config.get("data") or {}).get("recipe"):
                data = config["data"]
                shape = get_recipe(data["recipe"], **(data.get("recipe_params") or {})).shape()
            layers = count_macs(build_model(config), torch.zeros(2, *shape)) if shape else None
        except (STNError, RuntimeError, TypeError, ValueError):  # not buildable or not runnable from the config
            layers = None
        _MACS[key] = sum(m.step for m in layers) if layers else None
    return _MACS[key]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=Path, default=ROOT / "results" / "experiments.yaml")
    parser.add_argument(
        "--columns",
        nargs="+",
        default=None,
        help="default: every column of the experiments file but those tried_for another (name those to train them)",
    )
    parser.add_argument("--models", nargs="*", default=None, help="default: every model of each column")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=None, help="default: each family's chosen schedule")
    parser.add_argument("--curve", action="store_true", help="the learning curve's cells (its column, models, epochs)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "repro")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="committed records (skipped)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="budget-only overrides")
    parser.add_argument("--record", action="store_true", help="record each run that finishes (scripts/record.py)")
    parser.add_argument(
        "--parked",
        type=Path,
        default=ROOT / "parked",
        help="where interrupted cells are carried in the repository between machines (default: parked/)",
    )
    parser.add_argument("--park", action="store_true", help="when stopped, park each cell it stops (commit them)")
    parser.add_argument(
        "--park-only", action="store_true", help="park every interrupted cell of the selection; train nothing"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells trained at once, each its own process (on a small machine give each train.threads=1)",
    )
    parser.add_argument(
        "--within",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start only the cells whose estimate fits in the minutes left (a session's end); the rest wait",
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop the running cells (they checkpoint; with --park, park them) after this many minutes",
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="with --record, ship each recorded cell that experiments.yaml ships when it beats the shipped seed",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=ROOT / "src" / "torchstn" / "weights",
        metavar="DIR",
        help="the weights folder --ship writes (default: this checkout's src/torchstn/weights)",
    )
    parser.add_argument(
        "--worktrees",
        type=Path,
        default=None,
        metavar="DIR",
        help="train each cell in a git worktree of its commit under DIR (made if missing): the commit an interrupted "
        "cell started from, else HEAD; default: train here, and leave a cell started from another commit alone",
    )
    args = parser.parse_args(argv)
    if args.within is not None and not args.within > 0:
        parser.error(f"--within: expected minutes > 0; got {args.within}")
    if args.stop_after is not None and not args.stop_after > 0:
        parser.error(f"--stop-after: expected minutes > 0; got {args.stop_after}")
    exp = Experiments(args.experiments)
    args.runs, args.results = args.runs.resolve(), args.results.resolve()  # the runs start from ROOT
    args.parked = args.parked.resolve()
    args.worktrees = args.worktrees.resolve() if args.worktrees is not None else None
    args.trees = {}  # each commit's prepared worktree (--worktrees), once per invocation
    args.weights = args.weights.resolve()
    if args.ship and not args.record:
        parser.error("--ship: ships what --record records; add --record")
    for key, _ in parse_overrides(args.set):
        if not any(key == k or key.startswith(k + ".") for k in exp.budget_keys):
            parser.error(
                f"--set {key}: not a budget-only key ({', '.join(exp.budget_keys)}); change the column's config"
            )
    if args.jobs < 1:
        parser.error(f"--jobs: expected a whole number of cells at once, at least 1; got {args.jobs}")
    unknown = sorted(set(args.columns or []) - set(exp.columns))
    if unknown:
        parser.error(f"--columns: unknown {unknown}; the experiments file has {sorted(exp.columns)}")
    if args.curve:
        todo = curve_cells(exp, args.seeds, args.models)
    else:
        default = [c for c, spec in exp.columns.items() if not spec.get("tried_for")]
        todo = cells(exp, args.columns or default, args.seeds, args.models, args.epochs)
    args.code = git_info(ROOT)["git_sha"]
    if args.worktrees is not None and not args.code:
        parser.error(f"--worktrees: {ROOT} is not a git checkout; its cells have no commit to check out")
    steps = plan(exp, todo, args.runs, args.results, args.code, args.parked)
    if args.park_only:
        return _park_all(steps, args)
    try:
        records = load_records(args.results)
    except RecordError as exc:
        print(f"[no estimates] {exc}", flush=True)
        records = {}

    def interrupted(cell: Cell, action: str) -> Path | None:
        where = {"resume": args.runs, "other_code": args.runs, "unpark": args.parked}.get(action)
        return where / cell.path if where is not None else None

    def guess(cell: Cell, action: str) -> tuple[float, str] | None:
        own = interrupted(cell, action)
        siblings: dict[str, Path] = {}  # the other runs of the column and model (a run directory over its parked copy)
        for root in (args.parked, args.runs):
            for run in (root / cell.column / cell.model).glob("e*-seed*"):
                if run.name != cell.path.name and run.is_dir():
                    siblings[run.name] = run
        return estimate(exp, cell, records, _logged_epochs(own) if own else 0, own, sorted(siblings.values()))

    trains = ("resume", "start", "unpark", *(("other_code",) if args.worktrees is not None else ()))
    guesses = {cell: guess(cell, action) for cell, action in steps if action in trains}
    known = [g[0] for g in guesses.values() if g is not None]
    unknown = [c.path.as_posix() for c, g in guesses.items() if g is None]
    print(
        f"[plan] {len(guesses)} cells to train, about {_hours(sum(known))} at one thread as the records ran"
        + (f" (in {args.jobs} jobs at once, about {_hours(sum(known) / args.jobs)})" if args.jobs > 1 else "")
        + (f"; no record to estimate {len(unknown)}: {', '.join(unknown)}" if unknown else ""),
        flush=True,
    )
    return _train(exp, steps, guesses, args)


def _train(
    exp: Experiments,
    steps: Sequence[tuple[Cell, str]],
    guesses: dict[Cell, tuple[float, str] | None],
    args: argparse.Namespace,
) -> int:
    """Skip, resume or start each cell of the plan, ``args.jobs`` at once (with ``--dry-run``, print only)."""
    running: dict[subprocess.Popen[bytes], tuple[Path, float]] = {}  # each cell's process: its run, its start
    began = time.perf_counter()
    args.deadline = None if args.stop_after is None else began + args.stop_after * 60
    try:
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread: signals stay the caller's business
        previous = None
    try:
        for cell, action in steps:
            run = args.runs / cell.path
            kept = args.parked / cell.path
            if action == "recorded":
                extra = f" (its parked copy {kept} is no longer needed)" if kept.exists() else ""
                print(f"[skip] {cell.path} is recorded{extra}", flush=True)
                continue
            if action == "stale":
                where = run if _stale(exp, cell, run) else kept
                diff = ", ".join(_stale(exp, cell, where))
                print(f"[skip] {where} trained another config (differs in {diff}); move it away to retrain", flush=True)
                continue
            if action == "unpark":
                if args.dry_run:
                    print(f"[unpark] {kept} into {run}, then resumed", flush=True)
                    continue
                try:
                    unpark(kept, run)
                except (CheckpointError, RunError) as exc:
                    print(f"[skip] {kept} not restored: {exc}", flush=True)
                    continue
                print(f"[unparked] {kept} into {run}", flush=True)
                started = _started_from(run)
                action = "other_code" if args.code and started and started != args.code else "resume"
            if action == "finished":
                print(f"[skip] {run} finished; record it: scripts/record.py {run} --into {args.results}", flush=True)
                continue
            tree = None
            if action == "other_code" and args.worktrees is None:
                sha = _started_from(run) or ""
                print(
                    f"[skip] {run} started from code {sha[:10]}, not this checkout's: resume it from that commit "
                    f"(--worktrees DIR, or git worktree add --detach DIR {sha[:10]} and run this command in DIR), "
                    "so that its record names one commit, or delete it to start again",
                    flush=True,
                )
                continue
            if args.worktrees is not None:  # every cell in a worktree of its commit: the one it started from, or HEAD
                sha = (_started_from(run) if action == "other_code" else None) or args.code
                tree = args.worktrees / sha[:12]
                if not args.dry_run:
                    try:
                        tree = _tree(sha, args)
                    except RunError as exc:
                        print(f"[skip] {run} not trained in a worktree of its code: {exc}", flush=True)
                        continue
                action = "resume" if action == "other_code" else action
            cmd = command(exp, cell, run, args.set, tree or ROOT)
            guess = guesses.get(cell)
            line = f"[{action}] {' '.join(cmd[1:])}" + (f" in {tree}" if tree else "")
            line += f"  (about {_hours(guess[0])}: {guess[1]})" if guess else ""
            if args.dry_run:
                print(line, flush=True)
                continue
            while len(running) >= args.jobs:
                _reap(running, args, exp)
            _check_deadline(args)
            left = None if args.within is None else max(args.within * 60 - (time.perf_counter() - began), 0.0)
            if guess and left is not None and guess[0] > left:
                print(f"[later] {cell.path}: about {_hours(guess[0])}, more than the {_hours(left)} left", flush=True)
                continue
            print(line, flush=True)
            # the commit a run names is its working directory's (git_info): start it where its code is
            cwd, env = (ROOT, None) if tree is None else (tree, code_env(tree))
            running[subprocess.Popen(cmd, cwd=cwd, env=env)] = (run, time.perf_counter())
        while running:
            _reap(running, args, exp)
    except (KeyboardInterrupt, _Stopped) as exc:
        # Each running cell checkpoints on SIGTERM (torchstn train) and is resumed by the same command later.
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc, (run, _) in running.items():
            print(f"[stopped] {run} rc={proc.wait()}: run the same command again to resume it", flush=True)
            if args.park:
                _park_one(run, args)
        if isinstance(exc, _Stopped) and exc.signum is None:
            print(f"[stop-after] {args.stop_after:g} min passed: stopped", flush=True)
            return 0
        return 128 + (exc.signum if isinstance(exc, _Stopped) else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _park_one(run: Path, args: argparse.Namespace) -> bool:
    """Park one run directory into ``args.parked``, saying what happened; False if it could not be parked."""
    dest = args.parked / run.relative_to(args.runs)
    try:
        park(run, dest)
        if not (args.parked / "README.md").exists():
            (args.parked / "README.md").write_text(PARKED_README)
    except (CheckpointError, RunError, OSError) as exc:
        print(f"[not parked] {exc}", flush=True)
        return False
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"[parked] {run} into {dest} ({size / 2**20:.1f} MiB): commit it", flush=True)
    return True


def _park_all(steps: Sequence[tuple[Cell, str]], args: argparse.Namespace) -> int:
    """``--park-only``: park each interrupted cell of the plan (1 if any could not be)."""
    interrupted = [args.runs / cell.path for cell, action in steps if action in ("resume", "other_code")]
    if not interrupted:
        print("[park] no interrupted cell in the selection", flush=True)
    ok = [_park_one(run, args) for run in interrupted]
    return 0 if all(ok) else 1


class _Stopped(Exception):
    """SIGTERM reached reproduce.py (``signum``), or ``--stop-after`` passed (None): the running cells are asked to
    checkpoint and stop."""

    def __init__(self, signum: int | None) -> None:
        super().__init__(signum)
        self.signum = signum


def _check_deadline(args: argparse.Namespace) -> None:
    """Raise _Stopped(None) once ``--stop-after``'s time has passed."""
    if args.deadline is not None and time.perf_counter() >= args.deadline:
        raise _Stopped(None)


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signum)


POLL_SECONDS = 5.0  # how often a full pool looks for a finished cell


def _reap(
    running: dict[subprocess.Popen[bytes], tuple[Path, float]], args: argparse.Namespace, exp: Experiments
) -> None:
    """Wait until at least one running cell's process ends; report (and with ``--record`` record) each that has."""
    while True:
        ended = [proc for proc in running if proc.poll() is not None]
        if ended:
            break
        _check_deadline(args)
        time.sleep(POLL_SECONDS)
    for proc in ended:
        run, start = running.pop(proc)
        print(f"[done] {run} rc={proc.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
        if args.record and proc.returncode == 0 and _status(run) == "finished":
            from record import record_run

            try:
                dest = record_run(run, args.results, exp)
            except RecordError as exc:
                print(f"[not recorded] {exc}", flush=True)
                continue
            print(f"[recorded] {dest}", flush=True)
            if args.ship:
                _ship(run, Cell.from_path(dest), args, exp)
            kept = args.parked / run.relative_to(args.runs)
            if kept.is_dir():
                shutil.rmtree(kept)
                print(
                    f"[unparked] deleted {kept}, the parked copy of the recorded cell (commit its deletion)", flush=True
                )


SHIP_CHECK = 2000  # test samples of a shipped model's check slice (scripts/export_weights.py --check)


def _ship(run: Path, cell: Cell, args: argparse.Namespace, exp: Experiments) -> None:
    """``--ship``: export a just-recorded cell's weights into ``args.weights`` if experiments.yaml ships its cell
    (at the chosen schedule) and it beats the shipped seed, while its checkpoint still exists."""
    if not exp.ships(cell):
        return
    from export_weights import export_run

    try:
        entry = export_run(run, args.results, exp, SHIP_CHECK, weights_dir=args.weights, if_best=True)
    except (RecordError, CheckpointError, OSError) as exc:
        print(f"[not shipped] {run}: {exc}", flush=True)
        return
    if entry is None:
        print(f"[kept] the shipped {cell.model} weights for {cell.column} are at least as good as {run}'s", flush=True)
    else:
        where = args.weights / entry.file
        errors = f"{entry.test_error:.2f}%, check slice {entry.check['error']:.2f}%"
        print(f"[shipped] {where} ({errors}): commit it", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
