"""The training loop: in-memory batches, checkpoints that resume exactly, NaN guard, DDP.

The run directory's layout and files are :mod:`torchstn.train.rundir`'s; what a config builds (model,
optimizer, schedule) is :mod:`torchstn.train.factories`'.

Determinism: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone and the global RNG state is
saved in each checkpoint, so a resumed run reproduces an uninterrupted one.

Devices: ``train.device`` (``auto``: CUDA when available, else the CPU) holds the model, every batch (moved there
as it is served), the metric accumulators and the frozen networks a task keeps; checkpoints are written from it and
load onto any device. ``train.precision`` runs the forward pass and the loss under :func:`torch.autocast`
(``bf16``; ``16`` with a :class:`torch.amp.GradScaler`, CUDA only); the weights and the optimizer stay float32.

Distributed data parallel: launched by ``torchrun``, each of ``W`` processes takes every ``W``-th sample of each
global batch (``train.batch_size`` is the global batch), gradients are averaged by DDP, and error counts are summed
across processes before they are logged. One process per GPU (``LOCAL_RANK`` picks it) over nccl for CUDA
devices, gloo for the CPU. Process 0 keeps the stream of the global RNG a single process would; every other
process reseeds it at each epoch from ``(seed, rank, epoch)``, so random augmentation differs between processes
(a resume inside an epoch is exact on process 0; the others restart that epoch's stream). Only process 0 logs and
writes the run directory.

Validation: ``data.n_valid`` holds out the last ``n_valid`` training samples; their error is logged every epoch
(``valid_error``), the test error only in the last epoch's row, and ``checkpoints/best.pt`` keeps the weights of the
epoch with the lowest validation error. With ``n_valid=0`` (the default) the test error is logged every epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    BEST_CHECKPOINT,
    CHECKPOINT,
    clean_stale_temporaries,
    git_info,
    load_checkpoint,
    lock_run,
    prepare_run_dir,
    probe_writable,
    read_log,
    run_meta,
    save_checkpoint,
    write_config,
    write_csv,
    write_json,
    write_log,
    writing,
)
from torchstn.train.tasks import Source, SubsetSource, Task, build_task, task_builder

__all__ = [
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "epoch_order",
    "evaluate",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "shard",
    "split_validation",
    "train",
]


# --- distributed context ----------------------------------------------------------------------------------------


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device ``train.device`` names: ``auto`` is CUDA when available, else the CPU; ``cuda`` is the current
    CUDA device, ``cuda:N`` the N-th. Under DDP (``local_rank`` given) a CUDA device is the process's own GPU,
    ``cuda:LOCAL_RANK``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')

    Raises:
        ConfigError: The spec is not a device, CUDA is asked for but not available, or there is no GPU ``N``.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} asked for, but CUDA is not available here; use train.device=cpu")
    if local_rank is not None:
        index = local_rank
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: there is no CUDA device {index} (this machine has {torch.cuda.device_count()})"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly distributed) run, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device: str = "auto") -> Dist:
        """The context ``torchrun``'s variables describe (one process without them); ``device`` is ``train.device``.

        Under DDP a CUDA device is ``cuda:LOCAL_RANK`` (made current) and the process group uses nccl; a CPU device
        uses gloo. The backend follows the chosen device, not whether CUDA happens to be installed.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return Dist(device=resolve_device(device))
        chosen = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return Dist(dist.get_rank(), dist.get_world_size(), chosen)

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


