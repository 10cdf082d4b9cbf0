"""Issue 13 in the training stack: devices, mixed precision, validation split and best checkpoint, CSV and
TensorBoard logs, packaged configs, defaults that agree, git provenance from the working directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.helpers import free_port
from torchstn.cli import main
from torchstn.errors import ConfigError, ConfigNotFoundError
from torchstn.train import load_checkpoint, load_config, train
from torchstn.train.config import find_config, list_configs, validate_config
from torchstn.train.engine import Dist, resolve_device, split_validation
from torchstn.train.rundir import git_info
from torchstn.train.tasks import TensorSource

CUDA = torch.cuda.is_available()


def _flags(mnist: Path, tmp: Path) -> list[str]:
    return [
        f"data.mnist={mnist}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.recipe=rotated",
        "data.n_train=128",
        "data.n_test=64",
        "train.epochs=2",
        "train.batch_size=32",
        "train.threads=1",
        "visualize.enabled=False",
        "model.name=st_fcn_aff",
    ]


def _config(mnist: Path, tmp: Path, *overrides: str) -> dict[str, Any]:
    return load_config(None, [*_flags(mnist, tmp), *overrides])


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# --- devices ------------------------------------------------------------------------------------------------------


def test_device_specs_resolve_and_bad_ones_are_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = torch.device("cuda", torch.cuda.current_device()) if CUDA else torch.device("cpu")
    assert resolve_device("auto") == auto
    with pytest.raises(ConfigError, match=r"train\.device"):
        load_config(None, ["train.device=gpu"])
    with pytest.raises(ConfigError, match=r"train\.device"):
        resolve_device("mps")
    assert load_config(None, ["train.device=cuda:1"])["train"]["device"] == "cuda:1"  # a config may name any GPU


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error_before_the_run_directory_is_made(tiny_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.device.*not available"):
        train(_config(tiny_mnist, tmp_path, "train.device=cuda"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_single_process_context_is_on_the_chosen_device() -> None:
    assert Dist.from_env("cpu") == Dist(0, 1, torch.device("cpu"))


def test_training_on_a_device_writes_checkpoints_that_load_anywhere(
    tiny_mnist: Path, tmp_path: Path, device: torch.device
) -> None:
    run = tmp_path / "run"
    metrics = train(_config(tiny_mnist, tmp_path, f"train.device={device.type}"), run, quiet=True)
    assert metrics["status"] == "finished" and 0 <= metrics["test_error"] <= 100
    assert json.loads((run / "meta.json").read_text())["machine"]["device"].startswith(device.type)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(v.device.type == "cpu" for v in state["model"].values())  # map_location: the CPU by default
    on = load_checkpoint(run / "checkpoints" / "last.pt", map_location=device)
    assert all(v.device.type == device.type for v in on["model"].values())
    # the run resumes (and is extended) on the CPU, whatever device wrote it
    more = train(_config(tiny_mnist, tmp_path, "train.epochs=3", "train.device=cpu"), run, resume=True, quiet=True)
    assert more["epoch"] == 3 and [r["epoch"] for r in _rows(run)] == [1, 2, 3]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="CUDA is not available")
def test_a_cuda_run_agrees_with_the_cpu_run(tiny_mnist: Path, tmp_path: Path) -> None:
    cpu = train(_config(tiny_mnist, tmp_path, "train.device=cpu"), tmp_path / "cpu", quiet=True)
    gpu = train(_config(tiny_mnist, tmp_path, "train.device=cuda"), tmp_path / "gpu", quiet=True)
    assert abs(cpu["train_loss"] - gpu["train_loss"]) < 0.05 * cpu["train_loss"]


def test_an_explicit_cpu_device_trains_exactly_as_before(tiny_mnist: Path, tmp_path: Path) -> None:
    """``train.device=cpu`` is the old loop bit for bit: same rows and weights as the same run left on auto."""
    a = train(_config(tiny_mnist, tmp_path, "train.device=cpu"), tmp_path / "a", quiet=True)
    if CUDA:
        pytest.skip("auto is CUDA here")
    b = train(_config(tiny_mnist, tmp_path), tmp_path / "b", quiet=True)
    drop = {"epoch_seconds", "images_per_second"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_recorded_before_the_new_keys_still_resumes(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(tiny_mnist, tmp_path, "train.epochs=1"), run, quiet=True)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    del recorded["data"]["n_valid"], recorded["train"]["device"], recorded["train"]["precision"]
    (run / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    resumed = validate_config(recorded)
    assert (resumed["data"]["n_valid"], resumed["train"]["device"], resumed["train"]["precision"]) == (0, "auto", "32")
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=2", "--device", "cpu"]) == 0
    assert [r["epoch"] for r in _rows(run)] == [1, 2]


# --- precision ----------------------------------------------------------------------------------------------------


def test_precision_takes_strings_and_the_numbers_16_and_32() -> None:
    assert load_config(None, ["train.precision=16"])["train"]["precision"] == "16"
    assert load_config(None, ["train.precision=32"])["train"]["precision"] == "32"
    assert load_config(None, ["train.precision=bf16"])["train"]["precision"] == "bf16"
    assert (
        validate_config({**load_config(None), "train": {**load_config(None)["train"], "precision": 16}})["train"][
            "precision"
        ]
        == "16"
    )
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=8"])


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_float16_is_refused_off_cuda_naming_the_key(tiny_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.precision.*CUDA"):
        train(_config(tiny_mnist, tmp_path, "train.precision=16", "train.device=cpu"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_the_autocast_region_follows_the_precision() -> None:
    from torchstn.train.engine import _autocast

    with _autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with _autocast("32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("model", ["cnn_baseline", "st_fcn_aff"])
def test_bf16_training_runs_a_few_steps_on_the_cpu(tiny_mnist: Path, tmp_path: Path, model: str) -> None:
    config = _config(tiny_mnist, tmp_path, "train.precision=bf16", "train.device=cpu", f"model.name={model}")
    config["train"]["max_steps"] = 3
    metrics = train(config, tmp_path / "run", quiet=True)
    assert metrics["status"] == "finished" and metrics["step"] == 3 and 0 <= metrics["test_error"] <= 100
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # the weights stay float32


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="CUDA is not available")
def test_float16_with_a_gradient_scaler_on_cuda(tiny_mnist: Path, tmp_path: Path) -> None:
    config = _config(tiny_mnist, tmp_path, "train.precision=16", "train.device=cuda", "model.name=cnn_baseline")
    metrics = train(config, tmp_path / "run", quiet=True)
    assert metrics["status"] == "finished"
    assert "scaler" in load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")


# --- validation split, best checkpoint, logs ---------------------------------------------------------------------


def test_validation_split_is_carved_from_the_end_of_the_training_samples() -> None:
    images, labels = torch.arange(10, dtype=torch.float32)[:, None], torch.arange(10)
    tr, va = split_validation(TensorSource(images, labels), 3)
    assert (len(tr), len(va)) == (7, 3)
    assert va.batch(torch.arange(3))[1].tolist() == [7, 8, 9] and tr.batch(torch.tensor([6]))[1].tolist() == [6]
    with pytest.raises(ConfigError, match=r"data\.n_valid"):
        split_validation(TensorSource(images, labels), 10)


def test_validation_error_each_epoch_test_error_at_the_end_and_a_best_checkpoint(
    tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    metrics = train(_config(tiny_mnist, tmp_path, "data.n_valid=32", "train.epochs=3"), run, quiet=True)
    rows = _rows(run)
    assert all("valid_error" in r for r in rows)
    assert ["test_error" in r for r in rows] == [False, False, True]
    best = min(rows, key=lambda r: r["valid_error"])
    assert metrics["best"]["valid_error"] == best["valid_error"]
    saved = load_checkpoint(run / "checkpoints" / "best.pt")
    assert saved["epoch"] == metrics["best"]["epoch"] and saved["valid_error"] == best["valid_error"]
    # the training part saw 96 samples per epoch (3 steps of 32)
    assert [r["step"] for r in rows] == [3, 6, 9]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "valid", "--checkpoint", "best", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["valid_error"] == best["valid_error"]


def test_without_a_validation_split_the_test_error_is_logged_every_epoch(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(tiny_mnist, tmp_path), run, quiet=True)
    rows = _rows(run)
    assert all("test_error" in r and "valid_error" not in r for r in rows)
    assert not (run / "checkpoints" / "best.pt").exists()


def test_metrics_csv_holds_the_log_rows(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(tiny_mnist, tmp_path, "data.n_valid=32"), run, quiet=True)
    with (run / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    rows = _rows(run)
    assert [int(r["epoch"]) for r in table] == [r["epoch"] for r in rows]
    assert [float(r["train_loss"]) for r in table] == [r["train_loss"] for r in rows]
    assert table[0]["test_error"] == "" and float(table[-1]["test_error"]) == rows[-1]["test_error"]


def test_tensorboard_scalars_are_written_when_it_imports(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, folder: str) -> None:
            self.folder = folder

        def add_scalar(self, key: str, value: float, step: int) -> None:
            calls.append((key, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("closed", 0.0, 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run = tmp_path / "run"
    train(_config(tiny_mnist, tmp_path), run, quiet=True)
    rows = _rows(run)
    assert ("train_loss", rows[1]["train_loss"], 2) in calls and ("test_error", rows[0]["test_error"], 1) in calls
    assert calls[-1][0] == "closed"


def test_without_tensorboard_training_goes_on(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    run = tmp_path / "run"
    assert train(_config(tiny_mnist, tmp_path), run, quiet=True)["status"] == "finished"
    assert not (run / "tensorboard").exists()


# --- installed use ------------------------------------------------------------------------------------------------


def test_packaged_configs_are_found_by_name_and_a_path_still_works(tmp_path: Path) -> None:
    assert {"demo", "rts", "r", "tc"} <= set(list_configs())
    for name in ("rts", "rts.yaml"):
        path = find_config(name)
        assert path.is_file() and path.parent.name == "configs" and path.parent.parent.name == "torchstn"
    assert load_config("rts")["name"] == "rts"
    mine = tmp_path / "rts.yaml"
    mine.write_text("name: mine\n")
    assert find_config(mine) == mine and load_config(mine)["name"] == "mine"
    with pytest.raises(ConfigNotFoundError) as info:
        load_config("no_such_config")
    assert isinstance(info.value, FileNotFoundError)
    assert main(["train", "--config", "no_such_config", "--print-config"]) == 2


def test_the_top_level_configs_folder_is_the_packaged_one() -> None:
    root = Path(__file__).parents[2]
    assert (root / "configs").resolve() == find_config("rts").parent.resolve()


def test_train_with_no_config_runs_on_the_defaults(tiny_mnist: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    flags = [f"data.mnist={tiny_mnist}", f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=64", "data.n_test=32"]
    flags += ["train.max_steps=2", "train.threads=1", "visualize.enabled=False"]
    assert main(["train", "--runs", str(runs), "--quiet", "--device", "cpu", "--set", *flags]) == 0
    (run,) = runs.iterdir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["device"] == "cpu"


def test_a_config_that_cannot_build_leaves_no_run_directory(tiny_mnist: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    flags = [f"data.mnist={tmp_path / 'missing.pkl.gz'}", "train.max_steps=1", "visualize.enabled=False"]
    assert main(["train", "--runs", str(runs), "--quiet", "--device", "cpu", "--set", *flags]) == 2
    assert not runs.exists() or not list(runs.iterdir())
    with pytest.raises(Exception):  # noqa: B017, PT011  (whatever the data loader raises)
        train(_config(tiny_mnist, tmp_path, f"data.mnist={tmp_path / 'missing.pkl.gz'}"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_git_provenance_comes_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_info(tmp_path) == {"git_sha": None, "git_dirty": None}
    repo = tmp_path / "project"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    git = ["git", "-c", "init.defaultBranch=main", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.chdir(repo)
    assert git_info() == {"git_sha": sha, "git_dirty": False}
    (repo / "b.txt").write_text("b")
    assert git_info()["git_dirty"] is True


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_the_device_flag_on_a_machine_without_cuda_is_a_one_line_error(
    tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    flags = [f"data.mnist={tiny_mnist}", "visualize.enabled=False"]
    assert main(["train", "--runs", str(runs), "--device", "cuda", "--set", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.device" in err and "not available" in err
    assert not runs.exists() or not list(runs.iterdir())


_TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not _TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_ddp_without_out_claims_one_run_directory_for_all_processes(tiny_mnist: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [str(_TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "torchstn.cli", "train",
           "--runs", str(runs), "--device", "cpu", "--quiet", "--set", *_flags(tiny_mnist, tmp_path), "train.epochs=1",
           "data.n_valid=32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs.iterdir()  # process 1 trains into process 0's directory, and makes none of its own
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and "valid_error" in metrics and (run / "checkpoints" / "best.pt").is_file()


def test_a_task_moves_the_networks_it_keeps(device: torch.device) -> None:
    from torchstn.train.tasks import ColocTask

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    source = TensorSource(images, torch.zeros(4, dtype=torch.long))
    task = ColocTask(source, source, torch.nn.Linear(3, 2), 1.0, 8)
    assert task.to(device) is task
    assert all(p.device.type == device.type for p in task.encoder.parameters())
    assert task.train is source  # the sources serve CPU tensors; the loop moves each batch


def test_every_process_but_the_first_gets_its_own_stream() -> None:
    from torchstn.train.engine import _rank_seed

    seeds = {_rank_seed(0, rank, epoch) for rank in range(1, 5) for epoch in range(4)}
    assert len(seeds) == 16
    assert _rank_seed(1, 1, 0) != _rank_seed(0, 1, 0)
