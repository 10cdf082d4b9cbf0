"""Shared by scripts/record.py, reproduce.py and make_results.py: the experiments file, cells and records.

``results/experiments.yaml`` defines every column (config, overrides, models with the paper's numbers, the chosen
schedule of each model family). A *cell* is ``(column, model, epochs, seed)``; its committed *record* is the small
part of a finished run directory, ``results/<column>/<model>/e<epochs>-seed<seed>/`` holding ``config.yaml``,
``meta.json``, ``log.jsonl``, ``metrics.json`` and, when small, the transformer pictures.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchstn.train.config import DEFAULTS, load_config

__all__ = [
    "ANATOMY_FILE",
    "ANATOMY_TOLERANCE",
    "CROPS_FILE",
    "HIT_TOLERANCE",
    "MAX_PICTURE_BYTES",
    "RECORD_FILES",
    "ROOT",
    "Cell",
    "Experiments",
    "Record",
    "RecordError",
    "config_differences",
    "load_records",
    "log_rows",
    "mean_std",
    "read_record",
]

ROOT = Path(__file__).resolve().parents[1]
RECORD_FILES = ("config.yaml", "meta.json", "log.jsonl", "metrics.json")
HIT_TOLERANCE = 0.051  # points: a crops.json's hit rate against its record's (logged to 0.1 on 1000 test images)
ANATOMY_FILE = "anatomy.json"  # a shipped model's errors by distortion (scripts/error_anatomy.py --record)
ANATOMY_TOLERANCE = 0.021  # points: an anatomy's test error against its record's (two of 10,000 digits flipping)
CROPS_FILE = "crops.json"  # a co-localisation record's crop measurements (scripts/coloc_crops.py --record)
MAX_PICTURE_BYTES = 120_000  # transformer pictures larger than this stay out of the repository


class RecordError(ValueError):
    """A run directory or record that cannot be (or must not be) recorded or read."""


@dataclass(frozen=True, order=True)
class Cell:
    """One training run of the reproduction: a model of a column, trained for ``epochs`` with one seed."""

    column: str
    model: str
    epochs: int
    seed: int

    @property
    def path(self) -> Path:
        """``<column>/<model>/e<epochs>-seed<seed>``, relative to a results (or runs) root."""
        return Path(self.column) / self.model / f"e{self.epochs}-seed{self.seed}"

    @classmethod
    def from_path(cls, path: Path) -> Cell:
        """The cell of ``.../<column>/<model>/e<epochs>-seed<seed>``."""
        epochs, _, seed = path.name.removeprefix("e").partition("-seed")
        if not path.name.startswith("e") or not epochs.isdigit() or not seed.isdigit():
            raise RecordError(f"{path}: expected a cell folder named e<epochs>-seed<seed>")
        return cls(path.parent.parent.name, path.parent.name, int(epochs), int(seed))


class Experiments:
    """``results/experiments.yaml``: columns, models, the paper's numbers and the chosen schedules."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or ROOT / "results" / "experiments.yaml"
        raw = yaml.safe_load(self.path.read_text())
        self.models: dict[str, dict[str, Any]] = raw["models"]
        self.columns: dict[str, dict[str, Any]] = raw["columns"]
        self.sections: list[dict[str, Any]] = raw["sections"]
        self.curve: dict[str, Any] = raw.get("curve") or {}
        self.budget_keys: list[str] = raw.get("budget_keys") or []
        self.shipped: dict[str, list[str]] = raw.get("shipped") or {}  # the cells whose best seed ships
        for column, models in self.shipped.items():
            if column not in raw["columns"] or not set(models) <= set(raw["columns"][column]["paper"]):
                raise ValueError(f"{self.path}: shipped {column}: {models}: expected models of that column")
        self.kinds: dict[str, str] = {}  # each column's kind of number: "error" (test error) or "hits" (boxes found)
        for section in self.sections:
            kind = section.get("kind", "error")
            if kind not in ("error", "hits"):
                raise ValueError(f"{self.path}: section {section['title']!r} has kind {kind!r}: expected error or hits")
            for c in section["columns"]:
                if self.kinds.setdefault(c, kind) != kind:
                    raise ValueError(f"{self.path}: column {c!r} is shown as both {self.kinds[c]!r} and {kind!r}")
            shown = {m for c in section["columns"] for m in self.columns[c]["paper"]}
            extra = sorted(set(section.get("models") or []) - shown)
            if extra:
                raise ValueError(f"{self.path}: section {section['title']!r} shows {extra}, not a model of its columns")
        for column, spec in self.columns.items():
            base = spec.get("tried_for")
            if base is not None and (base not in self.columns or base == column or not spec.get("tried")):
                raise ValueError(
                    f"{self.path}: column {column!r} has tried_for {base!r}: expected another column, and `tried` "
                    "saying what it changes"
                )
            for model in spec["paper"]:
                family = self.models[model]["family"]  # KeyError: a model missing from `models`
                if family not in spec["epochs"]:
                    raise ValueError(f"{self.path}: column {column!r} has no schedule for family {family!r}")
            for model in spec.get("model_epochs") or {}:
                if model not in spec["paper"]:
                    raise ValueError(
                        f"{self.path}: column {column!r} has model_epochs for {model!r}, not one of its models"
                    )

    def label(self, model: str) -> str:
        return str(self.models[model]["label"])

    def column_models(self, column: str) -> list[str]:
        """The column's models, cheapest first (the order of ``models``)."""
        shown = self.columns[column]["paper"]
        return [m for m in self.models if m in shown]

    def chosen_epochs(self, column: str, model: str) -> int:
        """The schedule length the column's table uses for this model: the column's ``model_epochs`` entry for it
        (a family moving to a longer schedule model by model, as each model's seeds are recorded), else its
        family's ``epochs``."""
        spec = self.columns[column]
        own = (spec.get("model_epochs") or {}).get(model)
        return int(own if own is not None else spec["epochs"][self.models[model]["family"]])

    def ships(self, cell: Cell) -> bool:
        """Whether the cell's weights ship in the package (``shipped``, at the column's chosen schedule)."""
        listed = cell.model in self.shipped.get(cell.column, [])
        return listed and cell.epochs == self.chosen_epochs(cell.column, cell.model)

    def overrides(self, cell: Cell) -> list[str]:
        """The ``--set`` overrides that define a cell on top of its column's config file."""
        spec = self.columns[cell.column]
        family = self.models[cell.model]["family"]
        return [
            *spec.get("overrides", []),
            *(spec.get("family_overrides") or {}).get(family, []),
            f"model.name={cell.model}",
            f"train.seed={cell.seed}",
            f"train.epochs={cell.epochs}",
            f"name={cell.column}-{cell.model}",
        ]

    def config(self, cell: Cell, extra: Sequence[str] = ()) -> dict[str, Any]:
        """The resolved config a run of this cell trains with (``extra``: budget-only overrides)."""
        return load_config(ROOT / self.columns[cell.column]["config"], [*self.overrides(cell), *extra])


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


