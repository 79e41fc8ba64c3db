"""fastdl.ops.depthwise_conv2d and fastdl.nn.DepthwiseConv2d: parity with
F.conv2d(groups=C), forward and all gradients, over kernel sizes, strides, paddings,
dilations, multipliers, layouts and odd shapes; gradcheck, opcheck, layer drop-in
behaviour, bad input."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl
from conftest import TOLERANCES
from parity import assert_close, assert_same_layout, outputs_and_grads

OP = torch.ops.fastdl.depthwise_conv2d.default
BACKWARD_OP = torch.ops.fastdl.depthwise_conv2d_backward.default


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _output_exists(h, w, kernel, stride, padding, dilation):
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    return h + 2 * ph - dh * (kh - 1) >= 1 and w + 2 * pw - dw * (kw - 1) >= 1


def _configs():
    """(batch, channels, multiplier, H, W, kernel, stride, padding, dilation)."""
    explicit = [
        (2, 5, 1, 13, 11, 3, 1, 1, 1),
        (2, 21, 1, 13, 11, 3, 2, 1, 1),  # MobileNet downsampling, channels not a multiple of 16
        (1, 48, 1, 9, 10, 5, 1, 2, 1),
        (1, 37, 1, 12, 12, 7, 1, 3, 1),  # ConvNeXt
        (1, 16, 1, 12, 12, 7, 2, 3, 1),
        (2, 3, 2, 8, 9, 3, 1, 1, 1),  # depth multiplier
        (1, 4, 3, 7, 7, 1, 2, 0, 1),  # 1x1 kernel, stride 2
        (1, 6, 1, 1, 1, 3, 1, 1, 1),  # 1x1 image
        (1, 6, 1, 1, 1, 1, 1, 0, 1),
        (1, 17, 1, 13, 11, 3, 1, 0, 3),  # dilation
        (1, 8, 1, 30, 30, 3, 1, 6, 6),  # ASPP-style dilation
        (1, 5, 1, 13, 11, (3, 5), (1, 2), (1, 2), 1),  # non-square everything
        (1, 5, 1, 10, 9, (5, 2), (2, 1), (0, 1), (1, 2)),
        (1, 5, 1, 11, 11, 4, 3, 0, 2),  # even kernel, stride 3
        (1, 16, 1, 8, 8, 2, 1, 5, 1),  # padding beyond the kernel's reach
        (3, 24, 1, 15, 17, 9, 1, 4, 1),  # large kernel (RepLKNet-style)
        (1, 19, 1, 12, 20, 31, 1, 15, 1),  # a 31x31 kernel larger than the image
        (2, 20, 1, 9, 26, (1, 7), (2, 1), (0, 3), (2, 1)),  # 1x7, row stride and dilation 2
        # Images above 32x32 pixels: channels last works on the input in place
        # instead of through a padded copy.
        (1, 19, 1, 40, 33, 3, 1, 1, 1),
        (1, 16, 1, 36, 36, 7, 2, 3, 1),
        # Register tiles (stride 1 or 2, 3x3/5x5/7x7): tiles 7 or 14 pixels wide, the
        # last one overlapping (width 10, 21), narrower images one pixel at a time
        # (width 4), padding rows wholly outside the image (3x3, padding 2), stride-2
        # tile origins with even and odd padding, channel tails, more images than
        # weight-gradient tasks (batch 40).
        (40, 17, 1, 7, 10, 3, 1, 1, 1),
        (1, 20, 1, 5, 6, 3, 1, 0, 1),
        (1, 32, 1, 9, 9, 3, 1, 2, 1),
        (3, 16, 1, 14, 14, 3, 2, 0, 1),
        (2, 33, 1, 15, 15, 5, 2, 2, 1),
        (1, 18, 1, 16, 23, 5, 1, 1, 1),
        (1, 40, 1, 29, 30, 7, 2, 3, 1),
        (2, 7, 1, 8, 35, 7, 1, 3, 1),
    ]
    rng = random.Random(0)
    sampled = []
    while len(sampled) < 24:
        kernel = (rng.choice([1, 2, 3, 4, 5, 7]), rng.choice([1, 2, 3, 5, 7]))
        stride = (rng.choice([1, 2, 3]), rng.choice([1, 2, 3]))
        padding = (rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 2, 4]))
        dilation = (rng.choice([1, 2, 3]), rng.choice([1, 2]))
        h, w = rng.randint(1, 14), rng.randint(1, 14)
        if _output_exists(h, w, kernel, stride, padding, dilation):
            sampled.append((rng.randint(1, 2), rng.choice([1, 3, 16, 19]), rng.choice([1, 1, 2]), h, w,
                            kernel, stride, padding, dilation))
    return explicit + sampled


CONFIGS = _configs()


def _make(config, dtype, device, channels_last, bias=True, seed=0):
    n, c, m, h, w, kernel, stride, padding, dilation = config
    g = torch.Generator().manual_seed(seed)
    kh, kw = _pair(kernel)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(device, dtype)
    weight = torch.randn(c * m, 1, kh, kw, generator=g, dtype=torch.float64).to(device, dtype)
    b = torch.randn(c * m, generator=g, dtype=torch.float64).to(device, dtype) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation)


def exact_cudnn():
    """The CUDA reference in full float32: cuDNN may otherwise pick TF32 engines."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


