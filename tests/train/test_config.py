"""The typed config: the same keys and defaults as before, unknown keys refused, types and ranges checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from torchstn.errors import ConfigError, ConfigKeyError
from torchstn.train import DEFAULTS, Config, format_config, load_config
from torchstn.train.config import parse_overrides, parse_value, validate_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))

# The schema as it was (a literal dict): the dataclass sections must keep every key, its order and its default.
OLD_DEFAULTS = {
    "name": "experiment",
    "task": "classify",
    "data": {
        "dataset": "distorted_mnist", "recipe": "rts", "recipe_params": {}, "train_split": "train",
        "test_split": "test", "n_train": None, "n_test": None, "seed": 0, "redraw": False, "stream": False,
        "mnist": None, "root": None, "cache_dir": None, "size": None,
    },
    "model": {"name": "st_cnn_aff", "kwargs": {}},
    "train": {
        "epochs": 10, "batch_size": 256, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
        "schedule": "onecycle", "step_every": 50_000, "loc_lr_scale": 1.0, "identity_penalty": 0.0,
        "grad_clip": None, "max_steps": None, "seed": 0, "threads": None, "eval_batch_size": 1024,
        "checkpoint_every": 1,
    },
    "coloc": {"encoder_epochs": 2, "margin": 1.0, "positive": "detach", "pairs": "all", "negatives": "crop"},
    "visualize": {"enabled": True, "count": 16},
}  # fmt: skip


def _with_issue_13_changes(old: dict[str, object]) -> dict[str, object]:
    """The old schema plus what issue 13 and later work added (keys whose defaults reproduce the old behaviour) and
    changed (the default recipe is 28x28, as the default model's input: ``torchstn train`` without a config runs)."""
    new = yaml.safe_load(yaml.safe_dump(old, sort_keys=False))
    data = new["data"]
    new["data"] = {}
    for key, value in data.items():
        new["data"][key] = "rotated" if key == "recipe" else value
        if key == "n_test":
            new["data"]["n_valid"] = 0
    new["train"].update(device="auto", precision="32", warmup=0.3)  # warmup: the one-cycle share fixed before
    return dict(new)


def test_defaults_keep_every_key_order_and_value() -> None:
    expected = _with_issue_13_changes(OLD_DEFAULTS)
    assert expected == DEFAULTS
    assert yaml.safe_dump(DEFAULTS, sort_keys=False) == yaml.safe_dump(expected, sort_keys=False)
    # every old key is still there, in its order, with its value (the default recipe aside)
    for section, values in OLD_DEFAULTS.items():
        if isinstance(values, dict):
            kept = {k: v for k, v in DEFAULTS[section].items() if k in values}
            assert list(kept) == list(values)
            assert {k: v for k, v in kept.items() if (section, k) != ("data", "recipe")} == {
                k: v for k, v in values.items() if (section, k) != ("data", "recipe")
            }
        else:
            assert DEFAULTS[section] == values


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path: Path) -> None:
    config = load_config(path)
    typed = Config.from_dict(config)
    assert typed.to_dict() == config
    assert yaml.safe_load(format_config(config)) == config


def test_typed_view() -> None:
    c = Config.from_dict(load_config(None, ["train.epochs=3", "coloc.margin=100"]))
    assert c.train.epochs == 3 and c.coloc.margin == 100.0 and isinstance(c.coloc.margin, float)
    assert c.model.name == "st_cnn_aff" and c.visualize.enabled is True


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epochs=abc", r"train\.epochs expects int, got 'abc'"),
        ("train.epochs=2.5", r"train\.epochs expects int"),
        ("train.lr=fast", r"train\.lr expects float"),
        ("visualize.enabled=1", r"visualize\.enabled expects bool"),
        ("train.optimizer=rmsprop", r"train\.optimizer expects 'adam' or 'adamw' or 'sgd'"),
        ("train.warmup=0", r"train\.warmup expects a share of the schedule in \(0, 1\)"),
        ("train.warmup=1", r"train\.warmup expects a share of the schedule in \(0, 1\)"),
        ("train.epochs=0", r"train\.epochs must be positive"),
        ("train.epochs=-3", r"train\.epochs must be positive"),
        ("train.batch_size=0", r"train\.batch_size must be positive"),
        ("train.checkpoint_every=0", r"train\.checkpoint_every must be positive"),
        ("data.n_train=0", r"data\.n_train must be positive or null"),
        ("train.grad_clip=-1", r"train\.grad_clip must be positive or null"),
        ("train.grad_clip=0", r"train\.grad_clip must be positive or null"),
        ("model.kwargs=3", r"model\.kwargs expects a mapping"),
        ("train=3", r"train is a section"),
    ],
)
def test_overrides_are_type_and_range_checked(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [item])


