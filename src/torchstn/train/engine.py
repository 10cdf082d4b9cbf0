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
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from torchstn.errors import ConfigError, TrainingDiverged
from torchstn.modules import SpatialTransformer, identity_penalty
from torchstn.train.config import validate_config
from torchstn.train.factories import build_model, build_optimizer, build_scheduler
from torchstn.train.rundir import (
    CHECKPOINT,
    load_checkpoint,
    read_log,
    run_meta,
    save_checkpoint,
    write_config,
    write_json,
)
from torchstn.train.tasks import Task, build_task

__all__ = [
    "TrainingDiverged",
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
    """A minimal progress line on stderr, redrawn at most twice a second; silent when ``quiet``."""

    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int, **info: float) -> None:
        self.done += n
        now = time.perf_counter()
        if self.quiet or (now - self.last < 0.5 and self.done < self.total):
            return
        self.last = now
        frac = self.done / max(self.total, 1)
        bar = "#" * int(24 * frac)
        extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        rate = self.done / max(now - self.start, 1e-9)
        print(f"\r{self.label} [{bar:<24}] {self.done}/{self.total} {rate:.0f}/s {extra}", end="", file=sys.stderr)
        if self.done >= self.total:
            print(file=sys.stderr)


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


def train(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run that ``config`` describes in ``run_dir``; return the final metrics.

    Args:
        config: A resolved config (:func:`~torchstn.train.load_config`).
        run_dir: The run directory (created if needed).
        resume: Continue from ``run_dir``'s last checkpoint.
        quiet: No progress output.
        stop_after: Stop after this many epochs in this call (a time-boxed session); resume later.

    Raises:
        TrainingDiverged: The loss became NaN or inf (the run directory keeps the last good checkpoint).
    """
    config = validate_config(config)
    ctx = Dist.from_env()
    with _process_group(ctx):
        return _train(config, Path(run_dir), resume, quiet, stop_after, ctx)


def _train(
    config: dict[str, Any], run: Path, resume: bool, quiet: bool, stop_after: int | None, ctx: Dist
) -> dict[str, Any]:
    t = config["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(t["seed"])
    ckpt_path = run / CHECKPOINT
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
        if resume and (run / "config.yaml").exists():
            recorded = yaml.safe_load((run / "config.yaml").read_text())
            if recorded != yaml.safe_load(yaml.safe_dump(config, sort_keys=False)):  # tuples are lists in YAML
                raise ConfigError(f"{run}: the config differs from the one this run started with; start a new run")
        else:
            write_config(run / "config.yaml", config)
            write_json(run / "meta.json", run_meta(config, ctx.world))
            (run / "log.jsonl").unlink(missing_ok=True)

    task = build_task(config)
    model = build_model(config)
    opt = build_optimizer(config, model)
    batch = int(t["batch_size"])
    n = len(task.train)
    steps_per_epoch = math.ceil(n / batch)
    total = (
        steps_per_epoch * t["epochs"] if t["max_steps"] is None else min(t["max_steps"], steps_per_epoch * t["epochs"])
    )
    sched = build_scheduler(config, opt, total)
    start_epoch, step = 0, 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"])
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    sts = _transformers(model)
    fixed = task.test.batch(torch.arange(min(config["visualize"]["count"], len(task.test))))[0]
    animator = _animator(config, ctx)

    metrics: dict[str, Any] = {}
    last_epoch = t["epochs"] if stop_after is None else min(t["epochs"], start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        if step >= total:
            break
        task.train.set_epoch(epoch)
        order = epoch_order(n, t["seed"], epoch)
        net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        err_sum = torch.zeros((), dtype=torch.float64)
        seen = 0
        bar = Progress(n, f"epoch {epoch + 1}/{t['epochs']}", quiet or not ctx.main)
        for lo in range(0, n, batch):
            if step >= total:
                break
            index = shard(order[lo : lo + batch], ctx.rank, ctx.world)
            x, y = task.train.batch(index)
            loss, errs = task.loss(net, x, y)
            if t["identity_penalty"]:
                for st in sts:
                    if st.params is not None:
                        loss = loss + t["identity_penalty"] * identity_penalty(st.params, st.transform)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint "
                    f"is {ckpt_path if ckpt_path.exists() else 'not written yet'} (lower train.lr, add "
                    "train.grad_clip or bounds)"
                )
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
        elapsed = time.perf_counter() - start
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
        if ctx.main:
            with open(run / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if (epoch + 1) % t["checkpoint_every"] == 0 or epoch + 1 == t["epochs"]:
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "rng": torch.get_rng_state(),
                }
                save_checkpoint(ckpt_path, state)
            if animator is not None:
                animator.add(model, fixed, epoch + 1)
            if not quiet:
                print(
                    f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train error {row['train_error']:.2f}%, "
                    f"test error {row['test_error']:.2f}% ({row['images_per_second']:.0f} images/s)",
                    file=sys.stderr,
                )
    if ctx.main:
        finished = step >= total or last_epoch == t["epochs"]
        final = {**metrics, "status": "finished" if finished else "stopped", "model": config["model"]["name"]}
        write_json(run / "metrics.json", final)
        _pictures(config, run, model, fixed, animator)
        return final
    return metrics


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
    out.mkdir(exist_ok=True)
    save_transformer_pictures(model, fixed, out)
    if animator is not None and animator.num_frames:
        animator.save(out / "epochs.gif")
    rows = read_log(run / "log.jsonl")
    if rows:
        plot_curves(rows, out / "curves.png")