def _grads(fn, x, weight, bias, grad_out):
    """(fn's output, its gradients) for x, weight and bias (left out when None)."""
    out, *grads = outputs_and_grads(fn, [t for t in (x, weight, bias) if t is not None], grad_out)
    return out, grads


def _tolerance(dtype, reduction_size):
    # Gradients of the weight sum over N * out_H * out_W products: float32 rounding
    # grows with that count.
    tol = dict(TOLERANCES[dtype])
    if dtype == torch.float32:
        tol["atol"] = tol["atol"] * max(1.0, reduction_size ** 0.5)
    return tol


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_matches_conv2d_forward_and_backward(device, dtype, channels_last, config):
    x, weight, bias, args = _make(config, dtype, device, channels_last)
    groups = x.shape[1]
    ref_out = F.conv2d(x, weight, bias, groups=groups, **args)
    grad_out = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, grads = _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), x, weight, bias, grad_out)
    with exact_cudnn():
        ref_out, ref_grads = _grads(lambda x, w, b: F.conv2d(x, w, b, groups=groups, **args), x, weight, bias, grad_out)
    # float32 is checked against the float64 result of the same inputs, so that only our
    # rounding counts: oneDNN's own float32 weight gradient on an AMD Zen 3 (AVX2) was 5x
    # further from it than ours (7.9e-5 vs 1.5e-5 at config 15) and failed the test.
    exact_out, exact_grads = ref_out, ref_grads
    if dtype != torch.float64:
        wide = [t.double() for t in (x, weight, bias, grad_out)]
        exact_out, exact_grads = _grads(lambda x, w, b: F.conv2d(x, w, b, groups=groups, **args), *wide)
    tol = _tolerance(dtype, ref_out[:, :1].numel())
    assert_close(out, exact_out.to(dtype), **tol)
    for name, actual, expected in zip(("input", "weight", "bias"), grads, exact_grads):
        assert_close(actual, expected.to(dtype), **tol, msg=lambda m, name=name: f"grad {name}: {m}")
    # The output (and grad_input) take the memory format PyTorch's conv gives, except
    # that PyTorch's CUDA conv drops channels_last for float64; fastdl keeps it.
    if x.is_cuda and dtype == torch.float64:
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return
    assert_same_layout(out, ref_out)
    assert_same_layout(grads[0], ref_grads[0])


@pytest.mark.parametrize("channels", [5, 16])
def test_large_nchw_plane(device, channels):
    # Planes above 128x128 pixels, or fewer than 16 channels, take the plane kernels
    # rather than channel blocks; float64, since float32 sums over 16k products
    # differ from PyTorch's by their own rounding.
    x, weight, bias, args = _make((1, channels, 1, 130, 129, 3, 1, 1, 1), torch.float64, device, False)
    grad_out = torch.randn(1, channels, 130, 129, dtype=torch.float64, device=device)
    out, grads = _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), x, weight, bias, grad_out)
    ref_out, ref_grads = _grads(lambda x, w, b: F.conv2d(x, w, b, groups=channels, **args), x, weight, bias, grad_out)
    assert_close(out, ref_out)
    for actual, expected in zip(grads, ref_grads):
        assert_close(actual, expected)