def split_validation(source: Source, n_valid: int) -> tuple[Source, Source]:
    """``(train, valid)``: the first ``len(source) - n_valid`` samples and the last ``n_valid``.

    The validation part never regenerates the samples itself (``set_epoch`` is the training part's), so a redrawn
    dataset is drawn once per epoch for both.

    Raises:
        ConfigError: ``n_valid`` leaves no training sample.
    """
    n = len(source)
    if not 0 < n_valid < n:
        raise ConfigError(f"data.n_valid: must leave training samples (0 < n_valid < {n}), got {n_valid}")
    return SubsetSource(source, torch.arange(n - n_valid)), SubsetSource(source, torch.arange(n - n_valid, n), False)


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast region ``train.precision`` asks for (nothing for ``32``)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _check_precision(precision: str, device: torch.device) -> None:
    if precision == "16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision: '16' (float16 with a gradient scaler) needs a CUDA device, got {device}; "
            "use train.precision=bf16 on the CPU"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    batch_size: int = 1024,
    ctx: Dist | None = None,
    *,
    source: Source | None = None,
    precision: str = "32",
) -> dict[str, float]:
    """Error (%) of ``model`` on the task's test source (or ``source``); summed over processes under DDP.

    Batches are moved to the model's device and scored under ``precision``'s autocast.
    """
    ctx = ctx or Dist()
    device = _model_device(model)
    source = task.test if source is None else source
    was = model.training
    model.eval()
    n = len(source)
    mine = torch.arange(ctx.rank, n, ctx.world)
    errors = torch.zeros((), dtype=torch.float64, device=device)
    for lo in range(0, len(mine), batch_size):
        x, y = source.batch(mine[lo : lo + batch_size])
        with _autocast(precision, device):
            errors += task.errors(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True)).double()
    count = torch.tensor(float(len(mine)), dtype=torch.float64, device=device)
    stats = ctx.sum(torch.stack((errors, count)))
    model.train(was)
    return {"test_error": float(100.0 * stats[0] / stats[1])}


def _rank_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank) * 1_000_003 + epoch


