"""torchstn.viz.curves: training curves from JSON-lines rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from torchstn.errors import ShapeError
from torchstn.viz import (
    plot_curves,
)


def test_plot_curves(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    rows: list[dict[str, object]] = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "train_error": 50.0 / (e + 1), "lr": 0.01 * 0.5**e} for e in range(5)
    ]
    for row in rows[1:]:
        row["test_error"] = 60.0 / float(row["epoch"])  # type: ignore[arg-type]
    rows[2]["note"] = "text is ignored"
    path = plot_curves(rows, tmp_path / "curves" / "curves.png", title="run")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1500, 360)  # three panels: loss, error, lr
    assert plt.get_fignums() == figures
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ShapeError, match="log_rows"):
        plot_curves([], tmp_path / "none.png")
