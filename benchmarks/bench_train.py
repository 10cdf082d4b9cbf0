"""Training-throughput benchmark: every distorted-MNIST model, and where a spatial transformer's cost goes.

Reproduce (from the repository root; CPU, torch's default thread count, an otherwise idle machine)::

    .venv/bin/python benchmarks/bench_train.py --out benchmarks/results

``--quick`` is a smoke run (one thread, one warm-up step, three timed steps per candidate; results are noise).

What is timed: one training step, ``F.cross_entropy`` -> ``backward()`` -> ``Adam.step()`` on one in-memory batch
(``--batch-size``, default 256), as in ``torchstn.train.engine``. The batch is uniform noise with random labels,
generated once from a seeded generator: the cost of these ops does not depend on pixel values, and the
localisation heads start at the identity, so the transformers sample the whole image as in early training.

Interleaving: every repetition runs every candidate of a section once, in an order rotated from one repetition to
the next, after ``--warmup`` untimed steps each; a drift in machine speed then hits all candidates alike. Tables
report the median of ``--repeats`` repetitions (``time.perf_counter``); the JSON file adds the interquartile range.
The share of CPU time that *other* processes used while a section ran (from ``/proc/stat``) is reported with it:
above a few percent, the numbers say more about the neighbours than about the code.

Sections:
    1. Throughput (images/s) of the ten Table 1 models (``fcn_baseline``, ``cnn_baseline``,
       ``st_fcn_aff|proj|tps``, ``st_cnn_aff|proj|tps``) on the RTS shape (1x42x42, ``downsample=2`` for ST models:
       the transformer's output is average-pooled 2x before the classifier) and the R shape (1x28x28), all in one
       interleaved loop.
    2. The transformer's overhead in ST-CNN Aff on RTS: the full model's step against the step of the *same*
       classifier (``model.classifier``, the same module) on ``avg_pool2d(x, 2)`` without the transformer, beside
       the paper's figure (ST-CNN only 6% slower than the CNN on SVHN). The overhead is then broken into pieces, each
       timed on its own with the model's own modules and settings:

       * localisation network: forward, backward to its parameters, and its share of the Adam update;
       * the warp as the model runs it: ``torchstn.warp`` forward and backward to the parameters (the fused CPU
         kernel where it is built, which the report's header says); for comparison, in italics, the grid path's
         two pieces: grid generation as ``warp`` does it (the non-finite check on the transform matrix, then
         ``transform.grid``, forward and backward to the parameters) and sampling (``torchstn.sample``, with the
         grid-wide check skipped when the matrix check vouches for the grid, forward and backward to the grid),
         and the matrix check alone;
       * the input gradient the transformer forces on the classifier: the classifier step with its input requiring
         a gradient minus the step without (average-pool backward + the first convolution's input gradient), and
         the first convolution's input gradient alone (``torch.nn.grad.conv2d_input``).

       The pieces' sum is compared with the measured overhead; a ``torch.profiler`` run of the full step lists the
       ops that take the time.
    3. With ``--candidates`` (alone): the speed-ups the reproduction issue suggests, for ``cnn_baseline`` and
       ``st_cnn_aff`` on the RTS shape, each against the eager float32 step of the same weights on the same batch:
       bf16 autocast around the forward, the multi-channel convolutions' weights channels-last,
       ``torch.compile`` of the model (its compile time reported beside), and a step on twice the batch (its
       speed-up per image), and the one-channel first convolution on torch's native kernels
       (``SingleChannelConv2d.kernel = "native"``, the step before ``csrc/single_channel_conv.cpp``; its
       "speed-up" below 1 is the compiled kernel's gain), and the 2x2 max pools on ATen's ``nn.MaxPool2d`` instead
       of ``csrc/max_pool2x2.cpp`` (likewise). The CPU's ISA (torch's capability and the AVX-512 /
       BF16 / AMX flags) is reported with them: bf16 is only fast where the CPU has bf16 instructions.
    4. With ``--allocator`` (alone): the step with glibc's allocator as it comes against the step with
       ``torchstn.train.allocator.keep_freed_memory()`` (what ``torchstn train`` sets on the CPU), for the CNN
       and the ST-CNN Aff on the RTS, TC and R shapes. The setting is the whole process's, so each side runs in a
       child process of its own, on the same weights and batch; the parent asks them for one step at a time,
       alternating which goes first, so a drift in machine load hits both alike. Each child also reports its
       page faults per step, the CPU time it spent in the kernel, and its peak memory.

    5. With ``--versus REV`` (alone): each Table 1 model's *training* throughput in real ``torchstn train`` runs,
       in the loop (``images_per_second`` of its ``log.jsonl``) and end to end (the wall clock between epoch ends,
       the digits drawn and the test pass included), this checkout's code against commit ``REV``'s (e.g. the main
       the reproduction issue was filed against), one after the other in one run. Each side is a short real run of
       the RTS config (``--versus-epochs`` epochs, the first a warm-up not counted; the training digits redrawn
       every epoch as the reproduction trains; ``train.threads`` from ``--threads``, default 1), ``REV``'s from a
       git worktree of it (made under ``--versus-tree``, its compiled layers built, its ``torchstn`` imported from
       its ``src/`` with this interpreter's packages, its own ``configs/rts.yaml``), the order of the two sides
       alternating from one repetition to the next. Everything the engine does per step is in it: the data
       batches, the allocator settings, the compiled kernels, the progress bookkeeping. Each model is the one its
       config builds at both commits (the default budget: the FCN family's 1.36M of Table 1 is a config override
       the older code did not have).

Outputs ``train.md`` (tables) and ``train.json`` (machine, settings, raw medians and IQRs) in ``--out``;
``--candidates`` writes ``train-candidates.md`` and ``train-candidates.json`` instead, ``--allocator``
``train-allocator.md`` and ``train-allocator.json``, ``--versus`` ``train-versus.md`` and ``train-versus.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from _common import ForeignLoad, Stats, interleaved, machine_info
from torchstn import ext, sample
from torchstn.models import create_model, supported_kwargs
from torchstn.models.common import MaxPool2x2, SingleChannelConv2d
from torchstn.models.mnist import STClassifier, parameter_count
from torchstn.modules import SpatialTransformer
from torchstn.train import allocator
from torchstn.transforms import MatrixTransform

MODELS = (
    "fcn_baseline",
    "cnn_baseline",
    "st_fcn_aff",
    "st_fcn_proj",
    "st_fcn_tps",
    "st_cnn_aff",
    "st_cnn_proj",
    "st_cnn_tps",
)


@dataclass(frozen=True)
class Column:
    """A Table 1 column's input: ``(C, H, W)`` and the ST models' average-pooling factor."""

    name: str
    input_shape: tuple[int, int, int]
    downsample: int

    @property
    def label(self) -> str:
        c, h, w = self.input_shape
        return f"{self.name} {c}x{h}x{w}"


COLUMNS = (Column("RTS", (1, 42, 42), 2), Column("R", (1, 28, 28), 1))
OVERHEAD_MODEL, OVERHEAD_COLUMN = "st_cnn_aff", COLUMNS[0]
PAPER_OVERHEAD_PCT = 6.0  # the paper: ST-CNN only 6% slower than the plain CNN (SVHN, forward + backward)
LR = 1e-4  # small: hundreds of steps on one batch must not drive a transformer off the image
LOADED_SHARE = 0.05  # sections timed while other processes used more CPU than this are flagged

Step = Callable[[], None]


# --------------------------------------------------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------------------------------------------------


def training_step(forward: Callable[[], Tensor], target: Tensor, params: Iterable[nn.Parameter]) -> Step:
    """One step as in the engine: cross-entropy of ``forward()`` against ``target``, backward, Adam update."""
    opt = torch.optim.Adam(list(params), lr=LR)

    def step() -> None:
        loss = F.cross_entropy(forward(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return step


def make_batch(batch: int, shape: Sequence[int], gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform-noise images ``(B, *shape)`` and random labels ``(B,)``."""
    return torch.rand(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def build(name: str, column: Column) -> nn.Module:
    kwargs = {"input_shape": column.input_shape, "downsample": column.downsample}
    return create_model(name, **supported_kwargs(name, kwargs))  # plain models take no downsample


# --------------------------------------------------------------------------------------------------------------------
# 1. Throughput
# --------------------------------------------------------------------------------------------------------------------


def bench_throughput(args: argparse.Namespace, gen: torch.Generator) -> dict[str, Any]:
    candidates: dict[str, Step] = {}
    params: dict[str, int] = {}
    for column in COLUMNS:
        x, y = make_batch(args.batch_size, column.input_shape, gen)
        for name in MODELS:
            model = build(name, column).train()
            key = f"{name}@{column.name}"
            candidates[key] = training_step(partial(model, x), y, model.parameters())
            params[key] = parameter_count(model)
    print(f"1. throughput: {len(candidates)} models x shapes, {args.repeats} interleaved repetitions", flush=True)
    times, share = interleaved(candidates, args.repeats, args.warmup)
    rows = []
    for name in MODELS:
        row: dict[str, Any] = {"model": name}
        for column in COLUMNS:
            key = f"{name}@{column.name}"
            t = times[key]
            row[column.name] = {
                "step_ms": t.median_ms,
                "iqr_ms": t.iqr_ms,
                "repeats": t.repeats,
                "images_per_s": args.batch_size / (t.median_ms / 1e3),
                "params": params[key],
            }
        rows.append(row)
    return {"rows": rows, "foreign_cpu_share": share}


def throughput_markdown(result: dict[str, Any], batch: int) -> str:
    cols = COLUMNS
    head = ["model"]
    for c in cols:
        head += [f"{c.label} images/s", f"{c.name} step ms (IQR)", f"{c.name} vs CNN", f"{c.name} params"]
    cnn = {c.name: next(r for r in result["rows"] if r["model"] == "cnn_baseline")[c.name] for c in cols}
    lines = [
        "## 1. Training throughput",
        "",
        f"One Adam step on a batch of {batch} (forward, cross-entropy, backward, update); images/s = batch / median "
        "step time. ST models on RTS pool the transformer's output 2x before the classifier (`downsample=2`). "
        "`vs CNN`: throughput relative to `cnn_baseline` on the same shape." + loaded_note(result["foreign_cpu_share"]),
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "|".join("---:" for _ in head[1:]) + "|",
    ]
    for r in result["rows"]:
        cells = [f"`{r['model']}`"]
        for c in cols:
            v = r[c.name]
            cells += [
                f"{v['images_per_s']:,.0f}",
                f"{v['step_ms']:.1f} ({v['iqr_ms']:.1f})",
                f"{v['images_per_s'] / cnn[c.name]['images_per_s']:.2f}x",
                f"{v['params']:,}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# 2. The transformer's overhead and where it goes
# --------------------------------------------------------------------------------------------------------------------


def first_conv(module: nn.Module) -> nn.Conv2d:
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise TypeError("expected a convolutional classifier")
    return conv


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Explicit padding of a convolution (``"same"`` with odd kernels pads ``k // 2`` on each side)."""
    if isinstance(conv.padding, str):
        if conv.padding != "same":
            return (0, 0)
        kh, kw = conv.kernel_size
        return (kh // 2, kw // 2)
    return (int(conv.padding[0]), int(conv.padding[1]))


def overhead_candidates(
    model: STClassifier, x: Tensor, y: Tensor, gen: torch.Generator
) -> tuple[dict[str, Step], dict[str, str]]:
    """The full step, the classifier-only step and the pieces of the difference, as timed closures."""
    st = model.transformer
    if not isinstance(st, SpatialTransformer):
        raise TypeError("expected a single SpatialTransformer")
    size = tuple(x.shape[2:])
    ds = model.downsample
    classifier, loc, transform = model.classifier, st.localisation, st.transform

    # Realistic intermediate tensors, taken from one pass of the model itself (detached leaves).
    with torch.no_grad():
        theta = loc(x)  # (B, P)
        grid0 = transform.grid(theta, size, align_corners=st.align_corners, src_size=size)  # (B, H, W, 2)
        pooled0 = F.avg_pool2d(x, ds) if ds > 1 else x  # (B, C, H/ds, W/ds)
    conv1 = first_conv(classifier)
    with torch.no_grad():
        conv1_out_shape = conv1(pooled0).shape
    g_theta = torch.randn(theta.shape, generator=gen)
    g_grid = torch.randn(grid0.shape, generator=gen)
    g_out = torch.randn(x.shape, generator=gen)
    g_conv1 = torch.randn(conv1_out_shape, generator=gen)

    def pool(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, ds) if ds > 1 else t

    full = training_step(lambda: model(x), y, model.parameters())
    classifier_only = training_step(lambda: classifier(pool(x)), y, classifier.parameters())
    x_leaf = x.detach().clone().requires_grad_(True)

    def classifier_input_forward() -> Tensor:
        x_leaf.grad = None
        return classifier(pool(x_leaf))  # type: ignore[no-any-return]

    classifier_input_grad = training_step(classifier_input_forward, y, classifier.parameters())

    loc_opt = torch.optim.Adam(loc.parameters(), lr=LR)

    def localisation() -> None:
        loc_opt.zero_grad(set_to_none=True)
        loc(x).backward(g_theta)
        loc_opt.step()

    # The same localisation net with its convolution weights in the default contiguous (NCHW) layout: what
    # conv_localisation(channels_last=True) saves.
    loc_nchw = copy.deepcopy(loc)
    for m in loc_nchw.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)
    loc_nchw_opt = torch.optim.Adam(loc_nchw.parameters(), lr=LR)

    def localisation_nchw() -> None:
        loc_nchw_opt.zero_grad(set_to_none=True)
        loc_nchw(x).backward(g_theta)
        loc_nchw_opt.step()

    theta_leaf = theta.detach().clone().requires_grad_(True)

    # As warp does it: the non-finite check on the (B, 3, 3) matrix (finite_check below), then the grid from the
    # matrix; the sampler then skips its grid-wide check when the matrix vouches for the grid (sample_mode).
    matrix_family = transform.sampler_matrix(theta.detach(), size) is not None
    sample_mode = "ignore" if matrix_family and st.nonfinite == "raise" else st.nonfinite

    def grid_generation() -> None:
        theta_leaf.grad = None
        matrix = transform.sampler_matrix(theta_leaf, size)
        if matrix is None:
            grid = transform.grid(theta_leaf, size, align_corners=st.align_corners, src_size=size)
        else:
            grid = transform.grid_from_matrix(matrix, size, st.align_corners, contiguous=False)
        grid.backward(g_grid)  # type: ignore[no-untyped-call]

    def warp_step() -> None:  # what the model runs: the fused kernel where it is loaded, else grid + sample
        theta_leaf.grad = None
        st.sample_with(x, theta_leaf).backward(g_out)  # type: ignore[no-untyped-call]

    grid_leaf = grid0.detach().clone().requires_grad_(True)

    def sampling() -> None:
        grid_leaf.grad = None
        out = sample(
            x,
            grid_leaf,
            st.mode,
            st.padding,
            st.fill,
            st.align_corners,
            backend=st.backend,
            nonfinite=sample_mode,
        )
        out.backward(g_out)  # type: ignore[no-untyped-call]

    matrix0 = transform.sampler_matrix(theta.detach(), size) if isinstance(transform, MatrixTransform) else grid0

    def finite_check() -> None:  # what nonfinite="raise" costs warp: one aminmax over the matrix (or the grid)
        lo, hi = torch.aminmax(matrix0)
        _ = bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))

    weight = conv1.weight.detach()
    padding = conv_padding(conv1)

    def conv1_forward() -> None:
        with torch.no_grad():
            conv1(pooled0)

    def conv1_input_gradient() -> None:
        shape, stride, dilation = pooled0.shape, conv1.stride, conv1.dilation
        conv2d_input(shape, weight, g_conv1, stride, padding, dilation, conv1.groups)  # type: ignore[no-untyped-call]

    candidates: dict[str, Step] = {
        "full": full,
        "classifier": classifier_only,
        "classifier_input_grad": classifier_input_grad,
        "localisation": localisation,
        "localisation_nchw": localisation_nchw,
        "warp": warp_step,
        "grid": grid_generation,
        "sampling": sampling,
        "finite_check": finite_check,
        "conv1_input_grad": conv1_input_gradient,
        "conv1_forward": conv1_forward,
    }
    kernel = "the fused CPU kernel" if ext.available() else "the grid path: the fused kernel is not built"
    conv1_desc = (
        f"{conv1.in_channels}->{conv1.out_channels}, {conv1.kernel_size[0]}x{conv1.kernel_size[1]}, "
        f"on {pooled0.shape[2]}x{pooled0.shape[3]}"
    )
    labels = {
        "full": f"full model step (`{OVERHEAD_MODEL}`)",
        "classifier": "same classifier on `avg_pool2d(x, 2)`, no transformer",
        "classifier_input_grad": "same, input requires grad",
        "localisation": "localisation net: forward + backward + Adam on its parameters",
        "localisation_nchw": "the same with NCHW convolution weights (`conv_localisation(channels_last=False)`)",
        "warp": f"the warp as the model runs it: `st.sample_with` (`torchstn.warp`) fwd + bwd to the params ({kernel})",
        "grid": f"grid path, grid: matrix check + `{type(transform).__name__}.grid`, fwd + bwd",
        "sampling": f"grid path, sampling: `torchstn.sample(..., nonfinite={sample_mode!r})` fwd + bwd to the grid",
        "finite_check": "of which (in grid generation): the non-finite check on the matrix",
        "conv1_input_grad": f"first conv input gradient alone ({conv1_desc})",
        "conv1_forward": f"for scale: first conv forward ({conv1_desc})",
    }
    return candidates, labels


def profile_full_step(step: Step, steps: int, top: int) -> list[dict[str, Any]]:
    """Top ops of the full step by self CPU time (``torch.profiler``), per step."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]


def bench_overhead(args: argparse.Namespace, gen: torch.Generator) -> dict[str, Any]:
    column = OVERHEAD_COLUMN
    model = build(OVERHEAD_MODEL, column).train()
    if not isinstance(model, STClassifier):
        raise TypeError(f"{OVERHEAD_MODEL}: expected an STClassifier")
    x, y = make_batch(args.batch_size, column.input_shape, gen)
    candidates, labels = overhead_candidates(model, x, y, gen)
    print(f"2. transformer overhead ({OVERHEAD_MODEL} on {column.label}), {args.repeats} repetitions", flush=True)
    times, share = interleaved(candidates, args.repeats, args.warmup)
    ms = {k: t.median_ms for k, t in times.items()}
    overhead = ms["full"] - ms["classifier"]
    input_grad = ms["classifier_input_grad"] - ms["classifier"]
    pieces = {
        "localisation": ms["localisation"],
        "warp": ms["warp"],
        "classifier_input_grad": input_grad,
    }
    explained = sum(pieces.values())
    prof = profile_full_step(candidates["full"], args.profile_steps, args.profile_top)
    return {
        "model": OVERHEAD_MODEL,
        "column": column.label,
        "times": {k: vars(t) for k, t in times.items()},
        "labels": labels,
        "overhead_ms": overhead,
        "overhead_pct": 100.0 * overhead / ms["classifier"],
        "paper_overhead_pct": PAPER_OVERHEAD_PCT,
        "pieces_ms": pieces,
        "pieces_sum_ms": explained,
        "unexplained_ms": overhead - explained,
        "profile": prof,
        "profile_steps": args.profile_steps,
        "foreign_cpu_share": share,
    }


def overhead_markdown(r: dict[str, Any], plain_cnn_ms: float | None) -> str:
    t, labels = r["times"], r["labels"]
    base = t["classifier"]["median_ms"]
    overhead = r["overhead_ms"]

    def pct(v: float, of: float) -> str:
        return f"{100.0 * v / of:+.1f}%" if of else "—"

    def timed(key: str, of: float, detail: bool = False) -> str:
        v, label = t[key], f"*{labels[key]}*" if detail else labels[key]
        return f"| {label} | {v['median_ms']:.2f} ({v['iqr_ms']:.2f}) | {pct(v['median_ms'], of)} |"

    full = t["full"]["median_ms"]
    versus_plain = ""
    if plain_cnn_ms is not None:
        versus_plain = (
            f" Against the column's plain `cnn_baseline` on the full-size input (section 1, {plain_cnn_ms:.1f} ms), "
            f"the ST model trains {plain_cnn_ms / full:.2f}x as fast: its classifier sees the 2x pooled output."
        )
    lines = [
        "## 2. The transformer's overhead",
        "",
        f"`{r['model']}` on {r['column']}: the full training step against the step of the **same** classifier module "
        "(`model.classifier`) on `avg_pool2d(x, 2)` without the transformer. Overhead "
        f"**{overhead:.1f} ms per step = {r['overhead_pct']:+.1f}%** of the classifier-only step; the paper reports "
        f"ST-CNN only {r['paper_overhead_pct']:.0f}% slower (forward and backward) than the plain CNN on SVHN "
        "(64x64 inputs and a much larger classifier, so a smaller share)."
        + versus_plain
        + loaded_note(r["foreign_cpu_share"]),
        "",
        "| what is timed | median ms (IQR) | vs classifier-only step |",
        "|---|---:|---:|",
    ]
    for key in ("full", "classifier", "classifier_input_grad"):
        v = t[key]
        lines.append(
            f"| {labels[key]} | {v['median_ms']:.2f} ({v['iqr_ms']:.2f}) | {pct(v['median_ms'] - base, base)} |"
        )
    ig = r["pieces_ms"]["classifier_input_grad"]
    lines += [
        "",
        "Where the overhead goes (each piece timed on its own, interleaved with the steps above; rows in italics are "
        "details, not added to the sum):",
        "",
        "| piece | median ms (IQR) | share of overhead |",
        "|---|---:|---:|",
        timed("localisation", overhead),
        timed("localisation_nchw", overhead, detail=True),
        timed("warp", overhead),
        timed("grid", overhead, detail=True),
        timed("sampling", overhead, detail=True),
        timed("finite_check", overhead, detail=True),
        f"| classifier input gradient (step with input grad minus without) | {ig:.2f} | {pct(ig, overhead)} |",
        timed("conv1_input_grad", overhead, detail=True),
        timed("conv1_forward", overhead, detail=True),
        f"| **sum of the pieces** | {r['pieces_sum_ms']:.2f} | {pct(r['pieces_sum_ms'], overhead)} |",
        f"| unexplained (overhead minus sum: dispatch, autograd bookkeeping, cache effects, noise) | "
        f"{r['unexplained_ms']:.2f} | {pct(r['unexplained_ms'], overhead)} |",
        "",
        f"`torch.profiler`, full step: top ops by self CPU time (mean of {r['profile_steps']} profiled steps):",
        "",
        "| op | self ms / step | share of step | calls / step |",
        "|---|---:|---:|---:|",
    ]
    for e in r["profile"]:
        lines.append(
            f"| `{e['op']}` | {e['self_ms_per_step']:.2f} | {100 * e['share']:.1f}% | {e['calls_per_step']:g} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Machine, output, main
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# 3. Candidate speed-ups of the training step (--candidates)
# --------------------------------------------------------------------------------------------------------------------

CANDIDATE_MODELS = ("cnn_baseline", "st_cnn_aff")  # the column's costliest model and its transformer
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`ISA_FLAGS` the first CPU of ``/proc/cpuinfo`` lists (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return {f: f in have for f in ISA_FLAGS}


def channels_last_classifier(model: nn.Module) -> nn.Module:
    """The model with its multi-channel convolution weights in channels-last layout (oneDNN then runs those
    convolutions, and what follows them, in that layout); one-channel convolutions keep their own kernel."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 1:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def native_first_conv(model: nn.Module) -> nn.Module:
    """The model with its one-channel first convolutions on torch's native kernels instead of the compiled one."""
    for m in model.modules():
        if isinstance(m, SingleChannelConv2d):
            m.kernel = "native"
    return model


def aten_pools(model: nn.Module) -> nn.Module:
    """The model with its 2x2 max pools on ATen's ``nn.MaxPool2d`` instead of the compiled one."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2))
    return model


def bf16_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """The training step with the forward under ``torch.autocast("cpu", torch.bfloat16)``."""

    def forward() -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()  # type: ignore[no-any-return]

    return training_step(forward, y, model.parameters())


def bench_candidates(args: argparse.Namespace, gen: torch.Generator) -> dict[str, Any]:
    """Each candidate of the issue's list against the eager float32 step, same model weights, same batch."""
    column = COLUMNS[0]
    x, y = make_batch(args.batch_size, column.input_shape, gen)
    x2, y2 = make_batch(2 * args.batch_size, column.input_shape, gen)
    candidates: dict[str, Step] = {}
    compile_s: dict[str, float] = {}
    for name in CANDIDATE_MODELS:
        base = build(name, column).train()
        candidates[f"{name}/eager"] = training_step(partial(base, x), y, base.parameters())
        bf16 = copy.deepcopy(base)
        candidates[f"{name}/bf16"] = bf16_step(bf16, x, y)
        cl = channels_last_classifier(copy.deepcopy(base))
        candidates[f"{name}/channels_last"] = training_step(partial(cl, x), y, cl.parameters())
        big = copy.deepcopy(base)
        candidates[f"{name}/batch2x"] = training_step(partial(big, x2), y2, big.parameters())
        nat = native_first_conv(copy.deepcopy(base))
        candidates[f"{name}/native_conv1"] = training_step(partial(nat, x), y, nat.parameters())
        pools = aten_pools(copy.deepcopy(base))
        candidates[f"{name}/aten_pool"] = training_step(partial(pools, x), y, pools.parameters())
        plain = copy.deepcopy(base)
        compiled = torch.compile(plain)
        step = training_step(partial(compiled, x), y, plain.parameters())
        start = time.perf_counter()
        step()  # compiles forward and backward
        compile_s[name] = time.perf_counter() - start
        candidates[f"{name}/compile"] = step
    print(f"3. candidates: {len(candidates)} steps, {args.repeats} interleaved repetitions", flush=True)
    times, share = interleaved(candidates, args.repeats, args.warmup)
    rows = []
    for key, t in times.items():
        name, how = key.split("/")
        eager = times[f"{name}/eager"].median_ms
        row = {"model": name, "candidate": how, "step_ms": t.median_ms, "iqr_ms": t.iqr_ms}
        images = 2 if how == "batch2x" else 1  # its step trains twice the images: compare the time per image
        rows.append({**row, "speedup": eager / (t.median_ms / images)})
    return {
        "rows": rows,
        "compile_seconds": compile_s,
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "foreign_cpu_share": share,
    }


CANDIDATE_TEXT = {
    "eager": "float32, eager: the step the runs train with",
    "bf16": '`torch.autocast("cpu", torch.bfloat16)` around the forward',
    "channels_last": "the multi-channel convolutions' weights in channels-last layout",
    "compile": "`torch.compile(model)` (inductor, default mode; first step's compile time beside)",
    "batch2x": "twice the batch (the speed-up is per image; a schedule matched to it would have to be re-validated)",
    "aten_pool": "the classifier's 2x2 max pools on ATen's `nn.MaxPool2d`, not the compiled one "
    "(`csrc/max_pool2x2.cpp`): below 1x by the kernel's gain",
    "native_conv1": "the one-channel first convolution on torch's native kernels (`SingleChannelConv2d.kernel`: "
    "native), not the compiled one (`csrc/single_channel_conv.cpp`): below 1x by the kernel's gain",
}


def candidates_markdown(r: dict[str, Any]) -> str:
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in r["cpu_flags"].items()) or "unknown"
    lines = [
        "## 3. Candidate speed-ups of the training step",
        "",
        f"The issue's candidates, each against the eager float32 step of the same model on the RTS shape (1x42x42, "
        f"batch as above). CPU: torch's capability `{r['cpu_capability']}`; flags: {flags}."
        + loaded_note(r["foreign_cpu_share"]),
        "",
        "| model | candidate | median ms (IQR) | speed-up |",
        "|---|---|---:|---:|",
    ]
    for row in r["rows"]:
        what = CANDIDATE_TEXT[row["candidate"]]
        if row["candidate"] == "compile":
            what += f" ({r['compile_seconds'][row['model']]:.0f} s)"
        lines.append(
            f"| `{row['model']}` | {what} | {row['step_ms']:.1f} ({row['iqr_ms']:.1f}) | {row['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# 4. The allocator (--allocator)
# --------------------------------------------------------------------------------------------------------------------

ALLOCATOR_CASES = (
    ("cnn_baseline", Column("RTS", (1, 42, 42), 2)),
    ("st_cnn_aff", Column("RTS", (1, 42, 42), 2)),
    ("cnn_baseline", Column("TC", (1, 60, 60), 2)),
    ("st_cnn_aff", Column("TC", (1, 60, 60), 2)),
    ("cnn_baseline", Column("R", (1, 28, 28), 1)),
    ("st_cnn_aff", Column("R", (1, 28, 28), 1)),
)


def allocator_child(case: int, keep: bool, args: argparse.Namespace) -> None:
    """A child of ``--allocator``: build case ``case``'s step, then run one step per ``step`` line on stdin and
    answer each with a JSON line (milliseconds, minor page faults, kernel CPU seconds), ``peak`` with the peak
    resident memory (bytes)."""
    import resource

    applied = allocator.keep_freed_memory() if keep else False
    name, column = ALLOCATOR_CASES[case]
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = build(name, column).train()
    x, y = make_batch(args.batch_size, column.input_shape, gen)
    step = training_step(partial(model, x), y, model.parameters())
    print(json.dumps({"ready": True, "applied": applied}), flush=True)
    for line in sys.stdin:
        if line.strip() == "peak":
            print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
            continue
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        out = {"ms": (t1 - t0) * 1e3, "faults": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime}
        print(json.dumps(out), flush=True)


def bench_allocator(args: argparse.Namespace) -> dict[str, Any]:
    """Each case's step in two child processes, glibc as it comes and with ``keep_freed_memory``, alternating."""
    rows = []
    load = ForeignLoad()
    for case, (name, column) in enumerate(ALLOCATOR_CASES):
        children = {}
        for side in ("glibc", "keep"):
            argv = [sys.executable, __file__, "--allocator-child", str(case), "--seed", str(args.seed)]
            argv += ["--batch-size", str(args.batch_size), *(["--keep"] if side == "keep" else [])]
            if args.threads is not None:
                argv += ["--threads", str(args.threads)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc as it comes
            children[side] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            ready = {side: json.loads(c.stdout.readline()) for side, c in children.items()}  # type: ignore[union-attr]

            def ask(side: str, what: str = "step", children: dict[str, Any] = children) -> dict[str, Any]:
                child = children[side]
                child.stdin.write(what + "\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                return json.loads(child.stdout.readline())  # type: ignore[union-attr, no-any-return]

            for _ in range(args.warmup):
                for side in children:
                    ask(side)
            samples: dict[str, list[dict[str, Any]]] = {side: [] for side in children}
            order = list(children)
            for rep in range(args.repeats):
                for side in order if rep % 2 == 0 else order[::-1]:
                    samples[side].append(ask(side))
            peaks = {side: ask(side, "peak")["peak"] for side in children}
        finally:
            for c in children.values():
                c.stdin.close()  # type: ignore[union-attr]
                c.wait()
        row: dict[str, Any] = {"model": name, "column": column.label, "applied": ready["keep"]["applied"]}
        for side, got in samples.items():
            t = Stats.of([g["ms"] for g in got])
            row[side] = {
                "step_ms": t.median_ms,
                "iqr_ms": t.iqr_ms,
                "faults_per_step": statistics.median(g["faults"] for g in got),
                "sys_share": sum(g["sys_s"] for g in got) / (sum(g["ms"] for g in got) / 1e3),
                "peak_bytes": peaks[side],
            }
        row["speedup"] = row["glibc"]["step_ms"] / row["keep"]["step_ms"]
        rows.append(row)
        print(f"  {name} {column.label}: {row['speedup']:.2f}x", flush=True)
    return {"rows": rows, "foreign_cpu_share": load.share()}


def allocator_markdown(r: dict[str, Any]) -> str:
    lines = [
        "## 4. The allocator",
        "",
        "One training step (batch as above) with glibc's allocator as it comes and with "
        "`torchstn.train.allocator.keep_freed_memory()` (every block from the heap, freed memory kept: what "
        "`torchstn train` sets on the CPU), each in a child process of its own on the same weights and batch, "
        "asked for one step at a time in alternating order. *Faults*: minor page faults per step (median); "
        "*kernel*: the share of the step's wall time the child spent in the kernel (mostly zeroing fresh pages); "
        "*peak*: the child's peak resident memory." + loaded_note(r["foreign_cpu_share"]),
        "",
        "| model | shape | glibc ms (IQR) | faults | kernel | peak | kept ms (IQR) | faults | kernel | peak "
        "| speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        cells = []
        for side in ("glibc", "keep"):
            v = row[side]
            cells += [
                f"{v['step_ms']:.0f} ({v['iqr_ms']:.0f})",
                f"{v['faults_per_step']:,.0f}",
                f"{100 * v['sys_share']:.0f}%",
                f"{v['peak_bytes'] / 2**30:.2f} GiB",
            ]
        lines.append(f"| `{row['model']}` | {row['column']} | {' | '.join(cells)} | {row['speedup']:.2f}x |")
    if not all(row["applied"] for row in r["rows"]):
        lines += ["", "The settings could not be applied here (no glibc): both sides ran the same allocator."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# 5. Training throughput against another commit (--versus)
# --------------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
VERSUS_CONFIG = "configs/rts.yaml"
VERSUS_TARGET = 1.5  # the reproduction issue: each Table 1 model's training images/s >= 1.5x the code it was filed on
# training digits per epoch: an epoch of a few seconds at one thread for each family (the FCN family is ~50x faster)
VERSUS_N_TRAIN = {"fcn": 30720, "cnn": 4096}
VERSUS_N_TEST = 512


def _reproduce_helpers() -> Any:
    """``scripts/reproduce.py``, whose git-worktree helpers (``worktree``, ``prepare_tree``, ``code_env``) the
    reproduction trains old commits with: the same checkout, build and import rules here."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce

    return reproduce


def versus_run(tree: Path, env: dict[str, str], model: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One short ``torchstn train`` of ``model`` on RTS with ``tree``'s code; its images/s after the warm-up epoch."""
    family = "fcn" if "fcn" in model else "cnn"
    sets = [
        f"model.name={model}",
        f"train.epochs={args.versus_epochs}",
        f"data.n_train={VERSUS_N_TRAIN[family]}",
        f"data.n_test={VERSUS_N_TEST}",
        f"train.threads={args.threads or 1}",
        f"train.seed={args.seed}",
        "visualize.enabled=false",
    ]
    argv = [sys.executable, "-m", "torchstn.cli", "train", "--config", VERSUS_CONFIG, "--quiet", "--out", str(out)]
    log = out / "log.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "--set", *sets], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # When each epoch's log line appears: the wall clock between epoch ends counts everything an epoch costs
    # (drawing its digits, in the loop or in a background thread, and the test pass), not only the engine's loop.
    ends: list[float] = []
    size = 0
    while proc.poll() is None:
        time.sleep(0.02)
        now = log.stat().st_size if log.exists() else 0
        if now != size:  # read the log only when it grew, not every poll, beside the run being timed
            size, lines = now, log.read_text().count("\n")
            ends.extend([time.perf_counter()] * (lines - len(ends)))
    stderr = proc.stderr.read() if proc.stderr is not None else ""
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"{tree}: torchstn train {model} failed: {tail}")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if len(ends) != len(rows):
        raise RuntimeError(f"{log}: saw {len(ends)} epochs end, the log has {len(rows)}")
    timed = rows[1:]  # the first epoch warms up (allocations, the kernels' first calls)
    images = sum(r["images_per_second"] * r["epoch_seconds"] for r in timed)
    seconds = sum(r["epoch_seconds"] for r in timed)
    between = ends[-1] - ends[0]
    return {"images_per_second": images / seconds, "wall_images_per_second": images / between, "wall_s": wall}


def bench_versus(args: argparse.Namespace) -> dict[str, Any]:
    """Every Table 1 model's training images/s with this checkout's code and with ``args.versus``'s, alternating."""
    rep = _reproduce_helpers()
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.versus}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if sha.returncode != 0:
        raise SystemExit(f"--versus: {args.versus!r} is not a commit of {ROOT}")
    old_sha = sha.stdout.strip()
    here = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    old_tree = rep.worktree(old_sha, args.versus_tree)
    failed = rep.prepare_tree(old_tree)
    if failed:
        raise SystemExit(f"--versus: {old_tree}: its compiled layers did not build ({failed})")
    sides = {"then": (old_tree, rep.code_env(old_tree)), "now": (ROOT, rep.code_env(ROOT))}
    rows = []
    load = ForeignLoad()
    with tempfile.TemporaryDirectory(prefix="bench-versus-") as tmp:
        for model in MODELS:
            got: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for r in range(args.repeats):
                for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    tree, env = sides[side]
                    got[side].append(versus_run(tree, env, model, Path(tmp) / f"{model}-{side}-{r}", args))
            row: dict[str, Any] = {"model": model}
            for side, runs in got.items():
                # Stats is the benchmarks' median and IQR (its fields say ms; here they hold images/s)
                loop = Stats.of([g["images_per_second"] for g in runs])
                wall = Stats.of([g["wall_images_per_second"] for g in runs])
                row[side] = {
                    "images_per_second": loop.median_ms,
                    "iqr": loop.iqr_ms,
                    "wall_images_per_second": wall.median_ms,
                    "wall_iqr": wall.iqr_ms,
                    "runs": runs,
                }
            row["speedup"] = row["now"]["images_per_second"] / row["then"]["images_per_second"]
            row["wall_speedup"] = row["now"]["wall_images_per_second"] / row["then"]["wall_images_per_second"]
            rows.append(row)
            print(
                f"  {model}: {row['then']['images_per_second']:,.0f} -> {row['now']['images_per_second']:,.0f} "
                f"images/s in the loop ({row['speedup']:.2f}x), {row['then']['wall_images_per_second']:,.0f} -> "
                f"{row['now']['wall_images_per_second']:,.0f} between epoch ends ({row['wall_speedup']:.2f}x)",
                flush=True,
            )
    return {
        "versus": args.versus,
        "then_sha": old_sha,
        "now_sha": here,
        "epochs": args.versus_epochs,
        "n_train": VERSUS_N_TRAIN,
        "rows": rows,
        "foreign_cpu_share": load.share(),
    }


def versus_markdown(r: dict[str, Any]) -> str:
    lines = [
        "## 5. Training throughput against the code of another commit",
        "",
        f"Each Table 1 model trained by `torchstn train --config {VERSUS_CONFIG}` for {r['epochs']} epochs "
        f"({r['n_train']['cnn']:,} redrawn training digits an epoch for the CNN family, "
        f"{r['n_train']['fcn']:,} for the FCN family; {VERSUS_N_TEST} test digits) with the code of "
        f"`{r['then_sha'][:10]}` (*then*, `--versus {r['versus']}`) and of `{r['now_sha'][:10]}` (*now*), the "
        "two sides in alternating order. *In the loop* is the engine's own images/s (`log.jsonl`: the training "
        "loop's time, which leaves out drawing the next epoch's digits where the older code does that before the "
        "loop); *end to end* is the training digits over the wall-clock time between the first epoch's end and the "
        "last's, as the parent sees each epoch's log line appear: everything an epoch costs, its digits drawn in "
        "the loop or in a background thread and its test pass. Both over the epochs after the first (a warm-up), "
        "the median over the repetitions (interquartile range in brackets). Both sides build the model their "
        f"config builds (the FCN family at the default budget). Target: {VERSUS_TARGET}x end to end."
        + loaded_note(r["foreign_cpu_share"]),
        "",
        "| model | then, in the loop | now, in the loop | speed-up | then, end to end | now, end to end | speed-up "
        "| target met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        t, n = row["then"], row["now"]
        lines.append(
            f"| `{row['model']}` | {t['images_per_second']:,.0f} ({t['iqr']:,.0f}) | "
            f"{n['images_per_second']:,.0f} ({n['iqr']:,.0f}) | {row['speedup']:.2f}x | "
            f"{t['wall_images_per_second']:,.0f} ({t['wall_iqr']:,.0f}) | "
            f"{n['wall_images_per_second']:,.0f} ({n['wall_iqr']:,.0f}) | {row['wall_speedup']:.2f}x | "
            f"{'yes' if row['wall_speedup'] >= VERSUS_TARGET else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def loaded_note(share: float | None) -> str:
    if share is None:
        return ""
    if share > LOADED_SHARE:
        return (
            f" **Timed under load: other processes used {100 * share:.0f}% of the machine's CPU meanwhile; these "
            "numbers are not representative.**"
        )
    return f" Other processes used {100 * share:.0f}% of the CPU meanwhile."


def header(title: str, command: str, info: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"# {title}",
        "",
        "Generated by `benchmarks/bench_train.py`; reproduce with:",
        "",
        f"    {command}",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores of {info['logical_cores']}, "
        f"torch {info['torch']}, {info['torch_threads']} torch threads, Python {info['python']}. "
        f"Median of {args.repeats} interleaved repetitions after {args.warmup} warm-up steps each"
        + (" (**--quick: a smoke run, not a measurement**)." if args.quick else "."),
        "",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    args: argparse.Namespace, stem: str, md: str, info: dict[str, Any], command: str, start: float, **sections: Any
) -> None:
    """Print the tables and write ``<stem>.md`` and ``<stem>.json`` (machine, settings, command, the measured
    ``sections`` and the seconds the whole benchmark took) in ``--out``."""
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(md)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"machine": info, "settings": settings, "command": command, **sections}
    record["seconds"] = time.perf_counter() - start
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / f'{stem}.md'} and {args.out / f'{stem}.json'} ({record['seconds']:.0f} s)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where train.md and train.json go")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 25; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per candidate (default 3; 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--profile-steps", type=int, default=None, help="profiled full steps (default 5; 2 with --quick)")
    p.add_argument("--profile-top", type=int, default=12, help="ops listed from the profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: one thread, few repetitions")
    p.add_argument(
        "--candidates",
        action="store_true",
        help="only section 3 (bf16, channels-last, torch.compile, twice the batch, against eager): train-candidates.*",
    )
    p.add_argument(
        "--allocator",
        action="store_true",
        help="only section 4 (glibc's allocator against keep_freed_memory, in child processes): train-allocator.*",
    )
    p.add_argument(
        "--versus",
        default=None,
        metavar="REV",
        help="only section 5 (each Table 1 model's training images/s, this code against commit REV's): train-versus.*",
    )
    p.add_argument("--versus-epochs", type=int, default=3, help="epochs of each --versus run, the first not timed")
    p.add_argument(
        "--versus-tree",
        type=Path,
        default=Path("../worktrees"),
        help="where --versus makes (or finds) the git worktree of REV (default: ../worktrees)",
    )
    p.add_argument("--allocator-child", type=int, default=None, help=argparse.SUPPRESS)  # a child of --allocator
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the child applies keep_freed_memory
    args = p.parse_args(argv)
    q = args.quick
    args.threads = args.threads if args.threads is not None else (1 if q else None)
    args.repeats = args.repeats if args.repeats is not None else (3 if q else 25)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.profile_steps = args.profile_steps if args.profile_steps is not None else (2 if q else 5)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.allocator_child is not None:
        allocator_child(args.allocator_child, args.keep, args)
        return
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    info = machine_info()
    print(f"{info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    start = time.perf_counter()
    command = ".venv/bin/python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.allocator:
        md = header("Training step: the allocator", command.strip(), info, args)
        result = bench_allocator(args)
        write_outputs(
            args, "train-allocator", md + allocator_markdown(result), info, command.strip(), start, allocator=result
        )
        return
    if args.versus is not None:
        if args.versus_epochs < 2:
            raise SystemExit(f"--versus-epochs: expected at least 2 (the first is not timed); got {args.versus_epochs}")
        args.versus_tree = args.versus_tree.resolve()
        md = header("Training throughput against another commit", command.strip(), info, args)
        result = bench_versus(args)
        write_outputs(args, "train-versus", md + versus_markdown(result), info, command.strip(), start, versus=result)
        return
    if args.candidates:
        md = header("Training step: candidate speed-ups", command.strip(), info, args)
        result = bench_candidates(args, gen)
        write_outputs(
            args, "train-candidates", md + candidates_markdown(result), info, command.strip(), start, candidates=result
        )
        return
    throughput = bench_throughput(args, gen)
    overhead = bench_overhead(args, gen)
    plain = next(r for r in throughput["rows"] if r["model"] == "cnn_baseline")[OVERHEAD_COLUMN.name]["step_ms"]
    info["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    md = (
        header("Training throughput", command.strip(), info, args)
        + throughput_markdown(throughput, args.batch_size)
        + "\n"
        + overhead_markdown(overhead, plain)
    )
    write_outputs(args, "train", md, info, command.strip(), start, throughput=throughput, overhead=overhead)


if __name__ == "__main__":
    main()
