"""Multiply-adds of one training step: how small a transformer's overhead can be at equal speed per multiply-add.

Reproduce (deterministic; no timing, so a busy machine does not change it)::

    .venv/bin/python benchmarks/count_macs.py --out benchmarks/results

``bench_train.py`` times the transformer's overhead in ST-CNN Aff on RTS (the full step against the step of the
same classifier without the transformer) beside the paper's 6% on SVHN. This script counts what each step has to
compute, so that the measured overhead can be read against the overhead the architectures imply.

What is counted, per image (``torchstn.models.count_macs``): the multiply-adds of every ``nn.Conv2d`` and
``nn.Linear`` in one training step: the forward pass (output elements x input channels / groups x kernel area for
a convolution, output elements x input features for a linear layer), the weight gradient (as many again) and the
input gradient (as many again) for the layers whose input requires one. The first layer fed by the image needs
none in a plain network; in a transformer model the image it reads is the warped one, which depends on the
localisation network's parameters, so it does. Biases, activations, pooling, the loss, the optimiser and the warp
itself are not counted (the warp reads four pixels per output pixel and channel: small beside these layers).

The step *without* the transformer is the same model's layers outside the localisation networks (the classifier),
with no input gradient at its first layer; for the SVHN models the paper's baseline, ``svhn_cnn``, is counted as
well. The overhead at equal speed is (transformer model - classifier) / classifier.

Outputs ``macs.md`` and ``macs.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchstn.models import LayerMacs, count_macs, create_model, supported_kwargs

__all__ = ["StepMacs", "step_macs"]


@dataclass(frozen=True)
class StepMacs:
    """Multiply-adds per image of a transformer model's training step and of its classifier's without it."""

    model: str
    input: str
    localisation_forward: int
    classifier_forward: int
    first_input_grad: int  # the classifier's first layer's input gradient: in the full step only
    full_step: int
    classifier_step: int

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.full_step - self.classifier_step) / self.classifier_step

    @property
    def localisation_share_pct(self) -> float:
        return 100.0 * self.localisation_forward / self.classifier_forward


def _step(layers: Sequence[LayerMacs]) -> int:
    return sum(layer.step for layer in layers)


def _localisation(layer: LayerMacs) -> bool:
    return ".localisation." in f".{layer.name}."


def step_macs(name: str, model: nn.Module, x: Tensor) -> StepMacs:
    """Count ``model``'s training step on ``x`` and the same step without its localisation networks: the
    classifier's layers, whose first layer then reads the (pooled) image and needs no input gradient."""
    layers = count_macs(model, x)
    loc = [layer for layer in layers if _localisation(layer)]
    rest = [layer for layer in layers if not _localisation(layer)]
    if not loc or not rest:
        names = [la.name for la in layers]
        raise ValueError(f"{name}: expected localisation networks and a classifier, got layers {names}")
    plain = [LayerMacs(rest[0].name, rest[0].forward, False), *rest[1:]]
    return StepMacs(
        model=name,
        input="x".join(str(s) for s in x.shape[1:]),
        localisation_forward=sum(la.forward for la in loc),
        classifier_forward=sum(la.forward for la in rest),
        first_input_grad=rest[0].forward if rest[0].input_grad else 0,
        full_step=_step(layers),
        classifier_step=_step(plain),
    )


# Table 1's ST-CNN models at the columns' shapes (the ST output average-pooled 2x on RTS), then the paper's SVHN
# models, where its 6% was measured.
CASES: tuple[tuple[str, tuple[int, int, int], dict[str, Any]], ...] = (
    ("st_cnn_aff", (1, 42, 42), {"downsample": 2}),
    ("st_cnn_proj", (1, 42, 42), {"downsample": 2}),
    ("st_cnn_tps", (1, 42, 42), {"downsample": 2}),
    ("st_cnn_aff", (1, 28, 28), {"downsample": 1}),
    ("svhn_st_cnn_single", (3, 64, 64), {}),
    ("svhn_st_cnn_multi", (3, 64, 64), {}),
)
SVHN_BASELINE = "svhn_cnn"
PAPER_OVERHEAD_PCT = 6.0


def _build(name: str, shape: tuple[int, int, int], extra: dict[str, Any]) -> nn.Module:
    return create_model(name, **supported_kwargs(name, {"input_shape": shape, **extra}))


def run() -> dict[str, Any]:
    torch.manual_seed(0)
    rows = []
    for name, shape, extra in CASES:
        counted = step_macs(name, _build(name, shape, extra), torch.rand(2, *shape))
        row = {**asdict(counted), "overhead_pct": counted.overhead_pct, "share_pct": counted.localisation_share_pct}
        if name.startswith("svhn_"):
            base = count_macs(_build(SVHN_BASELINE, shape, {}), torch.rand(2, *shape))
            row["paper_baseline"] = SVHN_BASELINE
            row["paper_baseline_step"] = _step(base)
        rows.append(row)
    return {"rows": rows, "paper_overhead_pct": PAPER_OVERHEAD_PCT, "torch": torch.__version__}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Multiply-adds of a training step",
        "",
        "Generated by `benchmarks/count_macs.py` (deterministic). Per image: conv and linear layers only, forward +",
        "weight gradient + input gradient where the layer's input needs one. *Classifier* is the same model without",
        "its localisation networks (its first layer then needs no input gradient). *Overhead at equal speed* is what",
        "the transformer adds to the classifier's step if every multiply-add ran as fast; the paper measured",
        f"{result['paper_overhead_pct']:.0f}% on SVHN (ST-CNN against the CNN), `bench_train.py` times ours.",
        "",
        "| model | input | localisation forward | classifier forward | share | classifier's first layer, input "
        "gradient | full step | classifier step | overhead at equal speed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| `{r['model']}` | {r['input']} | {r['localisation_forward'] / 1e6:.3f}M | "
            f"{r['classifier_forward'] / 1e6:.3f}M | {r['share_pct']:.1f}% | {r['first_input_grad'] / 1e6:.3f}M | "
            f"{r['full_step'] / 1e6:.2f}M | "
            f"{r['classifier_step'] / 1e6:.2f}M | {r['overhead_pct']:+.1f}% |"
        )
    papers = [r for r in result["rows"] if "paper_baseline" in r]
    if papers:
        lines += ["", "Against the paper's baseline network (counted the same way):", ""]
        for r in papers:
            pct = 100.0 * (r["full_step"] - r["paper_baseline_step"]) / r["paper_baseline_step"]
            lines.append(
                f"- `{r['model']}` {r['full_step'] / 1e6:.1f}M against `{r['paper_baseline']}` "
                f"{r['paper_baseline_step'] / 1e6:.1f}M: {pct:+.1f}%"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where macs.md and macs.json go")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "macs.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "macs.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