class _TensorBoard:
    """The log rows as TensorBoard scalars, when ``torch.utils.tensorboard`` imports (else nothing is written)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is not installed
            self.writer: Any = None
            return
        self.writer = SummaryWriter(str(folder))

    def add(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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


RunDir = str | os.PathLike[str] | Callable[[], Path]


def train(
    config: dict[str, Any],
    run_dir: RunDir,
    *,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
    allow_call: Collection[str] = (),
) -> dict[str, Any]:
    """Train (or resume) the run that ``config`` describes in ``run_dir``; return the final metrics.

    Resuming a finished run changes nothing and returns its metrics; resuming with a larger ``train.epochs`` than
    the run was started with extends it (the only change a resume accepts, besides ``train.device``).

    The model and the data are built before the run directory is touched, so a config that cannot build leaves
    nothing behind.

    Args:
        config: A resolved config (:func:`~torchstn.train.load_config`).
        run_dir: The run directory (created if needed; for a new run it must not hold a run unless ``overwrite``),
            or a function that creates a new one and returns it (called once the model and data are built; under
            DDP on process 0 only, its path is passed to the others).
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
        ConfigError: The config is invalid, differs from the resumed run's in more than ``train.epochs``, names a
            device this machine does not have, or asks for ``train.precision=16`` off CUDA.
    """
    config = validate_config(config)
    model_function(config["model"]["name"])  # an unknown model or task fails before the run directory is touched
    task_builder(config["task"])
    t = config["train"]
    if resume and not callable(run_dir) and not (Path(run_dir) / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
    ctx = Dist.from_env(t["device"])
    with _process_group(ctx):
        _check_precision(t["precision"], ctx.device)
        task, model = _build(config, allow_call, ctx.device)
        run = _claim(run_dir, ctx)
        if not ctx.main:
            return _train(config, run, resume, quiet, stop_after, ctx, task, model, {})
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
            return _train(config, run, resume, quiet, stop_after, ctx, task, model, stop)


def _claim(run_dir: RunDir, ctx: Dist) -> Path:
    """The run directory: as given, or created now by ``run_dir()`` (on process 0, its path sent to the others)."""
    if not callable(run_dir):
        return Path(run_dir)
    if ctx.world == 1:
        return Path(run_dir())
    box: list[Any] = [str(run_dir()) if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def _build(config: dict[str, Any], allow_call: Collection[str], device: torch.device) -> tuple[Task, nn.Module]:
    """Seed, then the task (its data loaded) and the model, on ``device``."""
    t = config["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    torch.manual_seed(t["seed"])
    task = build_task(config).to(device)
    model = build_model(config, allow_call).to(device)
    return task, model


def _normalised(config: dict[str, Any]) -> Any:
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # tuples are lists in YAML


def _check_resumed_config(run: Path, config: dict[str, Any]) -> int | None:
    """The epochs the run was started with if ``config`` extends it, ``None`` if it is the same config.

    ``train.device`` may differ (a run resumes on another device); keys added to the schema after the run was
    recorded count as their defaults.
    """
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    new = _normalised(config)
    with contextlib.suppress(ConfigError):
        recorded = _normalised(validate_config(recorded))
    if isinstance(recorded, dict) and isinstance(recorded.get("train"), dict) and "device" in recorded["train"]:
        recorded = {**recorded, "train": {**recorded["train"], "device": new["train"]["device"]}}
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
    task: Task,
    model: nn.Module,
    stop: dict[str, int],
) -> dict[str, Any]:
    t = config["train"]
    device = ctx.device
    ckpt_path = run / CHECKPOINT
    log_path = run / "log.jsonl"
    extended_from = None
    if ctx.main:
        if resume:
            extended_from = _check_resumed_config(run, config)
            clean_stale_temporaries(run)
        else:
            write_config(run / "config.yaml", config)
            write_json(run / "meta.json", run_meta(config, ctx.world, str(device)))
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
            return _already_finished(config, run, state, rows, task, model) if ctx.main else {}
    if ctx.main and resume:
        write_log(log_path, rows)
        write_csv(run / "metrics.csv", rows)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
        if extended_from is not None:
            write_config(run / "config.yaml", config)
            meta.setdefault("extended", []).append({"from_epochs": extended_from, "to_epochs": t["epochs"], "at": now})
        # Each resume names the code it continues with, so a record can tell a run trained by one commit.
        at_epoch = int(state["epoch"]) if state is not None else 0
        meta.setdefault("resumed", []).append({"at_epoch": at_epoch, "at": now, **git_info()})
        write_json(run / "meta.json", meta)

    valid: Source | None = None
    if config["data"]["n_valid"]:
        task.train, valid = split_validation(task.train, config["data"]["n_valid"])
    opt = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type) if t["precision"] == "16" else None
    batch = int(t["batch_size"])
    n = len(task.train)
    steps_per_epoch = math.ceil(n / batch)
    total = (
        steps_per_epoch * t["epochs"] if t["max_steps"] is None else min(t["max_steps"], steps_per_epoch * t["epochs"])
    )
    sched = build_scheduler(config, opt, total)
    start_epoch, step = 0, 0
    partial: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _load_scheduler(sched, state["scheduler"], extended=extended)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        partial = state.get("partial")
        best = state.get("best")
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    if ctx.main:
        # A full disk or an unwritable directory shows now, not after the first epoch.
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        probe_writable(ckpt_path, 3 * params + (1 << 16))
    if ctx.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    else:
        net = model
    sts = _transformers(model)
    fixed = task.test.batch(torch.arange(min(config["visualize"]["count"], len(task.test))))[0].to(device)
    animator = _animator(config, ctx)
    board = _TensorBoard(run / "tensorboard") if ctx.main else None

    def checkpoint(epoch: int, position: dict[str, Any] | None = None) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                "epoch": epoch,
                "step": step,
                "epochs": t["epochs"],
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                **({"best": best} if best is not None else {}),
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
    precision = t["precision"]
    try:
        for epoch in range(start_epoch, last_epoch):
            if step >= total:
                break
            if ctx.rank > 0:  # this process's own augmentation stream (process 0 keeps a single process's)
                torch.manual_seed(_rank_seed(t["seed"], ctx.rank, epoch))
            task.train.set_epoch(epoch)
            if epoch + 1 < last_epoch:  # the next epoch's redrawn samples are generated while this one trains
                task.train.prefetch(epoch + 1)
            order = epoch_order(n, t["seed"], epoch)
            net.train()
            began = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            err_sum = torch.zeros((), dtype=torch.float64, device=device)
            seen, first, spent = 0, 0, 0.0
            if partial is not None:  # resuming inside this epoch
                first, seen, spent = int(partial["position"]), int(partial["seen"]), float(partial["seconds"])
                loss_sum, err_sum = partial["loss_sum"].to(device).clone(), partial["err_sum"].to(device).clone()
                partial = None
            bar = Progress(n, f"epoch {epoch + 1}/{t['epochs']}", quiet or not ctx.main)
            bar.update(first)
            for lo in range(first, n, batch):
                if step >= total:
                    break
                if "signum" in stop:
                    raise interrupted(
                        epoch, _position(lo, seen, loss_sum, err_sum, spent + time.perf_counter() - began)
                    )
                index = shard(order[lo : lo + batch], ctx.rank, ctx.world)
                x, y = task.train.batch(index)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                try:
                    with _autocast(precision, device):
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
                if scaler is None:
                    loss.backward()  # type: ignore[no-untyped-call]
                    if t["grad_clip"]:
                        nn.utils.clip_grad_norm_(net.parameters(), t["grad_clip"])
                    opt.step()
                else:
                    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                    if t["grad_clip"]:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(net.parameters(), t["grad_clip"])
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                step += 1
                loss_sum += loss.detach().double() * len(index)
                err_sum += errs.double()
                seen += len(index)
                bar.update(len(index) * ctx.world, loss=loss.item())
            elapsed = spent + time.perf_counter() - began
            count = torch.tensor(float(seen), dtype=torch.float64, device=device)
            totals = ctx.sum(torch.stack((loss_sum, err_sum, count)))
            scores: dict[str, float] = {}
            if valid is None:
                scores = evaluate(model, task, t["eval_batch_size"], ctx, precision=precision)
            else:
                scores["valid_error"] = evaluate(
                    model, task, t["eval_batch_size"], ctx, source=valid, precision=precision
                )["test_error"]
                if epoch + 1 == t["epochs"] or step >= total:  # the test set is scored once, at the end
                    scores.update(evaluate(model, task, t["eval_batch_size"], ctx, precision=precision))
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(totals[0] / totals[2]),
                "train_error": float(100.0 * totals[1] / totals[2]),
                **scores,
                "lr": opt.param_groups[0]["lr"],
                "epoch_seconds": round(elapsed, 3),
                "images_per_second": round(float(totals[2]) / elapsed, 1),
            }
            metrics = row
            rows.append(row)
            improved = valid is not None and (best is None or row["valid_error"] < best["valid_error"])
            if improved:
                best = {"epoch": epoch + 1, "step": step, "valid_error": row["valid_error"]}
            if ctx.main:
                if improved:
                    save_checkpoint(run / BEST_CHECKPOINT, {"model": model.state_dict(), **(best or {})})
                if (epoch + 1) % t["checkpoint_every"] == 0 or epoch + 1 in (t["epochs"], last_epoch) or step >= total:
                    checkpoint(epoch + 1)  # first the checkpoint, then the log it holds
                write_log(log_path, rows)
                write_csv(run / "metrics.csv", rows)
                if board is not None:
                    board.add(row)
                if animator is not None:
                    animator.add(model, fixed, epoch + 1)
                if not quiet:
                    score = (
                        f"test error {row['test_error']:.2f}%"
                        if "test_error" in row and valid is None
                        else f"valid error {row['valid_error']:.2f}%"
                        + (f", test error {row['test_error']:.2f}%" if "test_error" in row else "")
                    )
                    print(
                        f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train error "
                        f"{row['train_error']:.2f}%, {score} ({row['images_per_second']:.0f} images/s)",
                        file=sys.stderr,
                    )
            if "signum" in stop and epoch + 1 < last_epoch and step < total:
                raise interrupted(epoch + 1, None)
    finally:
        if board is not None:
            board.close()
    if ctx.main:
        finished = step >= total or last_epoch == t["epochs"]
        final = {**metrics, "status": "finished" if finished else "stopped", "model": _name(config)}
        if best is not None:
            final["best"] = best
        write_json(run / "metrics.json", final)
        _pictures(config, run, model, fixed, animator)
        return final
    return metrics


def _name(config: dict[str, Any]) -> str:
    return str(config["model"]["name"])


def _position(lo: int, seen: int, loss_sum: Tensor, err_sum: Tensor, seconds: float) -> dict[str, Any]:
    """Where an interrupted epoch stands: resumed from here, it ends as the uninterrupted epoch would."""
    return {"position": lo, "seen": seen, "loss_sum": loss_sum.cpu().clone(), "err_sum": err_sum.cpu().clone(),
            "seconds": seconds}  # fmt: skip


def _load_scheduler(sched: Any, state: dict[str, Any], extended: bool) -> None:
    """Restore the schedule; an extended run keeps its step count on the schedule over the new total."""
    if not extended:
        sched.load_state_dict(state)
        return
    keep = {k: v for k, v in state.items() if k in ("last_epoch", "_step_count", "_last_lr")}
    sched.load_state_dict({**sched.state_dict(), **keep})


def _already_finished(
    config: dict[str, Any], run: Path, state: dict[str, Any], rows: list[dict[str, Any]], task: Task, model: nn.Module
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
    write_csv(run / "metrics.csv", rows)
    write_json(metrics_path, final)
    if config["visualize"]["enabled"]:
        model.load_state_dict(state["model"])
        fixed = task.test.batch(torch.arange(min(config["visualize"]["count"], len(task.test))))[0]
        fixed = fixed.to(_model_device(model))
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