def test_unknown_keys_are_config_key_errors() -> None:
    for item in ("train.epoch=3", "nope=1", "model.kwargs2.a=1", "train.epochs.x=1"):
        with pytest.raises(ConfigKeyError, match="unknown key"):
            load_config(None, [item])
    with pytest.raises(ConfigKeyError, match=r"train\.epoch"):
        validate_config({**DEFAULTS, "train": {**DEFAULTS["train"], "epoch": 1}})


def test_unknown_keys_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\n  lrate: 0.1\n")
    with pytest.raises(ConfigKeyError, match=r"train\.lrate"):
        load_config(path)
    path.write_text("train:\n  epochs: two\n")
    with pytest.raises(ConfigError, match=r"train\.epochs expects int"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_ints_are_accepted_for_floats_and_nulls_for_optionals() -> None:
    config = load_config(None, ["train.lr=1", "train.grad_clip=2", "train.grad_clip=None", "data.n_train=null"])
    assert config["train"]["lr"] == 1.0 and isinstance(config["train"]["lr"], float)
    assert config["train"]["grad_clip"] is None and config["data"]["n_train"] is None


def test_one_value_parser() -> None:
    assert parse_value("0.5") == 0.5 and parse_value("(0.7, 1.2)") == (0.7, 1.2) and parse_value("None") is None
    assert parse_value("true") is True and parse_value("null") is None and parse_value("{a: 1}") == {"a": 1}
    assert parse_value("/data/mnist.pkl.gz") == "/data/mnist.pkl.gz" and parse_value("rts") == "rts"
    assert parse_value("") == "" and parse_value("a: b: c") == "a: b: c"
    assert parse_overrides(["a.b=1", " c = x"]) == [("a.b", 1), ("c", "x")]
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_string_keys_take_the_text_as_written() -> None:
    assert load_config(None, ["name=2024-01-01"])["name"] == "2024-01-01"
    assert load_config(None, ["name=123"])["name"] == "123"


def test_free_form_sections_take_any_key() -> None:
    config = load_config(None, ["model.kwargs.downsample=2", "data.recipe_params.angle=(-10, 10)"])
    assert config["model"]["kwargs"] == {"downsample": 2}
    assert config["data"]["recipe_params"] == {"angle": (-10, 10)}


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_weight_decay_is_decoupled_for_adamw_only(name: str) -> None:
    import torch

    from torchstn.train.factories import build_optimizer

    config = load_config(None, [f"train.optimizer={name}", "train.lr=0.1", "train.weight_decay=0.5"])
    weight = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(config, torch.nn.ParameterList([weight]))
    weight.grad = torch.zeros(3)  # no gradient from the loss: only the decay acts
    opt.step()
    if name == "adamw":  # decoupled: shrunk by lr * weight_decay, whatever Adam's statistics
        assert isinstance(opt, torch.optim.AdamW)
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1.0 - 0.1 * 0.5))
    elif name == "adam":  # L2 in the gradient, then normalised by Adam: a step of lr
        assert type(opt) is torch.optim.Adam
        torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9), atol=1e-6, rtol=0)
    else:  # SGD: lr * weight_decay * w
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1.0 - 0.1 * 0.5))


@pytest.mark.parametrize("warmup", [0.1, 0.3])
def test_one_cycle_peaks_after_its_warmup_share(warmup: float) -> None:
    import torch

    from torchstn.train.factories import build_optimizer, build_scheduler

    config = load_config(None, [f"train.warmup={warmup}", "train.lr=0.1"])
    opt = build_optimizer(config, torch.nn.ParameterList([torch.nn.Parameter(torch.ones(1))]))
    sched = build_scheduler(config, opt, 200)
    rates = []
    for _ in range(200):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(range(200), key=rates.__getitem__)
    assert abs(peak - warmup * 200) <= 1 and rates[peak] == pytest.approx(0.1)


def test_a_run_config_from_before_warmup_reads_the_warmup_it_had() -> None:
    old = load_config(None)
    del old["train"]["warmup"]
    assert validate_config(old)["train"]["warmup"] == 0.3