@pytest.mark.parametrize("config, channels_last", [
    ((2, 21, 1, 13, 11, 3, 2, 1, 1), False),  # NCHW channel blocks, the second one partial
    ((1, 5, 1, 130, 129, 3, 1, 1, 1), False),  # NCHW plane kernels
    ((2, 6, 1, 7, 7, 4, 1, 2, 1), True),  # channels last without register tiles: padded copy
], ids=["channel_blocks", "planes", "padded_copy"])
def test_results_do_not_depend_on_scratch_contents(device, config, channels_last):
    """The CPU kernels reuse per-thread scratch between calls, uninitialised; under test
    it is filled with NaN bytes whenever it is handed out (conftest). The output and
    gradients with and without that filling are identical, bit for bit."""
    if device.type != "cpu":
        pytest.skip("per-thread scratch is CPU only")
    x, weight, bias, args = _make(config, torch.float32, device, channels_last)
    grad_out = torch.randn_like(fastdl.ops.depthwise_conv2d(x, weight, bias, **args))
    run = lambda: _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args),
                         x, weight, bias, grad_out)
    poisoned_out, poisoned_grads = run()
    fastdl._C.set_scratch_poison(False)
    try:
        clean_out, clean_grads = run()
    finally:
        fastdl._C.set_scratch_poison(True)
    for poisoned, clean in zip([poisoned_out, *poisoned_grads], [clean_out, *clean_grads]):
        assert torch.equal(poisoned, clean)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_without_bias(device, channels_last):
    x, weight, _, args = _make(CONFIGS[1], torch.float64, device, channels_last, bias=False)
    out, grads = _grads(lambda x, w: fastdl.ops.depthwise_conv2d(x, w, None, **args), x, weight, None,
                        torch.ones(F.conv2d(x, weight, groups=x.shape[1], **args).shape, dtype=x.dtype, device=device))
    ref, ref_grads = _grads(lambda x, w: F.conv2d(x, w, groups=x.shape[1], **args), x, weight, None, torch.ones_like(out))
    assert_close(out, ref)
    for actual, expected in zip(grads, ref_grads):
        assert_close(actual, expected)


def test_empty_batch(device):
    x = torch.empty(0, 4, 8, 8, device=device, requires_grad=True)
    weight = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    out = fastdl.ops.depthwise_conv2d(x, weight, None, 1, 1, 1)
    assert out.shape == (0, 8, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros_like(weight))


