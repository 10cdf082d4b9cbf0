"""Read bent text strips of MNIST digits, with and without a thin-plate-spline rectifier (issue 15).

Trains ``strip_cnn`` (no rectifier) and ``strip_tps_cnn`` (the same recogniser after a TPS spatial transformer with
the ASTER fiducials, k=20) on the ``text_strips`` recipe with the same data, schedule and seed, prints each model's
parameter count and test sequence accuracy (all 5 positions right, "no digit" padding included), and draws what
the rectifier does: each input with the sampling mesh and the 20 fiducials (where each control point reads the
input), and the rectified strip beside it. Everything runs on the CPU::

    PYTHONPATH=src OMP_NUM_THREADS=1 python examples/text_strips.py --n-train 10000 --epochs 5 \\
        --picture docs/results/text_strips-rectified.png --record docs/results/text_strips.json

The defaults are a short schedule for a laptop; a longer one (more samples, more epochs) is what the recipe is for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from torchstn._io import atomic_write_text
from torchstn.data import DistortedMNIST, TextStrips, load_mnist
from torchstn.models import create_model, parameter_count
from torchstn.models.svhn import sequence_loss
from torchstn.viz import capture, draw_record


def sequence_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Fraction of strips whose 5 positions are all right."""
    model.eval()
    right = 0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            pred = model(x[lo : lo + batch]).argmax(-1)
            right += int((pred == y[lo : lo + batch]).all(-1).sum())
    return right / len(x)


def train(name: str, data: tuple[Tensor, Tensor, Tensor, Tensor], args: argparse.Namespace) -> tuple[nn.Module, dict]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    model = create_model(name)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo : lo + args.batch_size]
            loss = sequence_loss(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        acc = sequence_accuracy(model, x_test, y_test)
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "test_seq_acc": acc, "seconds": elapsed})
        print(
            f"{name:14s} epoch {epoch + 1}/{args.epochs}  loss {total / seen:.3f}  test sequence accuracy "
            f"{100 * acc:.2f}%  ({elapsed:.0f} s)",
            flush=True,
        )
    result = {
        "model": name,
        "parameters": parameter_count(model),
        "test_seq_acc": history[-1]["test_seq_acc"],
        "train_seconds": history[-1]["seconds"],
        "history": history,
    }
    return model, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=None, help="where the generated strips are cached")
    p.add_argument("--picture", default="text_strips-rectified.png", help="PNG of inputs, fiducials and outputs")
    p.add_argument("--record", default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mnist = load_mnist()
    recipe = TextStrips()
    t0 = time.perf_counter()
    train_set = DistortedMNIST(recipe, "train", n=args.n_train, mnist=mnist, cache_dir=args.cache_dir)
    test_set = DistortedMNIST(recipe, "test", n=args.n_test, mnist=mnist, cache_dir=args.cache_dir)
    print(
        f"data: {len(train_set)} train / {len(test_set)} test strips {recipe.shape()} "
        f"({time.perf_counter() - t0:.0f} s, cached in {train_set.path.parent if train_set.path else '-'})"
    )
    data = (*train_set.tensors(), *test_set.tensors())
    results, models = [], {}
    for name in ("strip_cnn", "strip_tps_cnn"):
        models[name], r = train(name, data, args)
        results.append(r)
    print("\nmodel           parameters  test sequence accuracy  train time")
    for r in results:
        print(f"{r['model']:14s}  {r['parameters']:10d}  {100 * r['test_seq_acc']:21.2f}%  {r['train_seconds']:8.0f} s")
    [record] = capture(models["strip_tps_cnn"], data[2][:8])
    picture = draw_record(
        record, max_items=8, zoom=3, ncols=2, margin=0.1, title="strip_tps_cnn: input + fiducials | rectified"
    )
    Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.picture)
    print(f"picture: {args.picture}")
    if args.record:
        record_json = {
            "recipe": recipe.config(),
            "n_train": args.n_train,
            "n_test": args.n_test,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "results": results,
        }
        atomic_write_text(Path(args.record), json.dumps(record_json, indent=1))
        print(f"record: {args.record}")


if __name__ == "__main__":
    main()
