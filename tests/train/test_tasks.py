"""The task registry: one builder per task name, datasets checked, MNIST loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchstn.errors import ConfigError, ConfigKeyError
from torchstn.train import build_task, list_tasks, load_config, register_task
from torchstn.train import tasks as tasks_module
from torchstn.train.tasks import ColocTask


def test_registry_lists_the_tasks_and_refuses_unknown_ones() -> None:
    assert list_tasks() == ["classify", "coloc", "sequence"]
    with pytest.raises(ConfigKeyError, match="unknown task 'segment'"):
        build_task(load_config(None, ["task=segment"]))
    with pytest.raises(ConfigError, match="already registered"):
        register_task("classify")(lambda config: None)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["task=sequence", "data.recipe=rts"],
            r"data\.recipe: task 'sequence' takes svhn, or distorted_mnist with a recipe of digit "
            r"sequences \(text_strips\), got 'rts'",
        ),
        (["task=sequence", "data.dataset=cub", "data.root=/x"], r"task 'sequence' takes svhn or distorted_mnist"),
        (["data.dataset=svhn", "data.root=/x"], r"task 'classify' takes distorted_mnist or cub, got 'svhn'"),
        (["task=coloc", "data.dataset=cub", "data.root=/x"], r"task 'coloc' takes distorted_mnist"),
        (["data.dataset=cub"], r"data\.root: the cub directory is required"),
        (["data.dataset=imagenet"], r"takes distorted_mnist or cub, got 'imagenet'"),
    ],
)
def test_tasks_check_their_dataset(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_task(load_config(None, sets))


def test_colocalisation_loads_mnist_once(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = tasks_module.load_mnist

    def counting(path: object) -> object:
        calls.append(path)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks_module, "load_mnist", counting)
    sets = [f"data.mnist={tiny_mnist}", f"data.cache_dir={tmp_path}", "task=coloc", "data.recipe=colocalisation",
            "data.n_train=16", "data.n_test=8", "coloc.encoder_epochs=1"]  # fmt: skip
    task = build_task(load_config(None, sets))
    assert isinstance(task, ColocTask) and len(task.train) == 16
    assert len(calls) == 1


def test_sequence_task_reads_text_strips(tiny_mnist: Path, tmp_path: Path) -> None:
    import torch

    from torchstn.models import create_model
    from torchstn.train.tasks import SequenceTask

    sets = [f"data.mnist={tiny_mnist}", f"data.cache_dir={tmp_path}", "task=sequence", "data.recipe=text_strips",
            "data.n_train=12", "data.n_test=6"]  # fmt: skip
    task = build_task(load_config(None, sets))
    assert isinstance(task, SequenceTask) and len(task.train) == 12 and len(task.test) == 6
    x, y = task.train.batch(torch.arange(4))
    assert x.shape == (4, 1, 32, 100) and x.dtype == torch.float32 and y.shape == (4, 5)
    model = create_model("strip_cnn")
    loss, wrong = task.loss(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 <= int(wrong) <= 4
    assert int(task.errors(model, x, y)) == int((model.eval()(x).argmax(-1) != y).any(-1).sum())