def test_non_contiguous_input(device):
    base = torch.randn(2, 6, 12, 20, dtype=torch.float64, device=device)
    x = base[:, ::2, :, 3:17]  # strided in C and W
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, device=device)
    assert not x.is_contiguous()
    assert_close(fastdl.ops.depthwise_conv2d(x, weight, None, 1, 1, 1), F.conv2d(x, weight, None, 1, 1, 1, groups=3))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_row_runs_cover_every_row(threads, stride):
    """The channels-last tiles run in near-equal runs of rows per thread count, which
    may end inside one image and go on in the next (batch 3): every output row,
    input-gradient row and weight-gradient term is computed, once, at heights 1 to 40."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for batch in (1, 3):
            for h in (1, 2, 4, 5, 7, 13, 17, 40):
                x, weight, bias, args = _make((batch, 9, 1, h, 12, 3, stride, 1, 1), torch.float64, "cpu",
                                              channels_last=True)
                ref_out = F.conv2d(x, weight, bias, groups=9, **args)
                grad_out = torch.randn_like(ref_out)
                out, grads = _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), x, weight,
                                    bias, grad_out)
                _, ref_grads = _grads(lambda x, w, b: F.conv2d(x, w, b, groups=9, **args), x, weight, bias,
                                      grad_out)
                assert_close(out, ref_out, msg=lambda m, h=h: f"height {h}: {m}")
                for actual, expected in zip(grads, ref_grads):
                    assert_close(actual, expected, msg=lambda m, h=h: f"height {h}: {m}")
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("config", [(4, 19, 1, 20, 20, 3, 1, 1, 1), (40, 17, 1, 9, 9, 3, 2, 1, 1),
                                    (2, 24, 1, 16, 16, 7, 1, 3, 1), (3, 5, 1, 11, 11, 4, 3, 0, 2)])
def test_weight_gradient_is_deterministic_across_thread_counts(device, config):
    x, weight, bias, args = _make(config, torch.float32, device, False)
    grad_out = torch.ones_like(F.conv2d(x, weight, bias, groups=x.shape[1], **args))
    results = []
    previous = torch.get_num_threads()
    try:
        for threads, channels_last in ((1, False), (2, False), (1, True), (2, True)):
            torch.set_num_threads(threads)
            xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            _, grads = _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), xi, weight, bias,
                              grad_out)
            results.append(grads)
    finally:
        torch.set_num_threads(previous)
    for layout in (0, 2):
        for a, b in zip(results[layout], results[layout + 1]):
            assert torch.equal(a, b)


def test_gradcheck(device):
    for channels_last in (False, True):
        for config in [(1, 2, 2, 5, 6, 3, 2, 1, 1), (2, 3, 1, 6, 5, (2, 3), 1, (1, 0), (2, 1))]:
            x, weight, bias, args = _make(config, torch.float64, device, channels_last)
            inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
            assert torch.autograd.gradcheck(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), inputs)


def test_gradgradcheck(device):
    """Second derivatives (a gradient penalty): the backward op's own formula, which runs
    the forward and backward ops again (fastdl/ops/_utils.py:
    register_conv_derivatives); and forward mode."""
    for channels_last in (False, True):
        config = (2, 3, 2, 6, 5, (2, 3), 2, (1, 0), (2, 1))
        x, weight, bias, args = _make(config, torch.float64, device, channels_last)
        inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradgradcheck(
            lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), inputs)
        assert torch.autograd.gradcheck(  # forward mode too (the ops' jvp rules)
            lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), inputs,
            check_forward_ad=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck(device, channels_last):
    x, weight, bias, args = _make(CONFIGS[5], torch.float64, device, channels_last)
    conv_args = [list(_pair(args[k])) for k in ("stride", "padding", "dilation")]
    torch.library.opcheck(OP, (x, weight, bias, *conv_args))
    torch.library.opcheck(OP, (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), *conv_args))
    grad_out = OP(x, weight, bias, *conv_args).detach().clone()
    for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True]):
        torch.library.opcheck(BACKWARD_OP, (grad_out, x.detach(), weight.detach(), *conv_args, mask))
    # differentiable itself (second derivatives)
    torch.library.opcheck(BACKWARD_OP, (grad_out.requires_grad_(), x, weight, *conv_args,
                                        [True, True, True]))


@pytest.mark.parametrize("x_cl, w_cl", [(False, True), (True, False), (True, True)],
                         ids=["weight-cl", "input-cl", "both-cl"])
def test_layout_follows_input_or_weight(device, x_cl, w_cl):
    """As F.conv2d: the output and grad_input are channels_last when the input or the
    weight is (a model moved to channels_last and fed an NCHW input), and the fake kernels
    say so too (opcheck compares their strides with the real ones). float32: PyTorch's
    rule is its oneDNN and cuDNN paths'; its float64 paths differ (on CPU a dilated float64
    convolution ignores the weight's layout, on CUDA a float64 one drops channels_last).
    fastdl takes the same rule for every dtype."""
    dtype = torch.float32
    x, weight, bias, args = _make(CONFIGS[5], dtype, device, x_cl)
    if w_cl:
        weight = weight.to(memory_format=torch.channels_last)  # as module.to() does it
    groups = x.shape[1]
    grad_out = torch.randn(F.conv2d(x, weight, bias, groups=groups, **args).shape,
                           dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, grads = _grads(lambda x, w, b: fastdl.ops.depthwise_conv2d(x, w, b, **args), x, weight, bias, grad_out)
    with exact_cudnn():
        ref_out, ref_grads = _grads(lambda x, w, b: F.conv2d(x, w, b, groups=groups, **args), x, weight, bias, grad_out)
    tol = _tolerance(dtype, ref_out[:, :1].numel())
    assert_close(out, ref_out, **tol)
    assert_close(grads[0], ref_grads[0], **tol)
    assert ref_out.is_contiguous(memory_format=torch.channels_last) and not ref_out.is_contiguous()
    assert_same_layout(out, ref_out)
    assert_same_layout(grads[0], ref_grads[0])
    conv_args = [list(_pair(args[k])) for k in ("stride", "padding", "dilation")]
    torch.library.opcheck(OP, (x, weight, bias, *conv_args))
    torch.library.opcheck(BACKWARD_OP, (grad_out, x, weight, *conv_args, [True, True, True]))


# ---------------------------------------------------------------- the nn layer


LAYER_CASES = [
    dict(in_channels=8, kernel_size=3, stride=1, padding=1),
    dict(in_channels=8, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=6, kernel_size=5, padding="same", depth_multiplier=2),
    dict(in_channels=6, kernel_size=4, padding="same", dilation=1),  # even kernel: asymmetric
    dict(in_channels=6, kernel_size=(3, 4), padding="same", dilation=(2, 3)),
    dict(in_channels=6, kernel_size=7, padding="valid"),
    dict(in_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
    dict(in_channels=6, kernel_size=3, padding=(1, 2), padding_mode="circular", depth_multiplier=3),
]


def _torch_twin(kwargs):
    kwargs = dict(kwargs)
    channels, multiplier = kwargs.pop("in_channels"), kwargs.pop("depth_multiplier", 1)
    return nn.Conv2d(channels, channels * multiplier, groups=channels, **kwargs)


@pytest.mark.parametrize("kwargs", LAYER_CASES, ids=[str(i) for i in range(len(LAYER_CASES))])
def test_layer_is_a_drop_in_for_conv2d(device, kwargs):
    torch.manual_seed(0)
    reference = _torch_twin(kwargs).to(device)
    layer = fastdl.nn.DepthwiseConv2d(**kwargs).to(device)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(2, kwargs["in_channels"], 13, 12, device=device, requires_grad=True)
    out, ref = layer(x), reference(x)
    assert_close(out, ref)
    out.backward(torch.ones_like(out))
    grads = (x.grad.clone(), layer.weight.grad)
    x.grad = None
    ref.backward(torch.ones_like(ref))
    assert_close(grads[0], x.grad)
    assert_close(grads[1], reference.weight.grad, atol=1e-4, rtol=1e-4)
    # And the other direction.
    reference.load_state_dict(layer.state_dict())


def test_layer_accepts_unbatched_input_and_keeps_channels_last(device):
    layer = fastdl.nn.DepthwiseConv2d(4, 3, padding=1).to(device)
    x = torch.randn(4, 9, 9, device=device)
    assert_close(layer(x), F.conv2d(x[None], layer.weight, layer.bias, padding=1, groups=4)[0])
    x_cl = torch.randn(2, 4, 9, 9, device=device).contiguous(memory_format=torch.channels_last)
    assert layer(x_cl).is_contiguous(memory_format=torch.channels_last)


def test_layer_from_conv2d_and_repr():
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6)
    layer = fastdl.nn.DepthwiseConv2d.from_conv2d(conv)
    assert layer.weight is conv.weight and layer.depth_multiplier == 2
    assert isinstance(layer, nn.Conv2d)
    x = torch.randn(1, 6, 10, 10)
    assert_close(layer(x), conv(x))
    assert repr(layer) == ("DepthwiseConv2d(6, 12, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
                           "groups=6, depth_multiplier=2)")
    with pytest.raises(ValueError, match="groups == in_channels"):
        fastdl.nn.DepthwiseConv2d.from_conv2d(nn.Conv2d(6, 12, 3))
    with pytest.raises(ValueError, match="depth_multiplier must be a positive int, got 0"):
        fastdl.nn.DepthwiseConv2d(6, 3, depth_multiplier=0)


def test_layer_under_torch_compile(device):
    layer = fastdl.nn.DepthwiseConv2d(8, 3, padding=1, depth_multiplier=2).to(device)
    x = torch.randn(2, 8, 10, 10, device=device, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert_close(out, layer(x))
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_layer_under_inductor_cpu():
    layer = fastdl.nn.DepthwiseConv2d(8, 3, padding=1)
    compiled = torch.compile(lambda x: torch.relu(layer(x)) * 2, fullgraph=True)
    x = torch.randn(2, 8, 10, 10)
    assert_close(compiled(x), torch.relu(layer(x)) * 2)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision(device, dtype, channels_last):
    """float16 and bfloat16 (on CPU through float32 copies): forward and the three
    gradients against F.conv2d in float32 on the same rounded values, in the input's
    dtype and memory format."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 11, 9, generator=g).to(device, dtype)
    w = torch.randn(12, 1, 3, 3, generator=g).to(device, dtype)
    b = torch.randn(12, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 12, 6, 9, generator=g).to(device, dtype)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = fastdl.ops.depthwise_conv2d(*leaves, (2, 1), 1, 1)
    grads = torch.autograd.grad(out, leaves, grad)
    wide = [t.detach().float().requires_grad_() for t in (x, w, b)]
    with exact_cudnn():
        expected = F.conv2d(*wide, (2, 1), 1, 1, 6)
        expected_grads = torch.autograd.grad(expected, wide, grad.float())
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    assert_close(out.float(), expected, **TOLERANCES[dtype])
    for actual, reference, leaf in zip(grads, expected_grads, leaves):
        assert actual.dtype == dtype and actual.shape == leaf.shape
        assert_close(actual.float(), reference, rtol=2 * TOLERANCES[dtype]["rtol"], atol=0.1)


