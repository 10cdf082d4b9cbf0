"""Run directories held to what the README promises (issue 17): nothing lost, nothing shared, nothing run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import free_port
from torchstn.errors import CheckpointError, ConfigError, RunError, TrainingDiverged
from torchstn.modules import SpatialTransformer
from torchstn.train import engine, load_checkpoint, load_config, save_checkpoint, train
from torchstn.train.engine import TrainingInterrupted
from torchstn.train.rundir import lock_run, new_run_dir
from torchstn.train.tasks import ClassifyTask

DROP = {"epoch_seconds", "images_per_second"}


def _config(mnist: Path, tmp: Path, *overrides: str) -> dict[str, Any]:
    base = [
        f"data.mnist={mnist}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.recipe=rotated",
        "data.n_train=128",
        "train.epochs=3",
        "train.batch_size=32",
        "train.threads=1",
        "visualize.enabled=False",
        "model.name=st_fcn_aff",
    ]
    return load_config(None, [*base, *overrides])


def _rows(run: Path) -> list[dict[str, Any]]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in DROP} for line in lines]


def _metrics(run: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in DROP}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]  # type: ignore[no-any-return]


def _same_run(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)
    assert _metrics(a) == _metrics(b)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not [p for p in b.rglob("*.tmp")], "temporary files left behind"


@pytest.fixture
def whole(tiny_mnist: Path, tmp_path: Path) -> Path:
    run = tmp_path / "whole"
    train(_config(tiny_mnist, tmp_path), run, quiet=True)
    return run


class Kill(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_resuming_a_finished_run_changes_nothing(
    tiny_mnist: Path, tmp_path: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    metrics = train(_config(tiny_mnist, tmp_path), whole, quiet=True, resume=True)
    assert "the run is finished (3 epochs" in capsys.readouterr().err
    assert metrics["status"] == "finished" and metrics["epoch"] == 3
    assert {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()} == before


def test_a_kill_before_metrics_json_is_completed_on_resume(tiny_mnist: Path, tmp_path: Path, whole: Path) -> None:
    config = _config(tiny_mnist, tmp_path)
    run = tmp_path / "killed"
    real = engine.write_json

    def kill_at_metrics(path: Path, data: Any) -> None:
        if path.name == "metrics.json":
            raise Kill
        real(path, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "write_json", kill_at_metrics)
        with pytest.raises(Kill):
            train(config, run, quiet=True)
    assert not (run / "metrics.json").exists()
    metrics = train(config, run, quiet=True, resume=True)
    assert metrics["status"] == "finished" and metrics["epoch"] == 3
    _same_run(whole, run)


def test_resume_with_more_epochs_extends_the_run(tiny_mnist: Path, tmp_path: Path, whole: Path) -> None:
    longer = _config(tiny_mnist, tmp_path, "train.epochs=5", "train.schedule=constant")
    run = tmp_path / "short"
    short = _config(tiny_mnist, tmp_path, "train.schedule=constant")
    train(short, run, quiet=True)
    train(longer, run, quiet=True, resume=True)
    reference = tmp_path / "ref"
    train(longer, reference, quiet=True)
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3, 4, 5]
    assert _rows(run) == _rows(reference)  # a constant schedule continues exactly
    meta = json.loads((run / "meta.json").read_text())
    assert meta["extended"][0]["from_epochs"] == 3 and meta["extended"][0]["to_epochs"] == 5
    # the resume names the code it continued with (git_info of the working directory, as the start did)
    (resumed,) = meta["resumed"]
    assert resumed["at_epoch"] == 3 and {"git_sha", "git_dirty"} <= resumed.keys()
    assert (resumed["git_sha"], resumed["git_dirty"]) == (meta["git_sha"], meta["git_dirty"])
    metrics = train(_config(tiny_mnist, tmp_path, "train.epochs=4"), whole, quiet=True, resume=True)
    assert [r["epoch"] for r in _rows(whole)] == [1, 2, 3, 4] and metrics["epoch"] == 4  # one-cycle over the new total
    with pytest.raises(ConfigError, match=r"only raise train\.epochs"):
        train(_config(tiny_mnist, tmp_path, "train.epochs=2"), whole, quiet=True, resume=True)


def test_a_new_run_refuses_an_existing_run_directory(tiny_mnist: Path, tmp_path: Path, whole: Path) -> None:
    before = (whole / "log.jsonl").read_bytes()
    with pytest.raises(RunError, match=r"already holds a run.*--overwrite"):
        train(_config(tiny_mnist, tmp_path), whole, quiet=True)
    assert (whole / "log.jsonl").read_bytes() == before
    config = _config(tiny_mnist, tmp_path, "train.epochs=1")
    metrics = train(config, whole, quiet=True, overwrite=True)
    assert metrics["epoch"] == 1 and len(_rows(whole)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(config, empty, quiet=True)["status"] == "finished"  # an empty directory is fine


def test_default_run_names_are_unique(tmp_path: Path) -> None:
    names = {new_run_dir(tmp_path, "exp") for _ in range(50)}
    assert len(names) == 50 and all(p.is_dir() and p.name.startswith("exp-") for p in names)


def test_a_run_being_trained_is_locked(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    with lock_run(run), pytest.raises(RunError, match=rf"another process \(pid {os.getpid()}\) is training this run"):
        train(_config(tiny_mnist, tmp_path), run, quiet=True)
    assert not (run / "config.yaml").exists()
    code = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    with lock_run(run):  # another process cannot take it either
        done = subprocess.run([sys.executable, "-c", code, str(run / ".lock")], capture_output=True, text=True)
        assert done.returncode != 0 and "BlockingIOError" in done.stderr


@pytest.mark.parametrize("where", ["before the checkpoint", "between the checkpoint and the log"])
def test_log_and_checkpoint_agree_after_a_kill(tiny_mnist: Path, tmp_path: Path, whole: Path, where: str) -> None:
    config = _config(tiny_mnist, tmp_path)
    run = tmp_path / "killed"
    real_save, real_log = engine.save_checkpoint, engine.write_log
    epochs_saved: list[int] = []

    def save(path: Path, state: dict[str, Any]) -> None:
        if state["epoch"] == 2 and where == "before the checkpoint":
            (path.parent / ".last.pt.abc123.tmp").write_bytes(b"partial")  # what a kill mid-write leaves
            raise Kill
        real_save(path, state)
        epochs_saved.append(state["epoch"])

    def log(path: Path, rows: list[dict[str, Any]]) -> None:
        if len(rows) == 2 and where != "before the checkpoint":
            raise Kill
        real_log(path, rows)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "save_checkpoint", save)
        mp.setattr(engine, "write_log", log)
        with pytest.raises(Kill):
            train(config, run, quiet=True)
    train(config, run, quiet=True, resume=True)
    _same_run(whole, run)


def test_rows_logged_after_the_last_checkpoint_are_redone(tiny_mnist: Path, tmp_path: Path) -> None:
    config = _config(tiny_mnist, tmp_path, "train.checkpoint_every=2", "train.epochs=4")
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(config, ref, quiet=True)
    calls = {"n": 0}
    real = ClassifyTask.loss

    def loss(self: ClassifyTask, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        calls["n"] += 1
        if calls["n"] == 14:  # in epoch 4: epoch 3 is logged, the last checkpoint is epoch 2's
            raise Kill
        return real(self, model, x, y)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassifyTask, "loss", loss)
        with pytest.raises(Kill):
            train(config, run, quiet=True)
    assert len(_rows(run)) == 3 and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    train(config, run, quiet=True, resume=True)
    _same_run(ref, run)


def test_a_stopped_session_checkpoints_its_last_epoch(tiny_mnist: Path, tmp_path: Path) -> None:
    config = _config(tiny_mnist, tmp_path, "train.checkpoint_every=5")
    run = tmp_path / "run"
    assert train(config, run, quiet=True, stop_after=1)["status"] == "stopped"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_a_checkpoint_and_the_run_resumes_exactly(
    tiny_mnist: Path, tmp_path: Path, whole: Path, signum: int
) -> None:
    config = _config(tiny_mnist, tmp_path)
    run = tmp_path / "signalled"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN in a background job
    calls = {"n": 0}
    real = ClassifyTask.loss

    def loss(self: ClassifyTask, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 2 (4 steps an epoch)
            os.kill(os.getpid(), signum)
        return real(self, model, x, y)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassifyTask, "loss", loss)
        with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name}.*resume with: torchstn train"):
            train(config, run, quiet=True)
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    train(config, run, quiet=True, resume=True)
    _same_run(whole, run)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_non_finite_transformer_parameters_are_a_divergence(tiny_mnist: Path, tmp_path: Path) -> None:
    config = _config(tiny_mnist, tmp_path)
    run = tmp_path / "nan"
    calls = {"n": 0}
    real = ClassifyTask.loss

    def loss(self: ClassifyTask, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:
            st = next(m for m in model.modules() if isinstance(m, SpatialTransformer))
            with torch.no_grad():
                st.localisation.head.linear.bias.fill_(float("nan"))
        return real(self, model, x, y)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassifyTask, "loss", loss)
        with pytest.raises(TrainingDiverged, match=r"non-finite.*epoch 2.*last good checkpoint is .*last\.pt"):
            train(config, run, quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epoch"] == 1 and "non-finite" in metrics["error"]


def test_call_values_run_code_only_when_allowed(tiny_mnist: Path, tmp_path: Path) -> None:
    made = tmp_path / "made"
    config = _config(tiny_mnist, tmp_path, "model.name=cub_cnn", "model.kwargs={'backbone': 'call:tempfile:mkdtemp'}")
    with pytest.raises(ConfigError, match=r"would import and run code from 'tempfile'.*--allow-call tempfile"):
        engine.build_model(config)
    with pytest.raises(ConfigError, match="--allow-call tempfile"):
        engine.build_model(config, allow_call=["temp"])  # a prefix of a name is not the module
    assert not made.exists()


def test_running_the_cli_in_a_run_directory_imports_nothing_from_it(whole: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (whole / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('shadowed')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(engine.__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torchstn.cli", "eval", "."], cwd=whole, capture_output=True, text=True, env=env
    )
    assert not marker.exists(), done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]


def test_checkpoints_carry_a_verified_checksum(whole: Path, tmp_path: Path) -> None:
    path = whole / "checkpoints" / "last.pt"
    data = bytearray(path.read_bytes())
    state = load_checkpoint(path)
    flipped = tmp_path / "flipped.pt"
    for offset in (len(data) // 2, len(data) // 3, len(data) - 4000):
        bad = bytearray(data)
        bad[offset] ^= 0x10
        flipped.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"flipped\.pt"):
            load_checkpoint(flipped)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)
    old = tmp_path / "old.pt"
    torch.save(state, old)  # the format before checksums: still loads
    assert torch.equal(load_checkpoint(old)["model"]["classifier.1.weight"], state["model"]["classifier.1.weight"])
    save_checkpoint(tmp_path / "new.pt", state)
    assert load_checkpoint(tmp_path / "new.pt")["epoch"] == state["epoch"]


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "no space left"), (errno.EACCES, "not writable")])
def test_an_unwritable_run_directory_is_found_before_training(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, cause: str
) -> None:
    from torchstn.train import rundir

    real = rundir.atomic_write_bytes
    trained = {"steps": 0}
    real_loss = ClassifyTask.loss

    def write(path: Path, data: bytes) -> None:
        if len(data) > 100_000:  # the probe and the checkpoints, not the small files
            raise OSError(code, os.strerror(code))
        real(path, data)

    def loss(self: ClassifyTask, *args: Any) -> Any:
        trained["steps"] += 1
        return real_loss(self, *args)

    monkeypatch.setattr(rundir, "atomic_write_bytes", write)
    monkeypatch.setattr(ClassifyTask, "loss", loss)
    with pytest.raises(RunError, match=f"cannot write: {cause}"):
        train(_config(tiny_mnist, tmp_path, "model.name=cnn_baseline"), tmp_path / "run", quiet=True)
    assert trained["steps"] == 0


_TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not _TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_ddp_resume_of_a_finished_run_returns_on_every_process(whole: Path) -> None:
    before = (whole / "metrics.json").read_bytes()
    cmd = [
        str(_TORCHRUN),
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "torchstn.cli",
        "train",
        "--resume",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(engine.__file__).parents[2])}
    done = subprocess.run([*cmd, str(whole), "--quiet"], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the run is finished" in done.stderr and (whole / "metrics.json").read_bytes() == before


def test_prefetching_the_next_epoch_never_changes_a_run(tiny_mnist: Path, tmp_path: Path) -> None:
    """A redrawn training set is generated one epoch ahead in a background thread (the engine calls
    ``prefetch(epoch + 1)``): the run is the one trained with prefetching turned off, bit for bit, and each
    epoch's samples came from the thread."""
    from torchstn.data.datasets import DistortedMNIST

    config = ["data.redraw=True", "train.epochs=4"]
    calls: list[int] = []
    real = DistortedMNIST.prefetch

    def counting(self: DistortedMNIST, epoch: int) -> None:
        calls.append(epoch)
        real(self, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistortedMNIST, "prefetch", counting)
        train(_config(tiny_mnist, tmp_path, *config), tmp_path / "prefetched", quiet=True)
    assert calls == [1, 2, 3]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistortedMNIST, "prefetch", lambda self, epoch: None)
        train(_config(tiny_mnist, tmp_path, *config), tmp_path / "serial", quiet=True)
    _same_run(tmp_path / "serial", tmp_path / "prefetched")
