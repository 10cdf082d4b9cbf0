"""The command line's conventions: one-line user errors with exit status 2, --version, --print-config, wildcard
model patterns, progress that redraws only on a terminal, and eval's options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import torchstn
from tests.train.conftest import tiny_mnist  # noqa: F401  (the fixture)
from torchstn.cli import main
from torchstn.train import load_config
from torchstn.train.engine import Progress

SRC = Path(torchstn.__file__).parents[1]


def _flags(mnist: Path, tmp: Path) -> list[str]:
    return [
        f"data.mnist={mnist}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.recipe=rotated",
        "data.n_train=64",
        "train.epochs=1",
        "train.batch_size=32",
        "train.threads=1",
        "visualize.enabled=False",
        "model.name=cnn_baseline",
    ]


@pytest.fixture
def run(tiny_mnist: Path, tmp_path: Path) -> Path:  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", "--set", *_flags(tiny_mnist, tmp_path)]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--set", "train.epochs=abc"], r"train\.epochs expects int, got 'abc'"),
        (["train", "--set", "train.epoch=3"], r"unknown key 'train\.epoch'"),
        (["train", "--set", "train.batch_size=0"], r"train\.batch_size must be positive"),
        (["train", "--set", "train.grad_clip=-1"], r"train\.grad_clip must be positive or null"),
        (["train", "--set", "model.name=resnet_9000"], r"unknown model 'resnet_9000'"),
        (["train", "--set", "task=segment"], r"unknown task 'segment'"),
        (["train", "--config", "no/such.yaml"], r"no/such\.yaml: No such file or directory"),
        (["eval", "no/such/run"], r"no/such/run: no such run directory"),
        (["visualize", "."], r"\.: not a run directory \(no config\.yaml\)"),
        (["data"], r"give a recipe name"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    import re

    err = _error(capsys, argv)
    assert err.startswith(f"torchstn {argv[0]}: error: ") and re.search(message, err), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing was created


def test_run_directory_errors(run: Path, capsys: pytest.CaptureFixture[str], tiny_mnist: Path, tmp_path: Path) -> None:  # noqa: F811
    flags = _flags(tiny_mnist, tmp_path)
    assert "already holds a run" in _error(capsys, ["train", "--out", str(run), "--quiet", "--set", *flags])
    assert "--config cannot be given with --resume" in _error(capsys, ["train", "--resume", str(run), "--config", "x"])
    assert "cannot change a run being resumed" in _error(
        capsys, ["train", "--resume", str(run), "--set", "train.lr=0.5"]
    )
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert "last.pt: not a torchstn checkpoint" in _error(capsys, ["eval", str(run)])
    assert main(["train", "--out", str(run), "--overwrite", "--quiet", "--set", *flags]) == 0


def test_resume_of_a_finished_run_and_extension(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (run / "metrics.json").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "the run is finished" in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == before
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


def test_default_run_directories_are_new(tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    flags = ["--runs", str(tmp_path / "runs"), "--quiet", "--set", *_flags(tiny_mnist, tmp_path), "name=exp"]
    assert main(["train", *flags]) == 0 and main(["train", *flags]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_a_traceback_never_reaches_the_user() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "torchstn.cli", "train", "--set", "train.epochs=abc"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "torchstn train: error: config: train.epochs expects int, got 'abc' (str)"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"torchstn {torchstn.__version__}"


def test_print_config(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).parents[1] / "configs" / "rts.yaml")
    assert main(["train", "--config", config, "--print-config", "--set", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load(yaml.safe_dump(load_config(config, ["train.epochs=3"])))
    assert printed["train"]["epochs"] == 3 and not (tmp_path / "runs").exists()


def test_models_take_wildcard_patterns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "st_*_aff"]) == 0
    assert capsys.readouterr().out.split() == ["st_cnn_aff", "st_fcn_aff"]
    assert main(["models", "svhn"]) == 0  # a plain string is still a substring
    assert capsys.readouterr().out.split() == ["svhn_cnn", "svhn_st_cnn_multi", "svhn_st_cnn_single"]
    assert main(["models", "addition_[13]*"]) == 0
    assert capsys.readouterr().out.split() == []
    assert main(["models", "addition_2x*_tps"]) == 0
    assert capsys.readouterr().out.split() == ["addition_2xst_fcn_tps"]


def test_progress_redraws_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bar = Progress(100, "epoch 1/2", quiet=False, every=0.0)
    for _ in range(4):
        bar.update(25, loss=0.5)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("epoch 1/2: 100/100 (100%)")
    assert len(err.splitlines()) == 4
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = Progress(100, "epoch 1/2", quiet=False)
    bar.update(100)
    assert capsys.readouterr().err.startswith("\repoch 1/2 [########################] 100/100")


def test_eval_options(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = json.loads((run / "metrics.json").read_text())
    assert main(["eval", str(run), "--batch-size", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["test_error"] == recorded["test_error"]
    assert main(["eval", str(run), "--split", "train"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["train_error"] <= 100
    copy = run / "copy.pt"
    copy.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    assert main(["eval", str(run), "--checkpoint", str(copy)]) == 0
    assert json.loads(capsys.readouterr().out)["test_error"] == recorded["test_error"]
    assert "--batch-size must be positive" in _error(capsys, ["eval", str(run), "--batch-size", "0"])
    assert "missing.pt: No such file" in _error(capsys, ["eval", str(run), "--checkpoint", str(run / "missing.pt")])


def test_export_refuses_an_opset_it_cannot_write(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--opset 1 cannot hold GridSample" in _error(capsys, ["export", str(run), "--opset", "1"])
    assert not (run / "model.onnx").exists()
