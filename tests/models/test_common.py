"""The pieces every model family shares (torchstn.models.common)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchstn.errors import OptionError
from torchstn.models.common import MaxPool2x2, SingleChannelConv2d


def _needs_kernel() -> None:
    """Skip without the compiled kernel; fail instead under ``TORCHSTN_REQUIRE_EXT=1`` (``make test``)."""
    from torchstn import ext

    if not ext.available():
        if os.environ.get("TORCHSTN_REQUIRE_EXT") == "1":
            pytest.fail("the compiled kernel does not load: build it with `make ext` (python -m torchstn.ext build)")
        pytest.skip("the compiled kernel is not built (python -m torchstn.ext build)")


def _grads(conv: nn.Module, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    out = conv(x)
    params = [p for p in (conv.weight, conv.bias) if p is not None]
    return [out, *torch.autograd.grad((out * w).sum(), (x, *params))]


@pytest.mark.parametrize("kernel", ["auto", "native"])
@pytest.mark.parametrize(
    ("channels", "k", "size"), [(5, 9, (11, 13)), (33, 9, (21, 21)), (3, 3, (1, 17)), (9, 1, (4, 3))]
)
def test_single_channel_conv_equals_conv2d_values_and_gradients(
    kernel: str, channels: int, k: int, size: tuple[int, int], gen: torch.Generator
) -> None:
    """Both CPU paths against nn.Conv2d in float64: output, input, weight and bias gradients (9 output channels
    cover the kernel's channel blocks of 8 and 1, 33 of 8 and 1, 5 of 4 and 1)."""
    fast = SingleChannelConv2d(channels, k).double()
    fast.kernel = kernel
    ref = nn.Conv2d(1, channels, k, padding="same").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(3, 1, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, channels, *size, generator=gen, dtype=torch.float64)
    for a, b in zip(_grads(fast, x, w), _grads(ref, x, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: fast(x), (x[:1, :, :6, :7].detach().requires_grad_(),))


def test_single_channel_conv_runs_the_compiled_kernel_and_agrees_in_float32(gen: torch.Generator) -> None:
    """At a training shape (RTS: 42x42, 32 channels) in float32, the compiled kernel is the path taken and agrees
    with oneDNN's convolution to float32 rounding, with and without the input's gradient and a bias."""
    _needs_kernel()
    fast = SingleChannelConv2d(32, 9)
    ref = nn.Conv2d(1, 32, 9, padding="same")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 1, 42, 42, generator=gen)
    w = torch.randn(5, 32, 42, 42, generator=gen)
    out = fast(x)
    assert type(out.grad_fn).__name__ == "_KernelConv2dBackward"
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    gw, gb = torch.autograd.grad((out * w).sum(), (fast.weight, fast.bias))
    rw, rb = torch.autograd.grad((ref(x) * w).sum(), (ref.weight, ref.bias))
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-3)
    fast.bias = ref.bias = None  # a convolution without bias
    xg = x.clone().requires_grad_()
    for a, b in zip(_grads(fast, xg, w), _grads(ref, xg, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_single_channel_conv_under_autocast_runs_the_kernel_in_float32(gen: torch.Generator) -> None:
    """Under CPU bfloat16 autocast the compiled kernel runs in float32, as autocast's float32 ops do (a bfloat16
    one-channel convolution has only torch's slow native path): a float32 output equal to the plain float32
    convolution's, float32 gradients for the weights and for a bfloat16 input (cast back to it); the next layer
    still autocasts. Without the build, torch's native kernels under autocast."""
    _needs_kernel()
    conv = SingleChannelConv2d(4, 3)
    nxt = nn.Conv2d(4, 2, 3)
    x = torch.randn(2, 1, 9, 8, generator=gen)
    w = torch.randn(2, 4, 9, 8, generator=gen)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    rw, rb = torch.autograd.grad((ref * w).sum(), (conv.weight, conv.bias))
    with torch.autocast("cpu", torch.bfloat16):
        out = conv(x)
        assert out.dtype == torch.float32 and type(out.grad_fn).__name__ == "_KernelConv2dBackward"
        assert nxt(out).dtype == torch.bfloat16
        xb = x.to(torch.bfloat16).requires_grad_()
        gx = torch.autograd.grad((conv(xb) * w).sum(), xb)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gw, gb = torch.autograd.grad((out * w).sum(), (conv.weight, conv.bias))
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-4)
    assert gx.dtype == torch.bfloat16
    ref_x = x.clone().requires_grad_()
    rx = torch.autograd.grad((F.conv2d(ref_x, conv.weight, conv.bias, padding=1) * w).sum(), ref_x)[0]
    torch.testing.assert_close(gx.float(), rx, rtol=1e-2, atol=1e-2)


def test_single_channel_conv_under_autocast_without_the_build_takes_native_kernels(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchstn.models import common

    monkeypatch.setattr(common, "_ext_available", lambda: False)
    conv = SingleChannelConv2d(4, 3)
    x = torch.randn(2, 1, 9, 8, generator=gen)
    with torch.autocast("cpu", torch.bfloat16):
        out = conv(x)
    assert type(out.grad_fn).__name__ == "_NativeConv2dBackward"
    torch.testing.assert_close(out.float(), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=3e-2, atol=3e-2)


def test_single_channel_conv_kernel_is_deterministic_and_thread_count_only_rounds(gen: torch.Generator) -> None:
    """The same call twice gives the same bits; one thread and two agree to rounding (the weight gradient's partial
    sums are split by thread)."""
    _needs_kernel()
    conv = SingleChannelConv2d(8, 9).double()
    x = torch.rand(6, 1, 15, 19, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, 8, 15, 19, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(conv, x, w)
        assert all(torch.equal(a, b) for a, b in zip(one, _grads(conv, x, w), strict=True))
        torch.set_num_threads(2)
        two = _grads(conv, x, w)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_single_channel_conv_falls_back_where_the_kernel_cannot_run(gen: torch.Generator) -> None:
    """Non-contiguous input takes the kernel (made contiguous); bfloat16 and ``kernel="native"`` take torch's
    native kernels; a bad ``kernel`` names the attribute."""
    conv = SingleChannelConv2d(4, 3)
    x = torch.randn(2, 1, 9, 16, generator=gen)[..., ::2]  # a strided view
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    out = conv.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == "_NativeConv2dBackward"
    conv.kernel = "fast"
    with pytest.raises(OptionError, match=r"SingleChannelConv2d\.kernel: expected 'auto' or 'native', got 'fast'"):
        conv(x)


def _with_specials(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small integers (many ties in a window) with a tenth each of NaN, -inf and +inf."""
    x = torch.randint(-2, 3, x.shape, generator=gen).to(x.dtype)
    flat = x.view(-1)
    for value in (float("nan"), float("-inf"), float("inf")):
        flat[torch.randperm(flat.numel(), generator=gen)[: flat.numel() // 10]] = value
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 3, 42, 42), (2, 3, 21, 21), (1, 2, 5, 35), (3, 1, 2, 2), (2, 2, 7, 16)])
@pytest.mark.parametrize("special", [False, True], ids=["normal", "ties-nan-inf"])
def test_max_pool2x2_is_atens_max_pool_bit_for_bit(
    dtype: torch.dtype, shape: tuple[int, ...], special: bool, gen: torch.Generator
) -> None:
    """Values and input gradients equal ``F.max_pool2d(x, 2)``'s exactly, odd sizes (floored), ties, NaN and
    infinities included: the same element wins every window (lane widths of 8 and scalar tails both covered)."""
    _needs_kernel()
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    x = _with_specials(x, gen) if special else x
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = MaxPool2x2()(ours_x), F.max_pool2d(ref_x, 2)
    assert type(ours.grad_fn).__name__ == "_KernelMaxPool2x2Backward"
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.nan_to_num(0.5), ref.nan_to_num(0.5))
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(ours_x.grad, ref_x.grad)  # type: ignore[arg-type]


def test_max_pool2x2_falls_back_to_nn_max_pool2d(gen: torch.Generator) -> None:
    """bfloat16, a 3D input and a 1-pixel-high input take nn.MaxPool2d's own path (which raises or pools as it
    does); the module is an nn.MaxPool2d(2) in every other respect."""
    pool = MaxPool2x2()
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
    x = torch.randn(2, 1, 6, 6, generator=gen)
    assert type(pool(x.to(torch.bfloat16).requires_grad_()).grad_fn).__name__ != "_KernelMaxPool2x2Backward"
    torch.testing.assert_close(pool(x[0]), F.max_pool2d(x[0], 2))
    with pytest.raises(RuntimeError):
        pool(x[:, :, :1])  # too small for a 2x2 window, as nn.MaxPool2d says


def test_generic_pieces_live_in_common_and_stay_importable() -> None:
    import torchstn.models as models
    from torchstn.models import common, mnist

    for name in ("STClassifier", "SingleChannelConv2d", "make_transform", "parameter_count"):
        assert getattr(models, name) is getattr(common, name) is getattr(mnist, name)
        assert getattr(common, name).__module__ == "torchstn.models.common"


def test_make_transform_names_the_choices() -> None:
    from torchstn.errors import OptionError
    from torchstn.models import make_transform

    with pytest.raises(OptionError, match="transform: expected one of aff, proj, tps, sim, att, got 'rot'"):
        make_transform("rot")
