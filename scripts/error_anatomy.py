"""Where a shipped Table 1 model's test errors lie: its error on the test digits grouped by what the column's
recipe did to each (how much of the digit it pushed out of the frame, how small it made it, how far it turned it).

A column's test error is one number; this splits it by the distortion each test digit was drawn with, so that a
miss can be read: errors spread evenly say the model, errors piled on digits the recipe clipped or shrank to a
few pixels say the data. Each factor is computed from the recipe's own draws (the test set's ``meta``):

* ``ink outside (%)`` (P): the share of the digit's ink that its homography maps outside the 28x28 frame (the
  digit warped onto a canvas three times as wide, as ``scripts/p_recipe_ink.py``), in fixed bins;
* ``digit side (px)`` (P, RTS, E): the side of the 28x28 digit box in output pixels (P: the square root of the
  area of the quadrilateral its corners land on; RTS and E: 28 times the drawn scale), in quintiles;
* ``rotation (deg, either way)`` (R, RTS): the magnitude of the drawn rotation, in quintiles.

It reads the weights that ship in the package (``src/torchstn/weights``, committed), regenerates the test set of
each one's record from the record's config, and refuses a model whose error measured again differs from its
record's ``test_error`` by more than ``ANATOMY_TOLERANCE`` (two digits in 10,000): then the test set or the
weights are not the record's.
With ``--record`` it writes the measurements into the record as ``anatomy.json`` (naming the weights' SHA-256
and the commit of the measuring code), where ``scripts/make_results.py`` shows them::

    .venv/bin/python scripts/error_anatomy.py --columns p_polar rts r e --record
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ANATOMY_FILE, ANATOMY_TOLERANCE, ROOT, RecordError

import torchstn
from torchstn._io import atomic_write_text
from torchstn.data import DistortedMNIST, get_recipe
from torchstn.models import create_model
from torchstn.models.pretrained import PretrainedWeights, read_index
from torchstn.train.rundir import git_info
from torchstn.transforms import Projective

__all__ = ["anatomy", "bins", "factors", "ink_outside", "measuring_code", "record_anatomy", "stale_anatomies"]

INK_EDGES = (0.0, 1.0, 5.0, 20.0, 100.0)  # % of the digit's ink outside the frame


def ink_outside(digits: torch.Tensor, matrix: torch.Tensor, widen: float = 3.0) -> torch.Tensor:
    """Per digit, the share (%) of its ink that the homographies ``matrix`` (B, 3, 3; output -> digit, normalised)
    map outside the output frame: each digit (B, 28, 28) warped onto a canvas ``widen`` times as wide."""
    h = matrix @ torch.diag(torch.tensor([widen, widen, 1.0], dtype=matrix.dtype))
    side = round(28 * widen)
    wide = torchstn.warp(
        digits[:, None].float(), (h / h[:, 2:, 2:]).reshape(-1, 9)[:, :8].float(), Projective(), (side, side)
    )
    lo = (side - 28) // 2
    inside = wide[..., lo : lo + 28, lo : lo + 28].sum((1, 2, 3))
    return 100.0 * (1.0 - inside / wide.sum((1, 2, 3)).clamp_min(1e-12))


def _quad_area(corners: torch.Tensor) -> torch.Tensor:
    """Area of the quadrilaterals whose corners (B, 4, 2) are listed top-left, top-right, bottom-left,
    bottom-right (the recipe's order), by the shoelace formula."""
    x, y = corners[:, [0, 1, 3, 2]].unbind(-1)  # walk the outline
    return 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1).abs()


