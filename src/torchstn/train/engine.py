"""The training loop: in-memory batches, checkpoints that resume exactly, NaN guard, DDP.

The run directory's layout and files are :mod:`torchstn.train.rundir`'s; what a config builds (model,
optimizer, schedule) is :mod:`torchstn.train.factories`'.

Determinism: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone and the global RNG state is
saved in each checkpoint, so a resumed run reproduces an uninterrupted one.

Distributed data parallel: launched by ``torchrun``, each of ``W`` processes takes every ``W``-th sample of each
global batch (``train.batch_size`` is the global batch), gradients are averaged by DDP, and error counts are summed
across processes before they are logged. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from torchstn.errors import ConfigError, NonFiniteError, RunError, TrainingDiverged
from torchstn.models import model_function
from torchstn.modules import SpatialTransformer, identity_penalty
from torchstn.train.config import validate_config
from torchstn.train.factories import build_model, build_optimizer, build_scheduler
from torchstn.train.rundir import (
    CHECKPOINT,
    clean_stale_temporaries,
    load_checkpoint,
    lock_run,
    prepare_run_dir,
    probe_writable,
    read_log,
    run_meta,
    save_checkpoint,
    write_config,
    write_json,
    write_log,
    writing,
)
from torchstn.train.tasks import Task, build_task, task_builder

__all__ = [
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "epoch_order",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "shard",
    "train",
]


# --- distributed context ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return Dist()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return Dist(dist.get_rank(), dist.get_world_size())

    def sum(self, t: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


# --- progress -------------------------------------------------------------------------------------------------


class Progress:
    """Progress of an epoch on stderr: a bar redrawn in place at most twice a second on a terminal, and a plain line
    every ``every`` seconds otherwise (a log file gets no carriage returns); silent when ``quiet``."""

    def __init__(self, total: int, label: str, quiet: bool, every: float = 30.0) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.tty = sys.stderr.isatty()
        self.interval = 0.5 if self.tty else every
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int, **info: float) -> None:
        self.done += n
        if self.quiet or n == 0:
            return
        now = time.perf_counter()
        end = self.done >= self.total
        if now - self.last < self.interval and not (end and self.tty):
            return
        self.last = now
        extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        rate = self.done / max(now - self.start, 1e-9)
        if self.tty:
            bar = "#" * int(24 * self.done / max(self.total, 1))
            print(f"\r{self.label} [{bar:<24}] {self.done}/{self.total} {rate:.0f}/s {extra}", end="", file=sys.stderr)
            if end:
                print(file=sys.stderr)
        else:
            pct = 100.0 * self.done / max(self.total, 1)
            print(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.0f}/s {extra}", file=sys.stderr)


# --- the loop ---------------------------------------------------------------------------------------------------


def _transformers(model: nn.Module) -> list[SpatialTransformer]:
    return [m for m in model.modules() if isinstance(m, SpatialTransformer)]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of epoch ``epoch``: a permutation of ``n`` drawn from ``(seed, epoch)`` alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def shard(index: Tensor, rank: int, world: int) -> Tensor:
    """This process's part of a global batch: every ``world``-th sample starting at ``rank``."""
    return index[rank::world]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch_size: int = 1024, ctx: Dist | None = None) -> dict[str, float]:
    """Error (%) of ``model`` on the task's test source; summed over processes under DDP."""
    ctx = ctx or Dist()
    was = model.training
    model.eval()
    n = len(task.test)
    mine = torch.arange(ctx.rank, n, ctx.world)
    errors = torch.zeros((), dtype=torch.float64)
    for lo in range(0, len(mine), batch_size):
        x, y = task.test.batch(mine[lo : lo + batch_size])
        errors += task.errors(model, x, y).double()
    stats = ctx.sum(torch.stack((errors, torch.tensor(float(len(mine)), dtype=torch.float64))))
    model.train(was)
    return {"test_error": float(100.0 * stats[0] / stats[1])}


