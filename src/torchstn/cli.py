"""The ``torchstn`` command.

* ``torchstn data NAME`` materialises a distorted MNIST split into the cache (or ``--cache-dir``) and writes a PNG
  sheet of samples; ``torchstn data --list`` lists the recipes and their parameters.
* ``torchstn train --config rts [--set key=value ...]`` trains into a new run directory (``--config`` is a YAML
  file or the name of a config shipped with the package; without one the built-in defaults train; ``--out`` names
  the directory; an existing run is replaced only with ``--overwrite``; ``--device`` sets ``train.device``);
  ``--print-config`` prints the resolved config; ``--resume RUN`` continues a stopped run exactly where it stopped
  (``--set train.epochs=N`` extends a finished one; ``--device`` moves it to another device).
* ``torchstn eval RUN`` re-evaluates a run's checkpoint (``--split``, ``--checkpoint``, ``--batch-size``,
  ``--device``).
* ``torchstn visualize RUN`` redraws what the run's transformers learnt.
* ``torchstn export RUN`` writes the run's model as ONNX (``RUN/model.onnx``) and checks it with onnxruntime.
* ``torchstn models [PATTERN]`` lists the registered models (a substring or a wildcard pattern).

``model.kwargs`` values ``call:module:function`` run code, so they are refused unless ``--allow-call MODULE`` names
the module. User errors are one line on stderr with exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]


def _cmd_data(args: argparse.Namespace) -> int:
    from torchstn.data import RECIPES, get_recipe, load_mnist, materialise
    from torchstn.errors import OptionError
    from torchstn.viz import save_sheet

    if args.list:
        for name, cls in RECIPES.items():
            recipe = cls()
            fields = ", ".join(f"{k}={v!r}" for k, v in recipe.config().items() if k != "name")
            print(f"{name:<22} {fields}")
        return 0
    if args.name is None:
        raise OptionError("data: give a recipe name (see `torchstn data --list`)")
    from torchstn.train.config import parse_overrides

    recipe = get_recipe(args.name, **dict(parse_overrides(args.set)))
    mnist = load_mnist(args.mnist)
    source = mnist.split(args.split)
    n = len(source) if args.n is None else args.n
    if recipe.name == "volumetric" and n > 2000 and not args.force:
        raise OptionError(f"data: {n} volumes of {recipe.shape()} take {n * 216_000 / 1e9:.1f} GB; pass --force")
    start = time.perf_counter()
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if not args.quiet:
            print(f"\r{recipe.name} {args.split}: {done}/{n}", end="", file=sys.stderr, flush=True)

    batch, path = materialise(recipe, source, args.split, n, args.seed, args.cache_dir, progress=progress)
    if not args.quiet and done:
        print(file=sys.stderr)
    print(f"{recipe.name} {args.split}: {len(batch.labels)} samples {tuple(batch.images.shape[1:])} -> {path}")
    print(f"  {'generated' if done else 'loaded from cache'} in {time.perf_counter() - start:.1f} s")
    sheet = Path(args.sheet) if args.sheet else path.with_suffix(".png")
    images = batch.images[:32]
    if images.ndim == 5:  # volumes: show the projection over depth
        images = images.float().mean(2) / 255.0
        images = images / images.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    boxes = batch.meta["boxes"][:32] if "boxes" in batch.meta else None
    save_sheet(sheet, images, labels=batch.labels[:32], boxes=boxes)
    print(f"  sheet: {sheet}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from torchstn.errors import ConfigError, STNError
    from torchstn.models import model_function
    from torchstn.train import TrainingDiverged, format_config, load_config, train
    from torchstn.train.allocator import keep_freed_memory
    from torchstn.train.config import parse_overrides, set_key
    from torchstn.train.engine import TrainingInterrupted, resolve_device
    from torchstn.train.rundir import new_run_dir
    from torchstn.train.tasks import task_builder

    if args.resume:
        if args.config is not None:
            raise ConfigError("train: --config cannot be given with --resume (the run keeps its own config.yaml)")
        if args.out is not None or args.overwrite:
            raise ConfigError("train: --out and --overwrite start a new run; they cannot be given with --resume")
        run = Path(args.resume)
        config = _recorded_config(run)
        for item, (key, value) in zip(args.set, parse_overrides(args.set), strict=True):
            if key not in ("train.epochs", "train.device"):
                raise ConfigError(
                    f"train: --set {key} cannot change a run being resumed (only train.epochs, to extend, and "
                    "train.device)"
                )
            set_key(config, key, value, raw=item.partition("=")[2])
    else:
        config = load_config(args.config, args.set)
    if args.device is not None:
        set_key(config, "train.device", args.device)
    if args.print_config:
        print(format_config(config), end="")
        return 0
    claimed: list[Path] = []

    def claim() -> Path:  # called by train once the model and the data are built
        claimed.append(new_run_dir(args.runs, config["name"]))
        return claimed[-1]

    if not args.resume:
        model_function(config["model"]["name"])  # an unknown model or task fails before a directory is made
        task_builder(config["task"])
    run_dir: Any = Path(args.resume) if args.resume else (Path(args.out) if args.out else claim)
    if resolve_device(str(config["train"].get("device") or "auto")).type == "cpu":
        keep_freed_memory()  # each step's large activations reuse the heap's pages (torchstn.train.allocator)
    try:
        metrics = train(
            config,
            run_dir,
            resume=bool(args.resume),
            quiet=args.quiet,
            stop_after=args.stop_after,
            overwrite=args.overwrite,
            allow_call=args.allow_call,
        )
    except TrainingDiverged as err:
        print(f"train: stopped: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        print(f"train: {err}", file=sys.stderr)
        return 128 + err.signum
    except STNError:
        for path in claimed:
            with contextlib.suppress(OSError):
                path.rmdir()  # the name claimed for this run, left empty
        raise
    run = claimed[0] if claimed else run_dir  # a process other than 0 under DDP claims none (and has no metrics)
    if metrics and os.environ.get("RANK", "0") == "0":  # under DDP, process 0 speaks
        scores = [f"{k[:-6]} error {metrics[k]:.2f}%" for k in ("valid_error", "test_error") if k in metrics]
        print(f"{run}: {', '.join(scores) or 'not scored'} after {metrics.get('epoch')} epochs")
    return 0


def _recorded_config(run: Path) -> dict[str, Any]:
    """A run directory's config.yaml, validated."""
    import yaml

    from torchstn.errors import ConfigError, RunError
    from torchstn.train.config import validate_config

    path = run / "config.yaml"
    if not run.is_dir():
        raise RunError(f"{run}: no such run directory")
    if not path.is_file():
        raise RunError(f"{run}: not a run directory (no config.yaml)")
    try:
        recorded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return validate_config(recorded)