def factors(recipe: str, meta: dict[str, torch.Tensor], digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The factors of each test digit (``digits``: the undistorted source digits, (B, 28, 28) in [0, 1]) that
    the recipe ``recipe`` drew (``meta``), by name; a recipe without factors here gets none."""
    if recipe == "projective":
        side = 28.0 * (_quad_area(meta["corners"]) / 4.0).sqrt()  # normalised frame: side 2, area 4
        return {"ink outside (%)": ink_outside(digits, meta["matrix"]), "digit side (px)": side}
    out: dict[str, torch.Tensor] = {}
    if recipe in ("rts", "elastic"):
        out["digit side (px)"] = 28.0 * meta["scale"].double()
    if recipe in ("rotated", "rts"):
        out["rotation (deg, either way)"] = meta["angle"].double().abs()
    return out


def bins(name: str, values: torch.Tensor, quantiles: int = 5) -> list[float]:
    """The bin edges of a factor: fixed for the ink outside the frame, else its quantiles (rounded to 0.1), the
    first at or below the smallest value and the last at or above the largest."""
    if name.startswith("ink"):
        return list(INK_EDGES)
    q = torch.quantile(values.double(), torch.linspace(0, 1, quantiles + 1, dtype=torch.float64))
    edges = [round(float(v), 1) for v in q]
    edges[0], edges[-1] = math.floor(float(values.min()) * 10) / 10, math.ceil(float(values.max()) * 10) / 10
    return sorted(set(edges))


def _bin_index(values: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Each value's bin: ``i`` for ``edges[i] <= v < edges[i+1]``, the last bin closed."""
    inner = torch.tensor(edges[1:-1], dtype=torch.float64)
    return torch.bucketize(values.double(), inner, right=True)


def _test_set(config: dict[str, Any]) -> DistortedMNIST:
    data = config["data"]
    recipe = get_recipe(data["recipe"], **data["recipe_params"])
    return DistortedMNIST(recipe, data["test_split"], seed=data["seed"], n=data["n_test"], cache=False)


def anatomy(weights: PretrainedWeights, batch_size: int = 500) -> dict[str, Any]:
    """The measurements of one shipped model on its record's test set (refused if its error is not the record's)."""
    record = ROOT / weights.record
    config = yaml.safe_load((record / "config.yaml").read_text())
    logged = json.loads((record / "metrics.json").read_text())["test_error"]
    test = _test_set(config)
    model = create_model(weights.model, pretrained=weights.tag).eval()
    x = test.images.float() / 255.0
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    wrong = pred != test.labels
    error = 100.0 * float(wrong.double().mean())
    if abs(error - logged) > ANATOMY_TOLERANCE:
        raise RecordError(
            f"{weights.file}: {error:.2f}% on the test set of {weights.record}, its record {logged:.2f}: "
            "not the record's model or test set"
        )
    digits = test.source.images[test.recipe.source_index(torch.arange(len(x)), test.source)]
    out: dict[str, Any] = {}
    for name, values in factors(test.recipe.name, test.meta, digits).items():
        edges = bins(name, values)
        index = _bin_index(values, edges)
        out[name] = {
            "edges": edges,
            "digits": [int((index == i).sum()) for i in range(len(edges) - 1)],
            "errors": [int((wrong & (index == i)).sum()) for i in range(len(edges) - 1)],
        }
    return {"test_error": round(error, 4), "n": len(x), "weights_sha256": weights.sha256, "factors": out}


def measuring_code() -> str:
    """The commit of the measuring code (``git_info`` of ``src/`` and ``scripts/``), refused if it has uncommitted
    changes: the records' own files (an anatomy.json not yet committed) do not count."""
    info = git_info(ROOT, ("src", "scripts"))
    if info.get("git_dirty") is not False or not info.get("git_sha"):
        raise RecordError("the measuring code has uncommitted changes (or no commit): commit src/ and scripts/ first")
    return str(info["git_sha"])


def record_anatomy(weights: PretrainedWeights, measured: dict[str, Any], code: str) -> Path:
    """Write ``measured`` into the record of ``weights`` as anatomy.json; returns its path."""
    path = ROOT / weights.record / ANATOMY_FILE
    atomic_write_text(path, json.dumps({"code": code, **measured}, indent=1) + "\n")
    return path


def stale_anatomies(results: Path, shipped: Sequence[PretrainedWeights]) -> list[Path]:
    """The anatomy.json files under ``results`` whose record no longer holds shipped weights (a better seed of its
    cell ships now): they describe weights the package does not have."""
    records = {w.record for w in shipped}
    found = sorted(results.glob(f"*/*/*/{ANATOMY_FILE}"))
    return [p for p in found if p.parent.relative_to(results.parent).as_posix() not in records]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", nargs="+", default=["r", "rts", "p_polar", "e"], help="the shipped columns")
    parser.add_argument("--record", action="store_true", help="write anatomy.json into each model's record")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    code = measuring_code() if args.record else ""
    index = read_index()
    shipped = [w for w in index if Path(w.record).parts[1] in args.columns]
    if not shipped:
        parser.error(f"--columns: no shipped weights of {args.columns}")
    for weights in shipped:
        measured = anatomy(weights)
        print(f"{weights.model}-{weights.tag}: {measured['test_error']:.2f}% on {measured['n']} test digits")
        for name, f in measured["factors"].items():
            edges = zip(f["edges"], f["edges"][1:], f["digits"], f["errors"], strict=False)
            cells = [f"{lo:g}-{hi:g}: {e}/{d}" for lo, hi, d, e in edges]
            print(f"  {name}: " + ", ".join(cells))
        if args.record:
            print(f"  [recorded] {record_anatomy(weights, measured, code)}")
    if args.record:
        for path in stale_anatomies(ROOT / "results", index):
            path.unlink()
            print(f"[removed] {path}: its record's weights no longer ship")
    return 0


if __name__ == "__main__":
    sys.exit(main())
