"""Pieces every model family shares: the transform table, the classifier wrapper, the parameter and multiply-add
counts, and the first convolution of a one-channel classifier.

The model families (:mod:`~torchstn.models.mnist`, :mod:`~torchstn.models.svhn`, :mod:`~torchstn.models.cub`) build
on these; all are importable from :mod:`torchstn.models` too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchstn.errors import OptionError
from torchstn.transforms import Affine, Attention, Projective, Similarity, ThinPlateSpline, Transform

__all__ = [
    "LayerMacs",
    "MaxPool2x2",
    "STClassifier",
    "SingleChannelConv2d",
    "count_macs",
    "make_transform",
    "parameter_count",
]


def make_transform(name: str) -> Transform:
    """A transform from its short name: ``aff``, ``proj``, ``tps`` (4x4 grid), ``sim``, ``att``."""
    table: dict[str, Callable[[], Transform]] = {
        "aff": Affine,
        "proj": Projective,
        "tps": lambda: ThinPlateSpline((4, 4)),
        "sim": Similarity,
        "att": Attention,
    }
    if name not in table:
        raise OptionError(f"transform: expected one of {', '.join(table)}, got {name!r}")
    return table[name]()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class LayerMacs:
    """One convolution or linear layer of a model, as one forward pass ran it (see :func:`count_macs`).

    Attributes:
        name: The layer's name in ``model.named_modules()``.
        forward: Multiply-adds per sample of its forward pass.
        input_grad: Whether its input requires a gradient, so that a training step also computes one.
    """

    name: str
    forward: int
    input_grad: bool

    @property
    def step(self) -> int:
        """Multiply-adds per sample of a training step: forward, weight gradient and (if needed) input gradient,
        each as many as the forward pass."""
        return (3 if self.input_grad else 2) * self.forward


def count_macs(model: nn.Module, x: Tensor) -> list[LayerMacs]:
    """The multiply-adds of every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` (per sample of the batch ``x``), in
    the order one forward pass runs them; ``sum(layer.step for layer in ...)`` is a training step's. The pass runs
    in eval mode with gradients on, so batch-norm statistics are left as they were, and the model is handed back
    in its own mode.

    Biases, activations, pooling and the warp are not counted. Forward hooks read each layer's output size (so a
    layer run twice counts twice) and whether its input requires a gradient: in a plain network the first layer's
    does not, while behind a spatial transformer it reads the warped image, which depends on the localisation
    network's weights. (``torch.utils.flop_counter`` counts ATen ops instead, and misses the native convolution
    of :class:`SingleChannelConv2d`.)

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        >>> [(m.name, m.forward, m.input_grad) for m in count_macs(net, torch.zeros(2, 1, 8, 8))]
        [('0', 2304, False), ('2', 2560, True)]
    """
    layers: list[LayerMacs] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size
                per_output = module.in_channels // module.groups * int(k[0]) * int(k[1])
            elif isinstance(module, nn.Linear):
                per_output = module.in_features
            else:  # pragma: no cover - hooks are registered on Conv2d and Linear only
                return
            layers.append(LayerMacs(name, output.numel() // output.shape[0] * per_output, inputs[0].requires_grad))

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was = model.training
    try:
        with torch.enable_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return layers


class _NativeConv2d(torch.autograd.Function):
    """Stride-1 conv2d through PyTorch's native CPU kernels (``_slow_conv2d_*``) instead of oneDNN's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = list(padding), bias is not None
        kernel = list(weight.shape[-2:])
        return torch.ops.aten._slow_conv2d_forward(x, weight, kernel, bias, [1, 1], ctx.padding)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        kernel = list(weight.shape[-2:])
        gx, gw, gb = torch.ops.aten._slow_conv2d_backward(
            grad.contiguous(), x, weight, kernel, [1, 1], ctx.padding, mask
        )
        return gx, gw, gb, None


class _KernelConv2d(torch.autograd.Function):
    """The one-channel "same" convolution of ``csrc/single_channel_conv.cpp`` (:mod:`torchstn.ext`), first-order."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        b = bias.contiguous() if bias is not None else x.new_empty(0)
        return torch.ops.torchstn.single_channel_conv(x, weight, b)  # type: ignore[no-any-return]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        gx, gw, gb = torch.ops.torchstn.single_channel_conv_backward(
            grad.contiguous(), x, weight, bool(ctx.needs_input_grad[0]), ctx.has_bias
        )
        return (
            gx if ctx.needs_input_grad[0] else None,
            gw if ctx.needs_input_grad[1] else None,
            gb if ctx.has_bias and ctx.needs_input_grad[2] else None,
        )


def _kernel_refusal(x: Tensor, weight: Tensor) -> str | None:
    """Why the compiled one-channel convolution cannot run this call (None: it can)."""
    if x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        return f"it takes float32 or float64 input and weight, got {x.dtype} and {weight.dtype}"
    if torch.is_autocast_enabled("cpu"):
        return "autocast is on"
    if not _ext_available():
        return "the kernel is not built (run `python -m torchstn.ext build`) or TORCHSTN_EXT=0"
    return None


def _ext_available() -> bool:
    """Whether the compiled kernels of :mod:`torchstn.ext` are loaded (or load from an existing build)."""
    from torchstn import ext  # here, not at the top: `python -m torchstn.ext` must not find it imported already

    return ext.available()


class SingleChannelConv2d(nn.Conv2d):
    """The classifier's first convolution: one input channel, stride 1, odd kernel, "same" padding.

    A one-channel convolution is memory-bound in both of torch's CPU paths: the native one unfolds each image into
    ``K * K`` rows, and oneDNN computes the input gradient (which a spatial transformer in front of the classifier
    adds to every step) several times slower than its forward pass. On the CPU this module therefore runs
    ``torch.ops.torchstn.single_channel_conv`` (``csrc/single_channel_conv.cpp``), which slides the kernel over each
    zero-padded image directly, when the compiled kernel of :mod:`torchstn.ext` is built (under CPU autocast too,
    in float32, as autocast's float32 ops run: a bfloat16 one-channel convolution has no fast CPU kernel); PyTorch's
    native kernels (``_slow_conv2d_*``) otherwise, or for dtypes the kernel does not take; on other devices, under
    ``torch.compile`` or export, a plain ``nn.Conv2d``. All agree to rounding (the tests compare them in float64);
    ``benchmarks/bench_train.py`` times them. The compiled kernel has first-order gradients only.

    Attributes:
        kernel: ``"auto"`` (the default: the compiled kernel where it can run) or ``"native"`` (torch's native
            kernels even there); not part of the ``state_dict``. Parameters and ``state_dict`` are ``nn.Conv2d``'s.
    """

    kernel: str = "auto"

    def __init__(self, out_channels: int, kernel_size: int) -> None:
        super().__init__(1, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        if self.kernel not in ("auto", "native"):
            raise OptionError(f"SingleChannelConv2d.kernel: expected 'auto' or 'native', got {self.kernel!r}")
        if self.kernel == "auto" and x.dim() == 4 and torch.is_autocast_enabled("cpu"):
            # Under autocast the kernel runs in float32, as autocast's float32 ops do (its input is the image or
            # the warped image, its output one channel per filter): a bfloat16 one-channel convolution has no fast
            # kernel on the CPU, only the native path, several times slower than this one in float32.
            with torch.autocast("cpu", enabled=False):
                x32 = x.float()
                w32 = self.weight.float()
                b32 = self.bias.float() if self.bias is not None else None
                if _kernel_refusal(x32, w32) is None:
                    return _KernelConv2d.apply(x32, w32, b32)  # type: ignore[no-any-return, no-untyped-call]
        elif self.kernel == "auto" and x.dim() == 4 and _kernel_refusal(x, self.weight) is None:
            return _KernelConv2d.apply(x, self.weight, self.bias)  # type: ignore[no-any-return, no-untyped-call]
        padding = (int(self.padding[0]), int(self.padding[1]))
        return _NativeConv2d.apply(x, self.weight, self.bias, padding)  # type: ignore[no-any-return, no-untyped-call]


class _KernelMaxPool2x2(torch.autograd.Function):
    """The 2x2, stride-2 max pooling of ``csrc/max_pool2x2.cpp`` (:mod:`torchstn.ext`), first-order."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out, where = torch.ops.torchstn.max_pool2x2(x.contiguous())
        ctx.save_for_backward(where)
        ctx.size = (int(x.shape[-2]), int(x.shape[-1]))
        ctx.mark_non_differentiable(where)
        return out  # type: ignore[no-any-return]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (where,) = ctx.saved_tensors
        return torch.ops.torchstn.max_pool2x2_backward(grad.contiguous(), where, *ctx.size)  # type: ignore[no-any-return]


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``: 2x2 windows, stride 2, no padding, sizes floored.

    On the CPU, in float32 or float64 with the compiled kernel of :mod:`torchstn.ext` built, it runs
    ``torch.ops.torchstn.max_pool2x2`` (``csrc/max_pool2x2.cpp``), several times faster than ATen's NCHW max pool
    at the classifiers' shapes; the values and the position each gradient goes to are ATen's bit for bit, NaN and
    ties included (the tests compare them). Everywhere else (no build, other devices and dtypes, ``torch.compile``,
    export, tracing) it is ``nn.MaxPool2d(2)``. First-order gradients only on the kernel's path.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or x.dim() != 4
            or x.dtype not in (torch.float32, torch.float64)
            or x.shape[-1] < 2
            or x.shape[-2] < 2
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()  # type: ignore[attr-defined, no-untyped-call]
            or not _ext_available()
        ):
            return super().forward(x)  # type: ignore[no-any-return]
        return _KernelMaxPool2x2.apply(x)  # type: ignore[no-any-return, no-untyped-call]


class STClassifier(nn.Module):
    """A spatial transformer (or several) on the input, optional average pooling, then a classifier.

    Args:
        transformer: A :class:`~torchstn.modules.SpatialTransformer` or a parallel container.
        classifier: Takes the (pooled) transformer output.
        downsample: Average-pooling factor after the transformer (1: none).
    """

    def __init__(self, transformer: nn.Module, classifier: nn.Module, downsample: int = 1) -> None:
        super().__init__()
        self.transformer = transformer
        self.classifier = classifier
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        y = self.transformer(x)
        if self.downsample > 1:
            y = F.avg_pool2d(y, self.downsample)
        return self.classifier(y)  # type: ignore[no-any-return]
