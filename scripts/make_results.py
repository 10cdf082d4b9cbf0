"""Regenerate RESULTS.md and the learning curve from the committed records in ``results/``, and nothing else.

Every number in the report comes from a record (``results/<column>/<model>/e<epochs>-seed<seed>/``, written by
``scripts/record.py``) or from ``results/experiments.yaml`` (the paper's numbers, the chosen schedules); the
prose comes from ``results/NOTES.md``. A cell without a record reads *not run*. The learning curve is drawn to
``docs/results/learning-curve.png`` with its data beside it in ``learning-curve.json`` (what the test compares).
``tests/test_results.py`` checks that the committed RESULTS.md is exactly what the committed records generate.

Usage::

    make results        # or: .venv/bin/python scripts/make_results.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (
    ANATOMY_FILE,
    ANATOMY_TOLERANCE,
    CROPS_FILE,
    HIT_TOLERANCE,
    ROOT,
    Cell,
    Experiments,
    Record,
    RecordError,
    config_differences,
    load_records,
    mean_std,
)

from torchstn._io import atomic_write_bytes, atomic_write_text

__all__ = [
    "anatomy_tables",
    "cell_text",
    "crops_table",
    "curve_points",
    "fill_notes",
    "generate",
    "load_variants",
    "number_text",
    "read_notes",
]

CURVE_NAME = "learning-curve"


def read_notes(path: Path) -> dict[str, str]:
    """Sections of the notes file: ``## name`` headings, each followed by its Markdown (text before the first
    heading is the file's own comment and is not printed)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


PLACEHOLDER = re.compile(r"\{\{\s*([\w.-]+)/([\w.-]+)(?:/e(\d+)(?:-seed(\d+))?)?\s*\}\}")
VARIANT = re.compile(r"\{\{\s*variant/([\w.-]+?)(/scale)?\s*\}\}")