@contextmanager
def _process_group(ctx: Dist) -> Iterator[None]:
    try:
        yield
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class TrainingInterrupted(RunError):
    """SIGINT or SIGTERM stopped training; a checkpoint of the run so far was written (resume it)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, int]]:
    """Turn SIGINT and SIGTERM into a request (``flag["signum"]``) that the loop honours at the next step."""
    flag: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum: int, frame: Any) -> None:
        flag["signum"] = signum

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
    allow_call: Collection[str] = (),
) -> dict[str, Any]:
    """Train (or resume) the run that ``config`` describes in ``run_dir``; return the final metrics.

    Resuming a finished run changes nothing and returns its metrics; resuming with a larger ``train.epochs`` than
    the run was started with extends it (the only change a resume accepts).

    Args:
        config: A resolved config (:func:`~torchstn.train.load_config`).
        run_dir: The run directory (created if needed; for a new run it must not hold a run unless ``overwrite``).
        resume: Continue from ``run_dir``'s last checkpoint.
        quiet: No progress output.
        stop_after: Stop after this many epochs in this call (a time-boxed session); resume later.
        overwrite: Replace the run ``run_dir`` holds (a new run only).
        allow_call: Modules whose functions ``model.kwargs`` values ``call:module:function`` may run.

    Raises:
        TrainingDiverged: The loss or a transformer's parameters became NaN or inf (the run directory keeps the
            last good checkpoint; ``metrics.json`` says ``"diverged"``).
        TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint of the run so far was written.
        RunError: ``run_dir`` holds a run (new run without ``overwrite``), is not a run (resume), is being trained
            by another process, or cannot be written.
        ConfigError: The config is invalid, or differs from the resumed run's in more than ``train.epochs``.
    """
    config = validate_config(config)
    model_function(config["model"]["name"])  # an unknown model or task fails before the run directory is touched
    task_builder(config["task"])
    run = Path(run_dir)
    ctx = Dist.from_env()
    with _process_group(ctx):
        if not ctx.main:
            return _train(config, run, resume, quiet, stop_after, ctx, allow_call, {})
        if resume:
            if not (run / "config.yaml").is_file():
                raise RunError(f"{run}: not a run directory (no config.yaml)")
        elif overwrite:
            with writing(run):
                run.mkdir(parents=True, exist_ok=True)
        else:
            prepare_run_dir(run, overwrite=False)  # refuses a run before anything is touched
        with lock_run(run), _stop_on_signals() as stop:
            if not resume:
                prepare_run_dir(run, overwrite=overwrite)  # again under the lock: another process may have won
            return _train(config, run, resume, quiet, stop_after, ctx, allow_call, stop)


def _normalised(config: dict[str, Any]) -> Any:
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # tuples are lists in YAML


def _check_resumed_config(run: Path, config: dict[str, Any]) -> int | None:
    """The epochs the run was started with if ``config`` extends it, ``None`` if it is the same config."""
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    new = _normalised(config)
    if recorded == new:
        return None
    if isinstance(recorded, dict) and isinstance(recorded.get("train"), dict):
        old_epochs = recorded["train"].get("epochs")
        same = {**recorded, "train": {**recorded["train"], "epochs": new["train"]["epochs"]}} == new
        if same and isinstance(old_epochs, int) and new["train"]["epochs"] > old_epochs:
            return old_epochs
    raise ConfigError(
        f"{run}: the config differs from the one this run started with; start a new run (a resume may only "
        "raise train.epochs, to extend the run)"
    )


def _finished(state: dict[str, Any], t: dict[str, Any]) -> bool:
    if state.get("partial") is not None:
        return False
    return int(state["epoch"]) >= t["epochs"] or (t["max_steps"] is not None and int(state["step"]) >= t["max_steps"])


def _train(
    config: dict[str, Any],
    run: Path,
    resume: bool,
    quiet: bool,
    stop_after: int | None,
    ctx: Dist,
    allow_call: Collection[str],
    stop: dict[str, int],
) -> dict[str, Any]:
    t = config["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(t["seed"])
    ckpt_path = run / CHECKPOINT
    log_path = run / "log.jsonl"
    extended_from = None
    if ctx.main:
        if resume:
            extended_from = _check_resumed_config(run, config)
            clean_stale_temporaries(run)
        else:
            write_config(run / "config.yaml", config)
            write_json(run / "meta.json", run_meta(config, ctx.world))
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    rows: list[dict[str, Any]] = []
    extended = False
    if state is not None:
        start = int(state["epoch"])
        # The log is the checkpoint's: rows written after it (a kill before the next checkpoint) are dropped.
        rows = list(state["log"]) if "log" in state else [r for r in read_log(log_path) if r["epoch"] <= start]
        # Every process sees an extension in the checkpoint (older checkpoints: the main process's config check).
        extended = extended_from is not None or int(state.get("epochs", t["epochs"])) < t["epochs"]
        if not extended and _finished(state, t):
            return _already_finished(config, run, state, rows, allow_call) if ctx.main else {}
    if ctx.main and resume:
        write_log(log_path, rows)
        if extended_from is not None:
            write_config(run / "config.yaml", config)
            meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
            meta.setdefault("extended", []).append(
                {"from_epochs": extended_from, "to_epochs": t["epochs"], "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            )
            write_json(run / "meta.json", meta)

    task = build_task(config)
    model = build_model(config, allow_call)
    opt = build_optimizer(config, model)
    batch = int(t["batch_size"])
    n = len(task.train)
    steps_per_epoch = math.ceil(n / batch)
    total = (
        steps_per_epoch * t["epochs"] if t["max_steps"] is None else min(t["max_steps"], steps_per_epoch * t["epochs"])
    )
    sched = build_scheduler(config, opt, total)
    start_epoch, step = 0, 0
    partial: dict[str, Any] | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _load_scheduler(sched, state["scheduler"], extended=extended)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        partial = state.get("partial")
        torch.set_rng_state(state["rng"])
    if ctx.main:
        # A full disk or an unwritable directory shows now, not after the first epoch.
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        probe_writable(ckpt_path, 3 * params + (1 << 16))
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    sts = _transformers(model)
    fixed = task.test.batch(torch.arange(min(config["visualize"]["count"], len(task.test))))[0]
    animator = _animator(config, ctx)

    def checkpoint(epoch: int, position: dict[str, Any] | None = None) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "epochs": t["epochs"],
                "rng": torch.get_rng_state(),
                "log": rows,
                "partial": position,
            },
        )

    def diverged(what: str, epoch: int) -> TrainingDiverged:
        good = ckpt_path if ckpt_path.exists() else "not written yet"
        message = (
            f"{what} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint is {good} (lower train.lr, add "
            "train.grad_clip or bounds)"
        )
        if ctx.main:
            last = rows[-1] if rows else {}
            write_json(run / "metrics.json", {**last, "status": "diverged", "error": message, "model": _name(config)})
        return TrainingDiverged(message)

    def interrupted(epoch: int, position: dict[str, Any] | None) -> TrainingInterrupted:
        signum = stop["signum"]
        name = signal.Signals(signum).name
        if ctx.main:
            checkpoint(epoch, position)
            last = rows[-1] if rows else {}
            write_json(run / "metrics.json", {**last, "status": "interrupted", "model": _name(config)})
        return TrainingInterrupted(
            f"interrupted by {name} in epoch {epoch + 1} at step {step}; the run so far is saved in {ckpt_path}; "
            f"resume with: torchstn train --resume {run}",
            signum,
        )

    metrics: dict[str, Any] = {}
    last_epoch = t["epochs"] if stop_after is None else min(t["epochs"], start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        if step >= total:
            break
        task.train.set_epoch(epoch)
        order = epoch_order(n, t["seed"], epoch)
        net.train()
        began = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        err_sum = torch.zeros((), dtype=torch.float64)
        seen, first, spent = 0, 0, 0.0
        if partial is not None:  # resuming inside this epoch
            first, seen, spent = int(partial["position"]), int(partial["seen"]), float(partial["seconds"])
            loss_sum, err_sum = partial["loss_sum"].clone(), partial["err_sum"].clone()
            partial = None
        bar = Progress(n, f"epoch {epoch + 1}/{t['epochs']}", quiet or not ctx.main)
        bar.update(first)
        for lo in range(first, n, batch):
            if step >= total:
                break
            if "signum" in stop:
                raise interrupted(epoch, _position(lo, seen, loss_sum, err_sum, spent + time.perf_counter() - began))
            index = shard(order[lo : lo + batch], ctx.rank, ctx.world)
            x, y = task.train.batch(index)
            try:
                loss, errs = task.loss(net, x, y)
                if t["identity_penalty"]:
                    for st in sts:
                        if st.params is not None:
                            loss = loss + t["identity_penalty"] * identity_penalty(st.params, st.transform)
            except NonFiniteError as err:
                raise diverged(f"a transformer's parameters became non-finite ({err})", epoch) from err
            if not torch.isfinite(loss):
                raise diverged(f"the loss became {loss.item()}", epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if t["grad_clip"]:
                nn.utils.clip_grad_norm_(net.parameters(), t["grad_clip"])
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.detach().double() * len(index)
            err_sum += errs.double()
            seen += len(index)
            bar.update(len(index) * ctx.world, loss=loss.item())
        elapsed = spent + time.perf_counter() - began
        totals = ctx.sum(torch.stack((loss_sum, err_sum, torch.tensor(float(seen), dtype=torch.float64))))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(totals[0] / totals[2]),
            "train_error": float(100.0 * totals[1] / totals[2]),
            **evaluate(model, task, t["eval_batch_size"], ctx),
            "lr": opt.param_groups[0]["lr"],
            "epoch_seconds": round(elapsed, 3),
            "images_per_second": round(float(totals[2]) / elapsed, 1),
        }
        metrics = row
        rows.append(row)
        if ctx.main:
            if (epoch + 1) % t["checkpoint_every"] == 0 or epoch + 1 in (t["epochs"], last_epoch) or step >= total:
                checkpoint(epoch + 1)  # first the checkpoint, then the log it holds
            write_log(log_path, rows)
            if animator is not None:
                animator.add(model, fixed, epoch + 1)
            if not quiet:
                print(
                    f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train error {row['train_error']:.2f}%, "
                    f"test error {row['test_error']:.2f}% ({row['images_per_second']:.0f} images/s)",
                    file=sys.stderr,
                )
        if "signum" in stop and epoch + 1 < last_epoch and step < total:
            raise interrupted(epoch + 1, None)
    if ctx.main:
        finished = step >= total or last_epoch == t["epochs"]
        final = {**metrics, "status": "finished" if finished else "stopped", "model": _name(config)}
        write_json(run / "metrics.json", final)
        _pictures(config, run, model, fixed, animator)
        return final
    return metrics


def _name(config: dict[str, Any]) -> str:
    return str(config["model"]["name"])


def _position(lo: int, seen: int, loss_sum: Tensor, err_sum: Tensor, seconds: float) -> dict[str, Any]:
    """Where an interrupted epoch stands: resumed from here, it ends as the uninterrupted epoch would."""
    return {"position": lo, "seen": seen, "loss_sum": loss_sum.clone(), "err_sum": err_sum.clone(), "seconds": seconds}


def _load_scheduler(sched: Any, state: dict[str, Any], extended: bool) -> None:
    """Restore the schedule; an extended run keeps its step count on the schedule over the new total."""
    if not extended:
        sched.load_state_dict(state)
        return
    keep = {k: v for k, v in state.items() if k in ("last_epoch", "_step_count", "_last_lr")}
    sched.load_state_dict({**sched.state_dict(), **keep})


def _already_finished(
    config: dict[str, Any], run: Path, state: dict[str, Any], rows: list[dict[str, Any]], allow_call: Collection[str]
) -> dict[str, Any]:
    """A finished run resumed: nothing changes. If a kill came between its last checkpoint and ``metrics.json``,
    the final files are completed from the checkpoint."""
    epochs = int(state["epoch"])
    print(
        f"{run}: the run is finished ({epochs} epochs, {int(state['step'])} steps); nothing to do. To train it "
        f"longer: torchstn train --resume {run} --set train.epochs=N (N > {epochs})",
        file=sys.stderr,
    )
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        recorded = json.loads(metrics_path.read_text())
        if recorded.get("status") == "finished":
            return dict(recorded)
    final = {**(rows[-1] if rows else {}), "status": "finished", "model": _name(config)}
    write_log(run / "log.jsonl", rows)
    write_json(metrics_path, final)
    if config["visualize"]["enabled"]:
        task = build_task(config)
        model = build_model(config, allow_call)
        model.load_state_dict(state["model"])
        fixed = task.test.batch(torch.arange(min(config["visualize"]["count"], len(task.test))))[0]
        _pictures(config, run, model, fixed, None)
    return final


def _animator(config: dict[str, Any], ctx: Dist) -> Any:
    if not (ctx.main and config["visualize"]["enabled"]):
        return None
    from torchstn.visualize import EpochAnimator

    return EpochAnimator()


def _pictures(config: dict[str, Any], run: Path, model: nn.Module, fixed: Tensor, animator: Any) -> None:
    """Pictures of what the transformers learnt, and the training curves."""
    if not config["visualize"]["enabled"]:
        return
    from torchstn.visualize import plot_curves, save_transformer_pictures

    out = run / "pictures"
    with writing(out):
        out.mkdir(exist_ok=True)
    save_transformer_pictures(model, fixed, out)
    if animator is not None and animator.num_frames:
        animator.save(out / "epochs.gif")
    rows = read_log(run / "log.jsonl")
    if rows:
        plot_curves(rows, out / "curves.png")
