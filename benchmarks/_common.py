"""What every benchmark shares: interleaved timing with medians, a measure of other processes' load, machine info.

Benchmarks run as scripts (``python benchmarks/bench_*.py``), so they import this module by its bare name.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import torchstn

__all__ = ["ForeignLoad", "Stats", "interleaved", "machine_info"]


class ForeignLoad:
    """Share of the machine's CPU time that *other* processes used since construction (Linux ``/proc/stat``).

    ``share()`` is None where ``/proc/stat`` is unavailable.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(busy CPU seconds, total CPU seconds, this process's CPU seconds)."""
        try:
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        idle = ticks[3] + ticks[4]  # idle + iowait
        mine = own.user + own.system + own.children_user + own.children_system
        return (sum(ticks) - idle) / hz, sum(ticks) / hz, mine

    def share(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        busy, total, own = (e - s for e, s in zip(end, self._start, strict=True))
        return max(0.0, busy - own) / total


@dataclass(frozen=True)
class Stats:
    """Median and interquartile range of one candidate's timed repetitions, in milliseconds."""

    median_ms: float
    iqr_ms: float
    repeats: int

    @staticmethod
    def of(ms: Sequence[float]) -> Stats:
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], ms[0], ms[0])
        return Stats(statistics.median(ms), q3 - q1, len(ms))


def interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> tuple[dict[str, Stats], float | None]:
    """Time each candidate ``repeats`` times, every repetition running all of them in a rotated order.

    Returns:
        Per candidate its :class:`Stats`, and the other processes' CPU share during the timed part.
    """
    for _ in range(warmup):
        for step in candidates.values():
            step()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    load = ForeignLoad()
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            candidates[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Stats.of(ms) for name, ms in samples.items()}, load.share()


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU model, cores, threads and versions, plus ``extra`` entries."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchstn": torchstn.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **extra,
    }