def _valid():
    return torch.randn(2, 4, 8, 8), torch.randn(8, 1, 3, 3), torch.randn(8)


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda x, w, b: (x[0], w, b), ValueError,
         r"fastdl.depthwise_conv2d: input must have shape \(N, C, H, W\), got \(4, 8, 8\)"),
        (lambda x, w, b: (x, torch.randn(4, 2, 3, 3), b), ValueError,
         r"weight must have shape \(C \* multiplier, 1, kH, kW\), got \(4, 2, 3, 3\)"),
        (lambda x, w, b: (x, torch.randn(6, 1, 3, 3), torch.randn(6)), ValueError,
         r"weight must have shape \(C \* multiplier, 1, kH, kW\) with C = 4 input channels, got \(6, 1, 3, 3\)"),
        (lambda x, w, b: (x[:, :0], w, b), ValueError,
         r"input must have at least one channel, got \(2, 0, 8, 8\)"),
        (lambda x, w, b: (x[:, :, :0], w, b), ValueError,
         r"input must have a non-empty image, got \(2, 4, 0, 8\)"),
        (lambda x, w, b: (x, torch.randn(8, 1, 0, 3), b), ValueError,
         r"weight's kernel size must be at least 1x1, got \(8, 1, 0, 3\)"),
        (lambda x, w, b: (x, w, b[:3]), ValueError, r"bias must have shape \(C \* multiplier,\), got \(3,\)"),
        (lambda x, w, b: (x, w.double(), b), TypeError,
         r"input and weight must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x, w, b.double()), TypeError,
         r"input and bias must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x.long(), w.long(), b.long()), TypeError,
         r"input must be .*torch.float32.* on CPU, got torch.int64"),
        (lambda x, w, b: (x[:, :, :1, :1], w, b), ValueError,
         r"input of spatial size \(1, 1\) with padding \(0, 0\) is too small for kernel \(3, 3\) with dilation \(1, 1\)"),
    ],
)
def test_bad_input(mutate, error, message):
    x, w, b = mutate(*_valid())
    with pytest.raises(error, match=message):
        fastdl.ops.depthwise_conv2d(x, w, b, 1, 0, 1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(stride=0), ValueError, r"fastdl.depthwise_conv2d: stride must be >= 1, got \(0, 0\)"),
        (dict(stride=(1, 0)), ValueError, r"stride must be >= 1, got \(1, 0\)"),
        (dict(padding=-1), ValueError, r"padding must be >= 0, got \(-1, -1\)"),
        (dict(dilation=(0, 1)), ValueError, r"dilation must be >= 1, got \(0, 1\)"),
        (dict(stride=(1, 1, 1)), ValueError, r"stride must be an int or a pair of ints, got \(1, 1, 1\)"),
        (dict(padding="same"), ValueError, r"padding must be an int or a pair of ints, got 'same'"),
    ],
)
def test_bad_conv_arguments(kwargs, error, message):
    x, w, b = _valid()
    args = dict(stride=1, padding=0, dilation=1) | kwargs
    with pytest.raises(error, match=message):
        fastdl.ops.depthwise_conv2d(x, w, b, **args)


def test_bad_device():
    x, w, b = _valid()
    with pytest.raises(RuntimeError, match="fastdl.depthwise_conv2d: input and weight must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.depthwise_conv2d(x, w.to("meta"), b)


def test_backward_op_checks_grad_output():
    x, w, _ = _valid()
    with pytest.raises(ValueError, match=r"fastdl.depthwise_conv2d_backward: grad_output must have shape "
                       r"\(N, C \* multiplier, out_H, out_W\) of the forward output, got \(2, 8, 5, 5\)"):
        BACKWARD_OP(torch.randn(2, 8, 5, 5), x, w, [1, 1], [0, 0], [1, 1], [True, True, False])
    with pytest.raises(TypeError, match="input and grad_output must have the same dtype"):
        BACKWARD_OP(torch.randn(2, 8, 6, 6).double(), x, w, [1, 1], [0, 0], [1, 1], [True, True, False])
