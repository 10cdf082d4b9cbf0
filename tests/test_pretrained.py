"""The weights shipped in the package: each loads offline, passes its checksum and makes its recorded error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from torchstn.errors import CheckpointError, CheckpointNotFoundError, ConfigError, ConfigKeyError
from torchstn.models import create_model, list_pretrained
from torchstn.models import pretrained as shipped

ROOT = Path(__file__).resolve().parent.parent

WEIGHTS = list_pretrained()
IDS = [f"{w.model}-{w.tag}" for w in WEIGHTS]


def test_weights_ship_for_the_rts_transformers_and_cnn() -> None:
    expected = {(m, "rts") for m in ("st_cnn_aff", "st_cnn_proj", "st_cnn_tps", "cnn_baseline")}
    assert expected <= {(w.model, w.tag) for w in WEIGHTS}


@pytest.mark.parametrize("weights", WEIGHTS, ids=IDS)
def test_each_entry_comes_from_its_committed_record(weights: shipped.PretrainedWeights) -> None:
    record = ROOT / weights.record
    meta = json.loads((record / "meta.json").read_text())
    metrics = json.loads((record / "metrics.json").read_text())
    assert meta["git_sha"] == weights.code_sha and meta["git_dirty"] is False
    assert metrics["status"] == "finished" and metrics["test_error"] == weights.test_error
    assert weights.path.stat().st_size < 1_000_000


@pytest.mark.parametrize("weights", WEIGHTS, ids=IDS)
def test_each_entry_is_the_best_committed_seed_of_its_cell(weights: shipped.PretrainedWeights) -> None:
    """What ships is the best seed of the cell RESULTS.md shows: no committed seed of the same column, model and
    schedule has a lower test error (a better seed's record lands: export its run with scripts/export_weights.py)."""
    record = ROOT / weights.record
    errors = {
        other.name: json.loads((other / "metrics.json").read_text())["test_error"]
        for other in record.parent.glob(record.name.split("-seed")[0] + "-seed*")
        if (other / "metrics.json").is_file()
    }
    assert errors[record.name] == min(errors.values()), (weights.record, errors)


@pytest.mark.parametrize("weights", WEIGHTS, ids=IDS)
def test_pretrained_model_makes_its_recorded_error_on_the_check_slice(weights: shipped.PretrainedWeights) -> None:
    torch.manual_seed(123)  # the weights, not the initialisation, decide the outputs
    model = create_model(weights.model, pretrained=weights.tag)
    error = shipped.check_slice_error(model, weights.check)
    # Exact on the machine that exported them; one or two flipped ties elsewhere (0.05 points each of 2000).
    assert abs(error - weights.check["error"]) <= 0.1, (error, weights.check)
    # The slice is a sample of the test set the record scored: a 2000-digit slice is within a few points of it.
    assert abs(error - weights.test_error) < 2.0


def test_the_check_slice_is_the_start_of_the_test_set_training_scored() -> None:
    """The slice is not a fresh draw: its images and labels are the first ``n`` of the test set a run of the
    record's recipe and data seed evaluates on (``DistortedMNIST``, as ``torchstn train`` builds it)."""
    from torchstn.data import DistortedMNIST, get_recipe

    check = {"recipe": "rts", "recipe_params": {}, "split": "test", "seed": 0, "n": 64}
    x, y = shipped.check_slice(check)
    test = DistortedMNIST(get_recipe("rts"), "test", n=200, seed=0)
    assert torch.equal(x, test.images[:64].float() / 255.0) and torch.equal(y, test.labels[:64])


def test_pretrained_true_takes_the_models_only_weights_and_kwargs_may_repeat_them() -> None:
    (w,) = list_pretrained("cnn_baseline")
    a = create_model("cnn_baseline", pretrained=True)
    b = create_model("cnn_baseline", pretrained=w.tag, input_shape=(1, 42, 42))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_pretrained_true_is_refused_when_several_weights_ship_for_the_model() -> None:
    """Weights for another input shipping later must not change what ``pretrained=True`` loads: it names them."""
    several = [m for m in {w.model for w in WEIGHTS} if len(list_pretrained(m)) > 1]
    if not several:
        pytest.skip("every model ships one set of weights")
    tags = [w.tag for w in list_pretrained(several[0])]
    with pytest.raises(ConfigError, match=r"pretrained=True: .* has weights tagged .*pass one"):
        create_model(several[0], pretrained=True)
    assert all(create_model(several[0], pretrained=t) is not None for t in tags)


def test_kwargs_that_change_the_architecture_are_refused() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        create_model("st_cnn_aff", pretrained="rts", input_shape=(1, 28, 28))


def test_unknown_weights_name_what_ships() -> None:
    with pytest.raises(ConfigKeyError, match="no weights ship for model 'st_fcn_tps'"):
        create_model("st_fcn_tps", pretrained=True)
    with pytest.raises(ConfigKeyError, match="no weights tagged 'svhn'"):
        create_model("st_cnn_aff", pretrained="svhn")
    with pytest.raises(ConfigError, match="expected True or a tag"):
        create_model("st_cnn_aff", pretrained=3)  # type: ignore[arg-type]


def _copy_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, target)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", target)
    return target


def test_a_tampered_file_fails_its_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_weights(tmp_path, monkeypatch)
    w = shipped.pretrained_weights("st_cnn_aff", "rts")
    data = bytearray((target / w.file).read_bytes())
    data[len(data) // 2] ^= 1
    (target / w.file).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        create_model("st_cnn_aff", pretrained="rts")


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_weights(tmp_path, monkeypatch)
    w = shipped.pretrained_weights("st_cnn_aff", "rts")
    (target / w.file).unlink()
    with pytest.raises(CheckpointNotFoundError) as info:
        create_model("st_cnn_aff", pretrained="rts")
    assert info.value.filename == str(target / w.file)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_file_that_asks_to_run_code_is_refused_even_with_a_matching_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    target = _copy_weights(tmp_path, monkeypatch)
    w = shipped.pretrained_weights("st_cnn_aff", "rts")
    torch.save({"x": _Payload()}, target / w.file)
    index = json.loads((target / "index.json").read_text())
    for row in index:
        if row["file"] == w.file:
            row["sha256"] = hashlib.sha256((target / w.file).read_bytes()).hexdigest()
    (target / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a readable state dict"):
        create_model("st_cnn_aff", pretrained="rts")
    assert "pwned" not in capsys.readouterr().out


def test_weights_that_do_not_fit_the_model_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_weights(tmp_path, monkeypatch)
    index = json.loads((target / "index.json").read_text())
    for row in index:
        if row["model"] == "st_cnn_aff":
            row["model"] = "st_cnn_proj"  # the same file under a model with a larger head
    (target / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="do not fit the model 'st_cnn_proj'"):
        create_model("st_cnn_proj", pretrained="rts")


def test_a_malformed_index_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_weights(tmp_path, monkeypatch)
    (target / "index.json").write_text('[{"model": "x"}]')
    with pytest.raises(CheckpointError, match="malformed index"):
        list_pretrained()