def _load_run(
    run: Path, allow_call: Sequence[str] = (), checkpoint: str | None = None, device: str = "cpu"
) -> tuple[dict[str, Any], Any, Any]:
    """A run's config, its model with the checkpoint's weights (on ``device``), and its task.

    ``checkpoint`` is a file, or ``last`` / ``best`` (``RUN/checkpoints/NAME.pt``). Code named by ``model.kwargs``
    ``call:`` values runs only for modules in ``allow_call``.
    """
    from torchstn.train import build_model, build_task, load_checkpoint
    from torchstn.train.engine import resolve_device

    config = _recorded_config(run)
    target = resolve_device(device)
    model = build_model(config, allow_call)
    name = checkpoint or "last"
    path = run / "checkpoints" / f"{name}.pt" if name in ("last", "best") else Path(name)
    model.load_state_dict(load_checkpoint(path, map_location=target)["model"])
    return config, model.to(target), build_task(config).to(target)


def _cmd_eval(args: argparse.Namespace) -> int:
    import copy

    from torchstn.errors import OptionError
    from torchstn.train import evaluate

    if args.batch_size is not None and args.batch_size < 1:
        raise OptionError(f"eval: --batch-size must be positive, got {args.batch_size}")
    from torchstn.train.engine import split_validation

    config, model, task = _load_run(Path(args.run), args.allow_call, args.checkpoint, args.device or "auto")
    n_valid = config["data"]["n_valid"]
    if args.split == "valid" and not n_valid:
        raise OptionError(f"eval: --split valid: the run {args.run} holds out no validation set (data.n_valid=0)")
    if args.split in ("train", "valid"):  # score a part of the training source with the test metric
        train_part, valid_part = split_validation(task.train, n_valid) if n_valid else (task.train, None)
        task = copy.copy(task)
        task.test = valid_part if args.split == "valid" else train_part
    metrics = evaluate(model, task, args.batch_size or config["train"]["eval_batch_size"])
    error = metrics.pop("test_error")
    print(json.dumps({"run": args.run, "split": args.split, **metrics, f"{args.split}_error": error}))
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from torchstn.visualize import save_transformer_pictures

    _, model, task = _load_run(Path(args.run), args.allow_call)
    x = task.test.batch(torch.arange(min(args.count, len(task.test))))[0]
    out = Path(args.out) if args.out else Path(args.run) / "pictures"
    for path in save_transformer_pictures(model, x, out):
        print(path)
    return 0


MIN_OPSET = 16  # ONNX GridSample


