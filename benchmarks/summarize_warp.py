"""Summarise several ``bench_warp.py`` runs: each speed target's ratio in every run, how often it was met, the median.

One run on this 2-vCPU virtual machine moves by up to ±20% in its ratios, so a target is judged over several
runs. Usage::

    python benchmarks/summarize_warp.py benchmarks/results/warp-runs/*.json --out benchmarks/results/warp-runs.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="warp.json files written by bench_warp.py")
    parser.add_argument("--out", type=Path, default=None, help="write Markdown here (default: print it)")
    args = parser.parse_args()
    rows: dict[tuple[str, str, str], list[float]] = {}
    targets: dict[tuple[str, str, str], float] = {}
    loads = []
    for path in args.runs:
        data = json.loads(path.read_text())
        loads.append(data["machine"].get("foreign_cpu_share_rows", {}).get("max"))
        for row in data["sections"]["targets"]:
            key = (row["section"], row["shape"], row["vs"])
            rows.setdefault(key, []).append(float(row["speedup"]))
            targets[key] = float(row["target"])
    lines = [
        "# Warp benchmark: speed targets over several runs",
        "",
        "Generated from the JSON of each `bench_warp.py` run (one file per run, in run order) by",
        "",
        f"    python benchmarks/summarize_warp.py {' '.join(p.as_posix() for p in args.runs)}",
        "",
        "Ratio = competitor median / ours median (above 1: ours is faster).",
        "",
        "Largest share of the CPU other processes used while a row was timed, per run: "
        + ", ".join("?" if s is None else f"{100 * s:.0f}%" for s in loads)
        + ".",
        "",
        "| target | shape | vs | ratio per run | met | median |",
        "|---|---|---|---|---:|---:|",
    ]
    for (section, shape, vs), ratios in rows.items():
        factor = targets[(section, shape, vs)]
        met = sum(r >= factor for r in ratios)
        lines.append(
            f"| {section} >= {factor:g}x | {shape} | {vs} | {' '.join(f'{r:.2f}' for r in ratios)} | "
            f"{met}/{len(ratios)} | {statistics.median(ratios):.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