_ABSENT = "<absent>"


def config_differences(recorded: dict[str, Any], expected: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, except ``ignore`` (and keys below them).

    A key that the recorded config lacks counts as equal when the expected value is the loader's default for it
    (a key added to ``DEFAULTS`` after the run, whose default keeps the old behaviour)."""
    a, b, defaults = _flatten(recorded), _flatten(expected), _flatten(DEFAULTS)
    skip = tuple(ignore)
    keys = sorted(k for k in a.keys() | b.keys() if not any(k == s or k.startswith(s + ".") for s in skip))
    return [
        k
        for k in keys
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
        and not (k not in a and k in defaults and b.get(k, _ABSENT) == defaults[k])
    ]


@dataclass
class Record:
    """What the report reads from one committed record."""

    cell: Cell
    path: Path
    test_error: float
    train_error: float
    samples: float  # images seen in training (sum over epochs of images/s x seconds)
    seconds: float  # training time, evaluation excluded
    logged_epochs: int
    threads: int | None
    machine: dict[str, Any]
    sha: str
    config: dict[str, Any]
    pictures: list[Path] = field(default_factory=list)
    test_errors: list[float] = field(default_factory=list)  # each logged epoch's test error, in order

    @property
    def samples_per_epoch(self) -> float:
        return self.samples / max(self.logged_epochs, 1)


def _samples(rows: list[dict[str, Any]], batch: int) -> float:
    """Images trained on: per epoch images/s x seconds (both rounded in the log), kept within what the epoch's
    steps allow (more than ``steps - 1`` batches, at most ``steps`` batches), which fixes the rounding of very
    short epochs."""
    total, step = 0.0, 0
    for r in rows:
        steps = int(r.get("step", step)) - step
        step += steps
        seen = float(r["epoch_seconds"]) * float(r["images_per_second"])
        if steps > 0:
            seen = min(max(seen, (steps - 1) * batch + 1), steps * batch)
        total += seen
    return total


def log_rows(path: Path) -> list[dict[str, Any]]:
    """The epochs a ``log.jsonl`` logged, in order. A run stopped between logging an epoch and checkpointing it
    logs that epoch again when resumed: the last row of each epoch is kept. OSError or ValueError if unreadable."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({int(r.get("epoch", i)): r for i, r in enumerate(rows)}.values())


def read_record(path: Path, cell: Cell | None = None) -> Record:
    """Read a record folder (or a finished run directory, naming its ``cell``); RecordError says what is wrong."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        meta = json.loads((path / "meta.json").read_text())
        config = yaml.safe_load((path / "config.yaml").read_text())
        rows = log_rows(path / "log.jsonl")
    except OSError as exc:
        raise RecordError(f"{path}: not a run record ({exc.strerror}: {Path(exc.filename or '').name})") from exc
    except ValueError as exc:
        raise RecordError(f"{path}: unreadable record ({exc})") from exc
    if metrics.get("status") != "finished":
        raise RecordError(f"{path}: the run is not finished (status {metrics.get('status')!r})")
    if not rows:
        raise RecordError(f"{path}: log.jsonl is empty")
    last = rows[-1]
    return Record(
        cell=cell or Cell.from_path(path),
        path=path,
        test_error=float(metrics["test_error"]),
        train_error=float(last["train_error"]),
        samples=_samples(rows, int(config["train"]["batch_size"])),
        seconds=sum(float(r["epoch_seconds"]) for r in rows),
        logged_epochs=len(rows),
        threads=meta.get("machine", {}).get("threads"),
        machine=meta.get("machine", {}),
        sha=str(meta.get("git_sha") or ""),
        config=config,
        pictures=sorted((path / "pictures").glob("transformer*.png")),
        test_errors=[float(r["test_error"]) for r in rows if "test_error" in r],
    )


def load_records(root: Path) -> dict[Cell, Record]:
    """Every record under ``root`` (``<column>/<model>/e<E>-seed<S>/``); a folder that is not one is an error."""
    records: dict[Cell, Record] = {}
    for metrics in sorted(root.glob("*/*/*/metrics.json")):
        record = read_record(metrics.parent)
        records[record.cell] = record
    return records


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError("mean_std: no values")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)