def _cmd_export(args: argparse.Namespace) -> int:
    from torchstn.errors import OptionError
    from torchstn.export import export_onnx

    if args.opset is not None and args.opset < MIN_OPSET:
        raise OptionError(f"export: --opset {args.opset} cannot hold GridSample; give {MIN_OPSET} or later")
    _, model, task = _load_run(Path(args.run), args.allow_call)
    example = task.test.batch(torch.arange(min(args.batch, len(task.test))))[0]
    out = Path(args.out) if args.out else Path(args.run) / "model.onnx"
    path = export_onnx(model, example, out, check=not args.no_check, opset=args.opset)
    if args.opset is not None:
        import onnx

        got = max((o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")), default=None)
        if got != args.opset:
            path.unlink(missing_ok=True)
            raise OptionError(f"export: the exporter cannot write opset {args.opset} for this model (it wrote {got})")
    print(path)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from torchstn.models import list_models, list_pretrained

    names = list_models(args.filter)
    if not args.pretrained:
        print("\n".join(names))
        return 0
    for w in (w for w in list_pretrained() if w.model in names):
        print(f"{w.model}  pretrained={w.tag!r}  test error {w.test_error:.2f}%  ({w.record}, code {w.code_sha[:7]})")
    return 0


def _allow_call_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-call",
        action="append",
        default=[],
        metavar="MODULE",
        help="let model.kwargs values 'call:MODULE:function' import and run MODULE (and its submodules); "
        "without it a config never runs code",
    )


def build_parser() -> argparse.ArgumentParser:
    import torchstn

    parser = argparse.ArgumentParser(prog="torchstn", description="Spatial Transformer Networks for PyTorch.")
    parser.add_argument("--version", action="version", version=f"torchstn {torchstn.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="materialise a distorted MNIST split and draw a sheet of samples")
    data.add_argument("name", nargs="?", help="recipe: rotated (r), rts, projective (p), elastic (e), tc, ...")
    data.add_argument("--list", action="store_true", help="list the recipes and their default parameters")
    data.add_argument("--split", default="train", help="train, valid, test or train+valid (default: train)")
    data.add_argument("--n", type=int, default=None, help="number of samples (default: one per source digit)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe parameters")
    data.add_argument("--mnist", default=None, help="IDX directory or mnist.pkl.gz (default: the bundled copy)")
    data.add_argument("--cache-dir", default=None, help="default: $TORCHSTN_CACHE or ~/.cache/torchstn")
    data.add_argument("--sheet", default=None, help="PNG path for the sample sheet (default: beside the cache)")
    data.add_argument("--force", action="store_true", help="allow very large volumetric sets")
    data.add_argument("--quiet", action="store_true", help="no progress output")
    data.set_defaults(func=_cmd_data)

    tr = sub.add_parser("train", help="train a model from a config (flags override the file)")
    tr.add_argument(
        "--config", default=None, help="YAML file, or the name of a packaged config (demo, rts, ...; default: none)"
    )
    tr.add_argument("--device", default=None, help="train.device: auto (default), cpu, cuda or cuda:N")
    tr.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=3"
    )
    tr.add_argument("--out", default=None, help="run directory (default: a new RUNS/NAME-TIMESTAMP)")
    tr.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    tr.add_argument("--runs", default="runs", help="parent of new run directories (default: runs)")
    tr.add_argument(
        "--resume", default=None, metavar="RUN", help="continue a stopped run (--set train.epochs=N extends one)"
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    tr.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS", help="stop after EPOCHS (resume later)")
    tr.set_defaults(func=_cmd_train)

    _allow_call_flag(tr)
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its test split")
    ev.add_argument("run")
    ev.add_argument(
        "--split", choices=("test", "valid", "train"), default="test", help="which source to score (default: test)"
    )
    ev.add_argument(
        "--checkpoint", default=None, help="checkpoint file, or last / best (default: RUN/checkpoints/last.pt)"
    )
    ev.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    ev.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
    _allow_call_flag(ev)
    ev.set_defaults(func=_cmd_eval)

    vis = sub.add_parser("visualize", help="draw what a run's transformers learnt")
    vis.add_argument("run")
    _allow_call_flag(vis)
    vis.add_argument("--count", type=int, default=16)
    vis.add_argument("--out", default=None)
    vis.set_defaults(func=_cmd_visualize)

    ex = sub.add_parser("export", help="export a run's model to ONNX (dynamic batch), checked with onnxruntime")
    ex.add_argument("run")
    _allow_call_flag(ex)
    ex.add_argument("--out", default=None, help="ONNX file (default: RUN/model.onnx)")
    ex.add_argument("--batch", type=int, default=2, help="example batch taken from the test split (default: 2)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ex.set_defaults(func=_cmd_export)

    mod = sub.add_parser("models", help="list the registered models")
    mod.add_argument("filter", nargs="?", default="", help="a substring or a wildcard pattern ('st_*_aff')")
    mod.add_argument(
        "--pretrained", action="store_true", help="list the shipped weights (create_model(name, pretrained=TAG))"
    )
    mod.set_defaults(func=_cmd_models)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchstn`` command; return its exit status.

    User errors (a bad key or value, an unknown model, a missing file, a directory that is not a run) are one line
    on stderr and exit status 2, without a traceback; a diverged run exits with 1, an interrupted one with
    128 + the signal number.
    """
    from torchstn.errors import STNError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (STNError, OSError) as err:
        print(f"torchstn {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"torchstn {args.command}: interrupted", file=sys.stderr)
        return 130


def _drop_working_directory_from_path(argv: Sequence[str]) -> None:
    """``python -m torchstn.cli`` puts the working directory first on ``sys.path``: a ``.py`` file in a run
    directory would then shadow the modules imported later. Drop it, unless ``--allow-call`` asks for user code."""
    if "--allow-call" in argv or any(a.startswith("--allow-call=") for a in argv):
        return
    here = {"", ".", os.getcwd()}
    sys.path[:] = [p for p in sys.path if p not in here]


if __name__ == "__main__":
    _drop_working_directory_from_path(sys.argv[1:])
    raise SystemExit(main())
