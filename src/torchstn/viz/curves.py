"""Curves: training curves from JSON-lines log rows, drawn with matplotlib's object API.

``matplotlib.figure.Figure`` on an Agg canvas, so nothing here touches the global ``pyplot`` state; the PNG is
written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchstn._io import atomic_write
from torchstn.errors import DTypeError, ShapeError

__all__ = ["plot_curves"]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_curves(
    log_rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Plot training curves from JSON-lines log rows into a PNG.

    Every numeric key is plotted against ``epoch`` (or the row index): keys containing ``loss`` on one panel,
    ``err`` / ``acc`` on another (in percent, as logged), ``lr`` on a log-scaled panel and any other numeric key
    on a last one; empty panels are left out. Rows that lack a key leave a gap.

    Args:
        log_rows: One mapping per logged epoch, e.g. ``{"epoch": 3, "train_loss": 0.2, "test_error": 1.4}``.
        path: PNG to write (atomically; folders are created).
        title: Figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(log_rows, Mapping) or not all(isinstance(r, Mapping) for r in log_rows):
        raise DTypeError("log_rows: expected a sequence of mappings (one per logged epoch)")
    if len(log_rows) == 0:
        raise ShapeError("log_rows: expected at least one row")
    keys = sorted({k for r in log_rows for k, v in r.items() if _is_number(v)})
    step = "epoch" if "epoch" in keys else None
    xs = [float(r[step]) if step and _is_number(r.get(step)) else float(i) for i, r in enumerate(log_rows)]  # type: ignore[arg-type]
    groups: dict[str, list[str]] = {"loss": [], "error (%)": [], "learning rate": [], "other": []}
    for k in keys:
        if k == step:
            continue
        low = k.lower()
        if "loss" in low:
            groups["loss"].append(k)
        elif "err" in low or "acc" in low:
            groups["error (%)"].append(k)
        elif low == "lr" or low.endswith("_lr") or "learning_rate" in low:
            groups["learning rate"].append(k)
        else:
            groups["other"].append(k)
    panels = [(name, ks) for name, ks in groups.items() if ks]
    if not panels:
        raise ShapeError("log_rows: no numeric values to plot besides the epoch")
    fig = Figure(figsize=(5.0 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ks) in zip(axes, panels, strict=True):
        for k in ks:
            ys = [float(v) if _is_number(v := r.get(k)) else math.nan for r in log_rows]  # type: ignore[arg-type]
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=k)
        if name == "learning rate" and all(
            float(v) > 0  # type: ignore[arg-type]
            for r in log_rows
            for k in ks
            if _is_number(v := r.get(k))
        ):
            ax.set_yscale("log")
        ax.set_xlabel(step or "row")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))
    return out