def fill_notes(text: str, report: Report, variants: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Replace each placeholder in a note with numbers from the records, as the tables show them, so that prose
    quoting a result is generated like the tables: ``{{column/model}}`` is the cell at its chosen schedule (the
    mean, with ± std and n: ``cell_text``), ``{{column/model/e60}}`` the same at 60 epochs, and
    ``{{column/model/e60-seed2}}`` one record's number; each reads *not run* without records, as in the tables.
    A placeholder naming no column or model of the experiments file is an error. ``{{variant/NAME}}`` is the %
    of test boxes found at the end of the co-localisation variant recorded as ``NAME.json`` in ``variants``
    (``_variants``' table), ``{{variant/NAME/scale}}`` its crops' mean scale; *not run* without that record."""
    exp = report.experiments
    found_variants = variants or {}

    def variant(match: re.Match[str]) -> str:
        name, scale = match.groups()
        if name not in found_variants:
            return "not run"
        last = found_variants[name]["epochs"][-1]
        return f"{last['scale']:.3f}" if scale else f"{last['hit']:.1f}"

    def cell(match: re.Match[str]) -> str:
        column, model, epochs, seed = match.groups()
        if column not in exp.columns or model not in exp.columns[column]["paper"]:
            raise KeyError(f"notes: {match.group(0)} names no cell of results/experiments.yaml")
        kind = exp.kinds.get(column, "error")
        if epochs is None:
            return report.cell(column, model, kind)
        records = report.seeds(column, model, int(epochs))
        if seed is None:
            return cell_text([_value(r, kind) for r in records])
        found = [r for r in records if r.cell.seed == int(seed)]
        return number_text(_value(found[0], kind)) if found else "not run"

    return PLACEHOLDER.sub(cell, VARIANT.sub(variant, text))


def _value(record: Record, kind: str) -> float:
    return 100.0 - record.test_error if kind == "hits" else record.test_error


def number_text(value: float) -> str:
    """One record's number as prose quotes it: at most two decimals, no trailing zeros (0.8, 91.3, 93)."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def cell_text(values: Sequence[float]) -> str:
    """``mean ± std (n=k)`` over seeds, ``x (n=1)`` for one, ``not run`` for none."""
    if not values:
        return "not run"
    mean, std = mean_std(values)
    return f"{mean:.2f} (n=1)" if std is None else f"{mean:.2f} ± {std:.2f} (n={len(values)})"


class Report:
    """The records that the tables show, split from those that no longer match their column's config."""

    def __init__(self, experiments: Experiments, records: dict[Cell, Record]) -> None:
        self.experiments = experiments
        self.records: dict[Cell, Record] = {}
        self.stale: dict[Cell, list[str]] = {}
        for cell, record in sorted(records.items()):
            if cell.column not in experiments.columns or cell.model not in experiments.columns[cell.column]["paper"]:
                self.stale[cell] = ["the column or model is not in the experiments file"]
                continue
            diff = config_differences(record.config, experiments.config(cell), experiments.budget_keys)
            if diff:
                self.stale[cell] = diff
            else:
                self.records[cell] = record

    def seeds(self, column: str, model: str, epochs: int | None = None) -> list[Record]:
        """The records of one cell over seeds (default: at the column's chosen schedule), by seed."""
        if epochs is None:
            epochs = self.experiments.chosen_epochs(column, model)
        return [r for c, r in sorted(self.records.items()) if (c.column, c.model, c.epochs) == (column, model, epochs)]

    def cell(self, column: str, model: str, kind: str) -> str:
        return cell_text([_value(r, kind) for r in self.seeds(column, model)])


def _paper(value: Any) -> str:
    """The paper's number; ``null`` in the experiments file (a task beyond the paper) reads as a dash."""
    return "—" if value is None else str(value)


def _section(report: Report, spec: dict[str, Any]) -> list[str]:
    exp, kind, columns = report.experiments, spec.get("kind", "error"), spec["columns"]
    layout = spec.get("layout", "simple")
    what = spec.get("what") or ("% of test boxes with IoU > 0.5" if kind == "hits" else "test error, %")
    lines: list[str]
    shown = list(exp.columns[columns[0]]["paper"]) if layout == "wide" else spec.get("models")
    if layout == "wide":
        # A section may name its columns itself (`labels`), e.g. where a study shows a column of another table.
        labels = [(spec.get("labels") or {}).get(c, exp.columns[c]["label"]) for c in columns]
        lines = [
            f"| model | {' | '.join(f'{label} ours | {label} paper' for label in labels)} |",
            "|---|" + "---|---|" * len(columns),
        ]
        for model in shown or []:
            row = [exp.label(model)]
            for c in columns:
                row += [report.cell(c, model, kind), _paper(exp.columns[c]["paper"][model])]
            lines.append("| " + " | ".join(row) + " |")
    elif layout == "settings":
        lines = ["| setting | model | epochs | ours | paper |", "|---|---|---|---|---|"]
        for c in columns:
            for model, paper in exp.columns[c]["paper"].items():
                if shown is not None and model not in shown:  # a section may show some of a column's models
                    continue
                epochs = exp.chosen_epochs(c, model)
                lines.append(
                    f"| {exp.columns[c]['label']} | {exp.label(model)} | {epochs} | "
                    f"{report.cell(c, model, kind)} | {_paper(paper)} |"
                )
    else:
        (c,) = columns
        lines = ["| model | epochs | ours | paper |", "|---|---|---|---|"]
        for model, paper in exp.columns[c]["paper"].items():
            epochs = exp.chosen_epochs(c, model)
            lines.append(f"| {exp.label(model)} | {epochs} | {report.cell(c, model, kind)} | {_paper(paper)} |")
    return [
        f"Our number ({what}, mean ± standard deviation over seeds, n seeds) beside the paper's.",
        "",
        *lines,
        "",
        _gaps(report, columns, kind, shown, labels if layout == "wide" else None),
    ]


def _miss(ours: float, paper: Any, kind: str) -> float | None:
    """How far ``ours`` is from the paper's number on the wrong side (a range: its best end), or None if it is not."""
    gap = ours - float(str(paper).split("-")[-1])
    return gap if ((gap > 0) if kind == "error" else (gap < 0)) else None


def _gaps(
    report: Report,
    columns: Sequence[str],
    kind: str,
    models: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> str:
    """One sentence: by how much each recorded cell misses the paper's number (a range: its best end), over the
    table's ``models`` (default: every model of each column) and with its column ``labels``."""
    exp, misses, recorded = report.experiments, [], False
    if all(paper is None for c in columns for paper in exp.columns[c]["paper"].values()):
        return "The paper has no number for this task."
    for i, c in enumerate(columns):
        for model, paper in exp.columns[c]["paper"].items():
            if models is not None and model not in models:
                continue
            values = [_value(r, kind) for r in report.seeds(c, model)]
            if not values or paper is None:  # nothing recorded, or nothing to compare with
                continue
            recorded = True
            gap = _miss(mean_std(values)[0], paper, kind)
            if gap is not None:
                label = labels[i] if labels else exp.columns[c]["label"]
                name = exp.label(model) if len(columns) == 1 else f"{label} {exp.label(model)}"
                misses.append(f"{name} {gap:+.2f}")
    if not misses:
        return "No recorded cell misses the paper's number." if recorded else "No cell of this table is recorded yet."
    unit = "points of error above" if kind == "error" else "points below"
    return f"Cells that miss the paper's number ({unit} it): {', '.join(misses)}."


UNDERFIT_RATIO = 0.8  # train error at least this share of the test error: the model underfits


def _misses_section(report: Report) -> list[str]:
    """Every recorded cell that misses the paper's number, with what its records say limits it."""
    exp, rows, seen = report.experiments, [], set()
    for spec in exp.sections:
        kind = spec.get("kind", "error")
        for c in spec["columns"]:
            if exp.columns[c].get("tried_for"):  # a change tried on another column's cells: listed with them
                continue
            for model, paper in exp.columns[c]["paper"].items():
                rs = report.seeds(c, model)
                if (c, model) in seen or not rs or paper is None:
                    continue
                seen.add((c, model))
                ours, spread = mean_std([_value(r, kind) for r in rs])
                gap = _miss(ours, paper, kind)
                if gap is None:
                    continue
                test = mean_std([r.test_error for r in rs])[0]
                train = mean_std([r.train_error for r in rs])[0]
                ratio = train / test if test > 0 else float("nan")
                reading = (
                    "train ≈ test: underfits (schedule or capacity)"
                    if ratio >= UNDERFIT_RATIO
                    else "train < test: a generalisation gap (data, regularisation)"
                )
                if spread is not None and abs(gap) <= spread:
                    reading += "; missed by no more than the seeds' std"
                epochs = exp.chosen_epochs(c, model)
                others = sorted({x.epochs for x in report.records if (x.column, x.model) == (c, model)} - {epochs})
                tried = [
                    f"{e} epochs: {cell_text([_value(r, kind) for r in report.seeds(c, model, e)])}" for e in others
                ]
                for t, other in exp.columns.items():
                    if other.get("tried_for") == c and model in other["paper"] and report.seeds(t, model):
                        at = exp.chosen_epochs(t, model)
                        schedule = f" ({at} epochs)" if at != epochs else ""  # said where it is not the row's
                        tried.append(f"{other['tried']}{schedule}: {report.cell(t, model, kind)}")
                rows.append(
                    f"| {exp.columns[c]['label']} {exp.label(model)} | {epochs} | {ours:.2f} | {_paper(paper)} | "
                    f"{abs(gap):.2f} | {train:.2f} / {test:.2f} | {ratio:.2f} | {reading} | {', '.join(tried) or '—'} |"
                )
    if not rows:
        return ["No recorded cell misses the paper's number."]
    return [
        "Each recorded cell that misses the paper's number (co-localisation: % of boxes found, the others: test",
        "error, %), from its records: the training error of the last epoch (measured while training, on that",
        "epoch's redrawn samples; for co-localisation the % of training boxes missed) against the test error, both",
        f"means over the cell's seeds. A training error at least {UNDERFIT_RATIO:.0%} of the test error reads as",
        "underfitting, where a longer schedule or more capacity is the lever; one far below it as a generalisation",
        "gap, where more distinct data or regularisation is. A miss no larger than the standard deviation over",
        "the cell's seeds is flagged: it may be no more than the seeds' spread. The last column lists what else was",
        "tried on the cell, each with its result: its records at other schedule lengths, and the columns that",
        "change one setting of it (`tried_for` in `results/experiments.yaml`; the runs are in the budget table",
        "below).",
        "",
        "| cell | epochs | ours | paper | missed by | train / test error | ratio | reading | also tried |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def curve_points(report: Report) -> dict[str, Any]:
    """The learning curve's data: per model and recorded schedule length, the means over seeds."""
    curve = report.experiments.curve
    points = []
    for model in curve.get("models", []):
        lengths = sorted({c.epochs for c in report.records if (c.column, c.model) == (curve["column"], model)})
        for epochs in lengths:
            rs = report.seeds(curve["column"], model, epochs)
            points.append(
                {
                    "model": model,
                    "epochs": epochs,
                    "seeds": [r.cell.seed for r in rs],
                    "samples": mean_std([r.samples for r in rs])[0],
                    "test_error": mean_std([r.test_error for r in rs])[0],
                    "train_error": mean_std([r.train_error for r in rs])[0],
                }
            )
    paper = report.experiments.columns[curve["column"]]["paper"] if curve else {}
    models = list(curve.get("models", []))
    return {"column": curve.get("column"), "models": models, "paper": {m: paper[m] for m in models}, "points": points}


def _draw_curve(data: dict[str, Any], labels: dict[str, str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for i, model in enumerate(data["models"]):
        pts = [p for p in data["points"] if p["model"] == model]
        if not pts:
            continue
        x = [p["samples"] / 1e6 for p in pts]
        colour = f"C{i}"
        ax.plot(x, [p["test_error"] for p in pts], "o-", color=colour, label=f"{labels[model]} test")
        ax.plot(x, [p["train_error"] for p in pts], "x--", color=colour, label=f"{labels[model]} train (last epoch)")
        for p, xi in zip(pts, x, strict=True):
            ax.annotate(f"{p['epochs']} ep", (xi, p["test_error"]), textcoords="offset points", xytext=(4, 4), size=7)
        ax.axhline(float(data["paper"][model]), color=colour, linestyle=":", label=f"{labels[model]} paper (test)")
    if data["points"]:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        seen = sorted({round(p["samples"] / 1e6, 2) for p in data["points"]})
        ax.set_xticks(seen, [f"{v:.2f}" for v in seen])  # a tick at each schedule's samples, labelled
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no committed records yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training samples seen (millions)")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Learning curve, {title}: final errors against samples seen")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _curve_section(report: Report, data: dict[str, Any], link: str, json_link: str) -> list[str]:
    exp = report.experiments
    lines = [f"![learning curve]({link})", "", f"Data: [`{json_link}`]({json_link}).", ""]
    lines += ["| model | epochs | seeds | samples seen | test error | train error (last epoch) |"]
    lines += ["|---|---|---|---|---|---|"]
    for p in data["points"]:
        lines.append(
            f"| {exp.label(p['model'])} | {p['epochs']} | {len(p['seeds'])} | {p['samples'] / 1e6:.2f}M | "
            f"{p['test_error']:.2f} | {p['train_error']:.2f} |"
        )
    if not data["points"]:
        lines.append(f"| {', '.join(exp.label(m) for m in data['models'])} | not run | | | | |")
    families = sorted({f for spec in exp.columns.values() for f in spec["epochs"]})
    lines += ["", "Chosen schedule (epochs) of each model family, per column (`results/experiments.yaml`):", ""]
    lines += ["| column | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for spec in exp.columns.values():
        lines.append(f"| {spec['label']} | " + " | ".join(str(spec["epochs"].get(f, "—")) for f in families) + " |")
    return lines


def _budget_overrides(exp: Experiments, record: Record) -> list[str]:
    """The budget-only settings in which a record differs from its column's config (e.g. train.threads=1)."""
    base = exp.config(record.cell)
    out = []
    for key in exp.budget_keys:
        node_r: Any = record.config
        node_b: Any = base
        for part in key.split("."):
            node_r = node_r.get(part) if isinstance(node_r, dict) else None
            node_b = node_b.get(part) if isinstance(node_b, dict) else None
        if node_r != node_b:
            out.append(f"{key}={node_r!r}" if isinstance(node_r, str) else f"{key}={node_r}")
    return out


def _budget(report: Report, results_link: str) -> tuple[list[str], list[str]]:
    exp = report.experiments
    machines = sorted({json.dumps(r.machine, sort_keys=True) for r in report.records.values()})
    lines = [
        "Every committed record, also those at schedules a table does not use (they feed the learning curve).",
        "Training time is the sum of the epochs' training time (evaluation excluded); samples seen, the images",
        "trained on (redrawn every epoch where the config says `redraw`). The result is the record's own: its",
        "test error, %, or for co-localisation the % of test boxes found.",
        "",
        "| record | epochs | seed | result | samples seen | training time | threads | machine | optimiser | code |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, r in sorted(report.records.items()):
        t = r.config["train"]
        opt = f"{t['optimizer']} lr {t['lr']:g} {t['schedule']} batch {t['batch_size']}"
        machine = machines.index(json.dumps(r.machine, sort_keys=True)) + 1
        result = _value(r, exp.kinds.get(cell.column, "error"))
        lines.append(
            f"| [`{cell.path.as_posix()}`]({results_link}/{cell.path.as_posix()}) | {cell.epochs} | {cell.seed} | "
            f"{result:.2f} | {r.samples / 1e6:.2f}M | {r.seconds / 60:.1f} min | {r.threads} | M{machine} | {opt} | "
            f"`{r.sha[:10]}` |"
        )
    if not report.records:
        lines.append("| none committed yet | | | | | | | | | |")
    lines += ["", "Machines (from each record's meta.json):", ""]
    lines += [f"- M{i}: `{m}`" for i, m in enumerate(machines, 1)] or ["- none"]
    commands = []
    for cell, r in sorted(report.records.items()):
        spec = exp.columns[cell.column]
        sets = " ".join([*exp.overrides(cell), *_budget_overrides(exp, r)])
        commands.append(
            f"- `{cell.path.as_posix()}` (code `{r.sha[:10]}`): `python -m torchstn.cli train --config "
            f"{spec['config']} --out runs/repro/{cell.path.as_posix()} --set {sets}`"
        )
    return lines, commands


def _pictures(report: Report, sections: list[dict[str, Any]], root_out: Path) -> list[str]:
    """The first seed's transformer pictures of each cell a table shows, once (a column may be in two tables)."""
    exp = report.experiments
    lines: list[str] = []
    drawn: set[tuple[str, str]] = set()
    for spec in sections:
        for column in spec["columns"]:
            for model in exp.columns[column]["paper"]:
                rs = report.seeds(column, model)
                if not rs or (column, model) in drawn or model not in (spec.get("models") or [model]):
                    continue
                drawn.add((column, model))
                for picture in rs[0].pictures:
                    which = picture.stem.removeprefix("transformer").replace("_transformers_", " ").strip()
                    label = f"{exp.columns[column]['label']}, {exp.label(model)}"
                    label += f" (transformer {which})" if which else ""
                    link = Path(os.path.relpath(picture, root_out)).as_posix()
                    lines += [
                        f"**{label}** (seed {rs[0].cell.seed}, {rs[0].cell.epochs} epochs)",
                        "",
                        f"![]({link})",
                        "",
                    ]
    return lines


CROP_MEASURES = (  # crops.json's keys (scripts/coloc_crops.py), as the table of crops heads them
    ("median crop/box size", "crop / box size (median)", "{:.2f}"),
    ("hits at the true size %", "found at the box's size, %", "{:.1f}"),
    ("misses near the box % (IoU > 0.3)", "misses overlapping the box (IoU > 0.3), %", "{:.0f}"),
    ("centre error px (median), hits", "centre error, px (median): hits", "{:.1f}"),
    ("centre error px (median), misses", "misses", "{:.1f}"),
)


def found_at(record: Record) -> int | None:
    """The first epoch at which the record's model found half the test boxes (its log), or None if it never did."""
    return next((i + 1 for i, error in enumerate(record.test_errors) if 100.0 - error >= 50.0), None)


def crops_table(report: Report) -> list[str]:
    """One row per co-localisation record: the boxes found, the epoch it first found half of them (from its
    log), and where its crops land (its ``crops.json``, from ``scripts/coloc_crops.py --record``; a dash where
    none is committed, or for the misses' figures of a record without misses). A ``crops.json`` whose hit rate
    is not its record's is an error (a stale measurement)."""
    exp = report.experiments
    order = {c: i for i, c in enumerate(exp.columns)}
    rows = sorted(
        (r for c, r in report.records.items() if exp.kinds.get(c.column) == "hits"),
        key=lambda r: (order[r.cell.column], r.cell.model, r.cell.epochs, r.cell.seed),
    )
    head = ["setting", "epochs", "seed", "boxes found, %", "half found at epoch", *(h for _, h, _ in CROP_MEASURES)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        hits = 100.0 - r.test_error
        measured = ["—"] * len(CROP_MEASURES)
        path = r.path / CROPS_FILE
        if path.is_file():
            measures = json.loads(path.read_text())["measures"]
            if abs(measures["hits %"] - hits) > HIT_TOLERANCE:
                raise RecordError(f"{path}: {measures['hits %']:.2f}% of boxes, its record {hits:.2f}: stale")
            measured = ["—" if measures[key] is None else fmt.format(measures[key]) for key, _, fmt in CROP_MEASURES]
        epoch = found_at(r)
        row = [exp.columns[r.cell.column]["label"], str(r.cell.epochs), str(r.cell.seed), f"{hits:.1f}"]
        lines.append("| " + " | ".join([*row, "—" if epoch is None else str(epoch), *measured]) + " |")
    return lines


def _binning(measured: dict[str, Any]) -> dict[str, tuple[list[float], list[int]]]:
    """An anatomy's bins and their digit counts, by factor: equal for two anatomies of one test set."""
    return {name: (f["edges"], f["digits"]) for name, f in measured["factors"].items()}


def anatomy_tables(report: Report) -> list[str]:
    """One table per column whose records have an ``anatomy.json`` (``scripts/error_anatomy.py --record``): each
    model's errors on the column's test digits grouped by a factor of their distortion, a row per bin. An
    anatomy whose test error is not its record's is an error (a stale measurement), as are two anatomies of one
    column that bin its test set differently."""
    exp = report.experiments
    by_column: dict[str, list[tuple[Record, dict[str, Any]]]] = {}
    columns = list(exp.columns)

    def order(item: tuple[Cell, Record]) -> tuple[int, int, int, int]:
        cell = item[0]
        model = list(exp.columns[cell.column]["paper"]).index(cell.model)
        return columns.index(cell.column), model, cell.epochs, cell.seed

    for cell, r in sorted(report.records.items(), key=order):
        path = r.path / ANATOMY_FILE
        if not path.is_file():
            continue
        measured = json.loads(path.read_text())
        if abs(measured["test_error"] - r.test_error) > ANATOMY_TOLERANCE:
            raise RecordError(f"{path}: {measured['test_error']:.2f}% test error, its record {r.test_error:.2f}: stale")
        by_column.setdefault(cell.column, []).append((r, measured))
    if not by_column:
        return ["No committed anatomies yet (`scripts/error_anatomy.py --record`)."]
    lines: list[str] = []
    for column, entries in by_column.items():
        first = entries[0][1]
        for r, measured in entries[1:]:
            if _binning(measured) != _binning(first):
                raise RecordError(f"{r.path / ANATOMY_FILE}: bins another test set than its column's first anatomy")
        models = [exp.label(r.cell.model) + f" (seed {r.cell.seed})" for r, _ in entries]
        lines += [
            f"{exp.columns[column]['label']}, {first['n']} test digits; each model's error, %, and its count of "
            "errors in the bin:",
            "",
            f"| factor | bin | digits | {' | '.join(models)} |",
            "|---|---|---:|" + "---:|" * len(entries),
        ]
        for name, f in first["factors"].items():
            for i, (lo, hi) in enumerate(zip(f["edges"], f["edges"][1:], strict=False)):
                digits = f["digits"][i]
                cells = []
                for _, measured in entries:
                    errors = measured["factors"][name]["errors"][i]
                    cells.append(f"{100.0 * errors / digits:.2f} ({errors})" if digits else "—")
                lines.append(f"| {name} | {lo:g}-{hi:g} | {digits} | {' | '.join(cells)} |")
        total = [f"{measured['test_error']:.2f}" for _, measured in entries]
        lines += [f"| all | | {first['n']} | {' | '.join(total)} |", ""]
    return lines[:-1]


def load_variants(folder: Path) -> dict[str, dict[str, Any]]:
    """The co-localisation variants' committed records (``scripts/coloc_variants.py --record``), by file stem,
    in name order."""
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return {path.stem: json.loads(path.read_text()) for path in paths}


def _variants(variants: Mapping[str, Mapping[str, Any]], link: str) -> list[str]:
    """The co-localisation variants' table, one row per record (``load_variants``); ``link``: their folder."""
    if not variants:
        return ["No committed records of `scripts/coloc_variants.py` yet."]
    lines = [
        "| variant (`scripts/coloc_variants.py` flags) | epochs | % IoU > 0.5 at the end | half found at epoch "
        "| mean scale | loss, last epoch | d(3,3') | d(3,blank) | code | record |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, rec in variants.items():
        last, dist = rec["epochs"][-1], rec.get("distances", {})
        half = next((str(e["epoch"]) for e in rec["epochs"] if e["hit"] >= 50), "—")
        loss = f"{last['loss']:.1f}" if "loss" in last else "—"
        lines.append(
            f"| `{rec['flags'] or '(the literal reading)'}` | {len(rec['epochs'])} | {last['hit']:.1f} | {half} | "
            f"{last['scale']:.3f} | {loss} | {dist.get('digit_digit', float('nan')):.0f} | "
            f"{dist.get('digit_blank', float('nan')):.0f} | `{rec['meta']['git_sha'][:10]}` "
            f"| [`{name}.json`]({link}/{name}.json) |"
        )
    return lines


def generate(
    results: Path, out: Path, figures: Path, experiments: Path | None = None, notes: Path | None = None
) -> str:
    """Write ``out`` (RESULTS.md) and the learning curve (PNG and JSON) into ``figures``; return the report."""
    exp = Experiments(experiments or results / "experiments.yaml")
    text_notes = read_notes(notes or results / "NOTES.md")
    report = Report(exp, load_records(results))
    variants = load_variants(results / "coloc-variants")
    root_out = out.resolve().parent
    results_link = Path(os.path.relpath(results.resolve(), root_out)).as_posix()

    def note(name: str) -> list[str]:
        if name not in text_notes:
            raise KeyError(f"notes: no section '## {name}'")
        return ["", fill_notes(text_notes[name], report, variants)]

    text = [
        "# Reproduction of the paper's results",
        "",
        f"Generated by `scripts/make_results.py` (`make results`) from the committed records in `{results_link}/`",
        f"and `{results_link}/experiments.yaml` (models, the paper's numbers, chosen schedules), with the notes of",
        f"`{results_link}/NOTES.md`; do not edit by hand. A cell reads *not run* until a record is committed for it.",
        *note("intro"),
    ]
    for spec in exp.sections:
        text += ["", f"## {spec['title']}", "", *_section(report, spec)]
        for name in spec.get("notes", []):
            text += note(name)
            if name == "coloc_variants":
                text += ["", *_variants(variants, f"{results_link}/coloc-variants")]
            if name == "coloc_crops":
                text += ["", *crops_table(report)]
    text += ["", "## Where a cell misses the paper", "", *_misses_section(report)]
    text += ["", "## Where the shipped models' errors are", *note("anatomy"), "", *anatomy_tables(report)]
    data = curve_points(report)
    png, sidecar = figures / f"{CURVE_NAME}.png", figures / f"{CURVE_NAME}.json"
    title = exp.columns[exp.curve["column"]]["label"] if exp.curve else ""
    _draw_curve(data, {m: exp.label(m) for m in data["models"]}, title, png)
    atomic_write_text(sidecar, json.dumps(data, indent=1, sort_keys=True) + "\n")
    link = Path(os.path.relpath(png.resolve(), root_out)).as_posix()
    json_link = Path(os.path.relpath(sidecar.resolve(), root_out)).as_posix()
    text += ["", f"## Learning curve ({title})", "", *_curve_section(report, data, link, json_link), *note("curve")]
    budget, commands = _budget(report, results_link)
    text += ["", "## Training budget of each record", "", *budget]
    text += ["", "## Commands", "", *note("commands")[1:]]
    if commands:
        text += ["", "Each record's run, as `scripts/reproduce.py` starts it (at the record's code):", "", *commands]
    if report.stale:
        text += ["", "## Records not shown", "", "Committed records whose config no longer matches their cell's:", ""]
        text += [f"- `{c.path.as_posix()}`: {', '.join(d)}" for c, d in sorted(report.stale.items())]
    pictures = _pictures(report, exp.sections, root_out)
    if pictures:
        text += ["", "## What the transformers learnt", "", "Test inputs with the sampling grid outlined (left) and"]
        text += ["the transformer's output (right), at the end of training.", "", *pictures]
    body = "\n".join(text).rstrip("\n") + "\n"
    atomic_write_text(out, body)
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the records (default: results/)")
    parser.add_argument("--out", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "results", help="the learning curve's folder")
    parser.add_argument("--experiments", type=Path, default=None, help="default: RESULTS/experiments.yaml")
    parser.add_argument("--notes", type=Path, default=None, help="default: RESULTS/NOTES.md")
    args = parser.parse_args(argv)
    generate(args.results, args.out, args.figures, args.experiments, args.notes)
    print(f"wrote {args.out} and {args.figures / CURVE_NAME}.png/.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
