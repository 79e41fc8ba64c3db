"""Binary (XNOR) convolution: exact equality with F.conv2d of the +-1 tensors over
channel counts around word sizes, odd images, stride/padding/dilation/groups and
layouts; sign packing; the packed entry point (scale, bias, dtype, layout, padding
bits); straight-through gradients against a float reference; opcheck; the layers
(drop-in state_dict, pack(), scales, torch.compile); bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import fastdl
from fastdl.nn import BinaryLinear, XNORConv2d

from conftest import TOLERANCES

OP = torch.ops.fastdl.xnor_conv2d.default
PACKED_OP = torch.ops.fastdl.xnor_conv2d_packed.default
PACK_OP = torch.ops.fastdl.pack_signs.default


def signs(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class SteSign(torch.autograd.Function):
    """The float reference of the straight-through sign: +-1 forward, gradient
    passed where |x| <= 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return signs(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.where(x.abs() <= 1, grad, 0.0)


def reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv2d of the +-1 tensors in float64: exact for any size we test."""
    return F.conv2d(signs(x.double()), signs(w.double()), None if b is None else b.double(),
                    stride, padding, dilation, groups)


def unpack(bits, channels, groups=1):
    """Packed words -> (N, C, H, W) of +-1 (float64), and whether every padding bit is 0."""
    n, h, w, words = bits.shape
    group_channels, group_words = channels // groups, words // groups
    shifts = torch.arange(64, device=bits.device)
    flags = (bits.unsqueeze(-1) >> shifts) & 1  # (N, H, W, words, 64)
    flags = flags.reshape(n, h, w, groups, group_words * 64)
    padding_clear = bool((flags[..., group_channels:] == 0).all())
    flags = flags[..., :group_channels].reshape(n, h, w, channels)
    return (1.0 - 2.0 * flags.double()).permute(0, 3, 1, 2), padding_clear


GRID = [
    # (N, C, H, W, O, kernel, stride, padding, dilation, groups)
    (2, 1, 5, 5, 3, 1, 1, 0, 1, 1),
    (1, 3, 7, 9, 4, 3, 1, 1, 1, 1),
    (2, 63, 6, 5, 5, 3, 2, 1, 1, 1),
    (1, 64, 5, 7, 9, (2, 5), 1, (1, 2), 1, 1),
    (3, 65, 9, 8, 6, 3, (2, 1), 2, 2, 1),
    (1, 130, 4, 4, 17, 3, 1, 3, 1, 1),
    (2, 70, 7, 7, 8, 3, 1, 1, 1, 2),
    (1, 12, 11, 6, 12, (3, 1), 2, (0, 1), (1, 3), 3),
    (2, 200, 15, 15, 70, 3, 1, 1, 1, 1),  # several pixel tiles and channel chunks
    (1, 256, 3, 3, 33, 5, 1, 2, 1, 1),  # every output a border pixel
    # Near-equal pixel tiles: 49 pixels past a 48-pixel tile (24 + 25), 169 past 72 (3 tiles)
    (1, 512, 7, 7, 16, 3, 1, 1, 1, 1),
    (1, 256, 13, 13, 8, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("config", GRID, ids=lambda c: "x".join(map(str, c[:5])))
def test_equals_conv2d_of_signs_exactly(device, config, channels_last):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = config
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, device=device)
    weight = torch.randn(o, c // groups, kh, kw, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = fastdl.ops.xnor_conv2d(x, weight, None, stride, padding, dilation, groups)
    expected = reference(x, weight, None, stride, padding, dilation, groups)
    assert out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    assert torch.equal(out.double(), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    torch.manual_seed(1)
    x = torch.randn(2, 40, 6, 6, device=device, dtype=dtype)
    weight = torch.randn(8, 40, 3, 3, device=device, dtype=dtype)
    bias = torch.randn(8, device=device, dtype=dtype)
    out = fastdl.ops.xnor_conv2d(x, weight, bias, 1, 1)
    assert out.dtype == dtype
    assert_close(out, reference(x, weight, bias, 1, 1).to(dtype), **TOLERANCES[dtype])
    assert torch.equal(fastdl.ops.xnor_conv2d(x, weight, None, 1, 1).double(),
                       reference(x, weight, None, 1, 1))


def test_bias(device):
    x, weight, bias = (torch.randn(2, 20, 5, 5, device=device), torch.randn(6, 20, 3, 3, device=device),
                       torch.randn(6, device=device))
    assert_close(fastdl.ops.xnor_conv2d(x, weight, bias, 1, 1),
                 reference(x, weight, bias, 1, 1).float(), **TOLERANCES[torch.float32])


def test_zero_and_nan_signs(device):
    """sign(0) = sign(-0.0) = +1 and NaN reads as -1, as torch.where(x >= 0, 1, -1)."""
    x = torch.tensor([0.0, -0.0, float("nan"), -1.0, 2.0, float("inf"), -float("inf")],
                     device=device).view(1, 7, 1, 1)
    weight = torch.ones(1, 7, 1, 1, device=device)
    bits, _ = unpack(fastdl.ops.pack_signs(x), 7)
    assert bits.flatten().tolist() == [1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0]
    assert fastdl.ops.xnor_conv2d(x, weight).item() == 1.0


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("channels, groups", [(1, 1), (64, 1), (65, 1), (130, 2), (9, 3), (200, 4)])
def test_pack_signs_round_trips(device, channels, groups, channels_last):
    x = torch.randn(2, channels, 3, 5, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    bits = fastdl.ops.pack_signs(x, groups)
    words = groups * ((channels // groups + 63) // 64)
    assert bits.shape == (2, 3, 5, words) and bits.dtype == torch.int64
    unpacked, padding_clear = unpack(bits, channels, groups)
    assert torch.equal(unpacked, signs(x.double()))
    assert padding_clear


def test_pack_signs_non_contiguous_and_16_bit(device):
    x = torch.randn(2, 70, 6, 8, device=device)[:, ::2, :, 1::2]
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        unpacked, _ = unpack(fastdl.ops.pack_signs(x.to(dtype)), 35)
        assert torch.equal(unpacked, signs(x.to(dtype).double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_packed_entry_point_scale_bias_dtype_layout(device, dtype, channels_last):
    torch.manual_seed(2)
    x, weight = torch.randn(2, 48, 7, 7, device=device), torch.randn(10, 24, 3, 3, device=device)
    scale, bias = torch.rand(10, device=device), torch.randn(10, device=device)
    out = fastdl.ops.xnor_conv2d_packed(
        fastdl.ops.pack_signs(x, 2), fastdl.ops.pack_signs(weight), 48, scale, bias, stride=2,
        padding=1, groups=2, dtype=dtype, channels_last=channels_last)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    expected = reference(x, weight, None, 2, 1, 1, 2) * scale.double().view(1, -1, 1, 1) \
        + bias.double().view(1, -1, 1, 1)
    assert_close(out, expected.to(dtype), **TOLERANCES[dtype])


def test_packed_entry_point_ignores_padding_bits(device):
    """Bits past the channel count (in input or weight) do not change the result."""
    x, weight = torch.randn(2, 70, 5, 5, device=device), torch.randn(6, 70, 3, 3, device=device)
    x_bits, w_bits = fastdl.ops.pack_signs(x), fastdl.ops.pack_signs(weight)
    clean = fastdl.ops.xnor_conv2d_packed(x_bits, w_bits, 70, padding=1)
    garbage = torch.tensor(-1 << 6, device=device)  # bits 6..63 of the last word: past channel 69
    dirty_x, dirty_w = x_bits.clone(), w_bits.clone()
    dirty_x[..., -1] |= garbage
    dirty_w[..., -1] |= garbage
    assert torch.equal(fastdl.ops.xnor_conv2d_packed(dirty_x, dirty_w, 70, padding=1), clean)
    assert torch.equal(dirty_w[..., -1] | garbage, dirty_w[..., -1])  # the input was not cleaned in place
    assert torch.equal(clean.double(), reference(x, weight, None, 1, 1))


def test_empty_batch(device):
    out = fastdl.ops.xnor_conv2d(torch.randn(0, 8, 5, 5, device=device),
                                 torch.randn(4, 8, 3, 3, device=device))
    assert out.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("with_bias", [True, False])
def test_straight_through_gradients_match_float_reference(device, with_bias):
    torch.manual_seed(3)
    x = (torch.randn(2, 12, 6, 7, device=device, dtype=torch.float64) * 1.5).requires_grad_()
    weight = (torch.randn(8, 6, 3, 3, device=device, dtype=torch.float64) * 1.5).requires_grad_()
    bias = torch.randn(8, device=device, dtype=torch.float64, requires_grad=True) if with_bias else None
    grad = torch.randn(2, 8, 3, 4, device=device, dtype=torch.float64)
    out = fastdl.ops.xnor_conv2d(x, weight, bias, 2, 1, 1, 2)
    expected = F.conv2d(SteSign.apply(x), SteSign.apply(weight), bias, 2, 1, 1, 2)
    assert_close(out, expected, **TOLERANCES[torch.float64])
    inputs = [x, weight] + ([bias] if with_bias else [])
    ours = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(ours, theirs):
        assert_close(a, b, **TOLERANCES[torch.float64])
    assert (ours[0][x.abs() > 1] == 0).all() and (ours[0][x.abs() <= 1] != 0).any()


def test_opcheck(device):
    x, weight = torch.randn(2, 70, 5, 6, device=device), torch.randn(4, 35, 3, 3, device=device)
    bias = torch.randn(4, device=device)
    args = ([2, 1], [1, 1], [1, 2], 2)
    torch.library.opcheck(OP, (x, weight, bias, *args))
    torch.library.opcheck(OP, (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), *args))
    torch.library.opcheck(PACK_OP, (x.detach(), 2))
    bits, w_bits = PACK_OP(x.detach(), 2), PACK_OP(weight.detach(), 1)
    torch.library.opcheck(PACKED_OP, (bits, w_bits, 70, torch.rand(4, device=device), bias.detach(),
                                      *args[:3], 2, torch.float32, True))
    scale = torch.rand(4, device=device, requires_grad=True)
    torch.library.opcheck(PACKED_OP, (bits, w_bits, 70, scale, bias.detach().requires_grad_(),
                                      *args[:3], 2, torch.float32, False))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_packed_entry_point_gradcheck_scale_and_bias(device, channels_last):
    """The packed op is differentiable in scale and bias (the bits are integers)."""
    torch.manual_seed(4)
    x, weight = torch.randn(2, 70, 5, 6, device=device), torch.randn(4, 35, 3, 3, device=device)
    bits, w_bits = PACK_OP(x, 2), PACK_OP(weight, 1)
    scale = torch.rand(4, device=device, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)

    def packed(scale, bias):
        return fastdl.ops.xnor_conv2d_packed(bits, w_bits, 70, scale, bias, 2, 1, (1, 2), 2,
                                             dtype=torch.float64, channels_last=channels_last)

    assert torch.autograd.gradcheck(packed, (scale, bias))
    # One of them alone, in float32 with a float64 output: gradients keep their own dtype.
    scale32 = scale.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(packed(scale32, None).sum(), scale32)
    assert grad.dtype == torch.float32
    expected = reference(x, weight, None, 2, 1, (1, 2), 2).sum((0, 2, 3))
    assert_close(grad, expected.float(), **TOLERANCES[torch.float32])


def test_cpu_kernel_path_follows_the_isa():
    previous = fastdl._C.cpu_isa()
    try:
        fastdl._C.set_cpu_isa("scalar")
        assert fastdl.ops.xnor_cpu_kernel_path() == "scalar-swar"
        if fastdl._C.best_cpu_isa() != "scalar":
            fastdl._C.set_cpu_isa("avx2")
            assert fastdl.ops.xnor_cpu_kernel_path() == "avx2-pshufb"
    finally:
        fastdl._C.set_cpu_isa(previous)


# ---- layers ----

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding="valid", bias=False),
    dict(kernel_size=(2, 3), padding="same"),
    dict(kernel_size=4, padding="same", dilation=(1, 2), groups=2),
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")  # the reference's, for even kernels
def test_xnor_conv2d_layer_without_scales_equals_conv_of_signs(device, kwargs):
    torch.manual_seed(4)
    layer = XNORConv2d(6, 8, weight_scale=False, **kwargs).to(device)
    conv = nn.Conv2d(6, 8, **kwargs).to(device)
    conv.load_state_dict(layer.state_dict())  # the same keys and shapes as nn.Conv2d
    x = torch.randn(2, 6, 9, 8, device=device)
    expected = F.conv2d(signs(x), signs(conv.weight), conv.bias, conv.stride, conv.padding,
                        conv.dilation, conv.groups)
    assert_close(layer(x), expected, **TOLERANCES[torch.float32])
    layer.eval().pack()
    assert_close(layer(x), expected, **TOLERANCES[torch.float32])


def _scaled_reference(x, weight, bias, padding, input_scale):
    out = F.conv2d(signs(x), signs(weight), None, 1, padding)
    out = out * weight.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    if input_scale:
        k = weight.shape[-1]
        out = out * F.avg_pool2d(x.abs().mean(1, keepdim=True), k, 1, padding,
                                 count_include_pad=True)
    return out + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("input_scale", [False, True])
def test_xnor_conv2d_scales_train_and_pack(device, input_scale):
    torch.manual_seed(5)
    layer = XNORConv2d(16, 12, 3, padding=1, input_scale=input_scale).to(device)
    x = torch.randn(3, 16, 7, 7, device=device, requires_grad=True)
    out = layer(x)
    expected = _scaled_reference(x, layer.weight, layer.bias, 1, input_scale)
    assert_close(out, expected, **TOLERANCES[torch.float32])
    out.square().sum().backward()
    assert layer.weight.grad is not None and x.grad is not None and layer.bias.grad is not None
    float_bytes = layer.weight.numel() * layer.weight.element_size()
    layer.eval().pack()
    state = layer.state_dict()
    assert set(state) == {"weight_bits", "weight_alpha", "bias"}
    assert state["weight_bits"].dtype == torch.int64 and layer.weight is None
    assert float_bytes / (state["weight_bits"].numel() * 8) == 8  # 16 of a word's 64 bits used
    with torch.no_grad():
        assert_close(layer(x), expected, **TOLERANCES[torch.float32])
    restored = XNORConv2d(16, 12, 3, padding=1, input_scale=input_scale).to(device).pack()
    restored.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(restored(x), layer(x))


def test_packed_layer_bias_trains_like_the_unpacked_one(device):
    """A packed layer's bias (still a Parameter) gets the unpacked layer's gradient."""
    torch.manual_seed(7)
    layer = XNORConv2d(8, 4, 3, padding=1).to(device)
    packed = XNORConv2d(8, 4, 3, padding=1).to(device)
    packed.load_state_dict(layer.state_dict())
    packed.pack()
    x, grad = torch.randn(2, 8, 5, 5, device=device), torch.randn(2, 4, 5, 5, device=device)
    (expected,) = torch.autograd.grad(layer(x), layer.bias, grad)
    (ours,) = torch.autograd.grad(packed(x), packed.bias, grad)
    assert_close(ours, expected)


def test_packed_weights_are_32x_smaller_at_256_channels():
    layer = XNORConv2d(256, 256, 3).pack()
    assert 256 * 256 * 9 * 4 / (layer.weight_bits.numel() * 8) == 32


def test_xnor_conv2d_layer_unbatched_channels_last_repr_and_from_conv2d():
    conv = nn.Conv2d(8, 4, 3, padding=1)
    layer = XNORConv2d.from_conv2d(conv, weight_scale=False)
    assert layer.weight is conv.weight
    x = torch.randn(8, 5, 5)
    assert_close(layer(x), layer(x.unsqueeze(0)).squeeze(0))
    x_cl = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    assert layer(x_cl).is_contiguous(memory_format=torch.channels_last)
    assert "weight_scale=False" in repr(layer) and "packed" not in repr(layer)
    assert "packed=True" in repr(layer.pack())


def test_binary_linear(device):
    torch.manual_seed(6)
    layer = BinaryLinear(100, 7, input_scale=True).to(device)
    x = torch.randn(4, 3, 100, device=device, requires_grad=True)
    expected = F.linear(signs(x), signs(layer.weight)) * layer.weight.abs().mean(1) \
        * x.abs().mean(-1, keepdim=True) + layer.bias
    out = layer(x)
    assert out.shape == (4, 3, 7)
    assert_close(out, expected, **TOLERANCES[torch.float32])
    out.sum().backward()
    assert x.grad.shape == x.shape
    linear = nn.Linear(100, 7).to(device)
    linear.load_state_dict(BinaryLinear(100, 7).state_dict())
    layer.eval().pack()
    with torch.no_grad():
        assert_close(layer(x), expected, **TOLERANCES[torch.float32])
    assert set(layer.state_dict()) == {"weight_bits", "weight_alpha", "bias"}
    with pytest.raises(ValueError, match="BinaryLinear: input must have 100 features"):
        layer(torch.randn(2, 99, device=device))


@pytest.mark.parametrize("packed", [False, True])
def test_layers_under_torch_compile(packed):
    model = nn.Sequential(XNORConv2d(8, 16, 3, padding=1, input_scale=True), nn.Flatten(),
                          BinaryLinear(16 * 25, 5))
    x = torch.randn(2, 8, 5, 5)
    if packed:
        model.eval()
        for m in model:
            if hasattr(m, "pack"):
                m.pack()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(not packed):
        assert_close(compiled(x), model(x))


# ---- bad input ----

def _valid():
    return torch.randn(2, 8, 6, 6), torch.randn(4, 8, 3, 3), torch.randn(4)


@pytest.mark.parametrize("mutate, error, message", [
    (lambda x, w, b: (x[0], w, b), ValueError,
     r"fastdl.xnor_conv2d: input must have shape \(N, C, H, W\), got \(8, 6, 6\)"),
    (lambda x, w, b: (x, w[:, :5], b), ValueError,
     r"weight must have shape \(out_channels, C / groups, kH, kW\) with C = 8 and groups = 1, got \(4, 5, 3, 3\)"),
    (lambda x, w, b: (x, w[:, :, :0], b), ValueError, r"weight must not be empty, got \(4, 8, 0, 3\)"),
    (lambda x, w, b: (x, w, b[:3]), ValueError, r"bias must have shape \(out_channels,\), got \(3,\)"),
    (lambda x, w, b: (x.long(), w.long(), b), TypeError,
     r"input must be torch.float32, torch.float64, torch.float16 or torch.bfloat16, got torch.int64"),
    (lambda x, w, b: (x, w.double(), b), TypeError,
     r"input and weight must have the same dtype, got torch.float32 and torch.float64"),
    (lambda x, w, b: (x, w, b.double()), TypeError, r"input and bias must have the same dtype"),
    (lambda x, w, b: (x[:, :, :1, :1], w, b), ValueError,
     r"input of spatial size \(1, 1\) with padding \(0, 0\) is too small for kernel \(3, 3\)"),
])
def test_bad_input(mutate, error, message):
    x, w, b = mutate(*_valid())
    with pytest.raises(error, match=message):
        fastdl.ops.xnor_conv2d(x, w, b)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(groups=3), ValueError, r"fastdl.xnor_conv2d: input's channel count \(8\) must be divisible by groups \(3\)"),
    (dict(groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    (dict(padding=-1), ValueError, r"padding must be >= 0, got \(-1, -1\)"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be >= 1, got \(1, 0\)"),
])
def test_bad_conv_arguments(kwargs, error, message):
    x, w, b = _valid()
    with pytest.raises(error, match=message):
        fastdl.ops.xnor_conv2d(x, w, b, **kwargs)


def test_bad_packed_input():
    x, w, b = _valid()
    bits, w_bits = fastdl.ops.pack_signs(x), fastdl.ops.pack_signs(w)
    with pytest.raises(ValueError, match=r"fastdl.xnor_conv2d_packed: input_bits must have shape "
                       r"\(N, H, W, groups \* ceil\(in_channels / groups / 64\)\) as pack_signs writes "
                       r"it, got \(2, 6, 6, 1\)"):
        fastdl.ops.xnor_conv2d_packed(bits, w_bits, 130)
    with pytest.raises(TypeError, match="input_bits must be torch.int64, got torch.int32"):
        fastdl.ops.xnor_conv2d_packed(bits.int(), w_bits, 8)
    with pytest.raises(ValueError, match=r"scale must have shape \(out_channels,\), got \(5,\)"):
        fastdl.ops.xnor_conv2d_packed(bits, w_bits, 8, scale=torch.ones(5))
    with pytest.raises(TypeError, match="dtype must be torch.float32, torch.float64, torch.float16 or "
                       "torch.bfloat16, got torch.int64"):
        fastdl.ops.xnor_conv2d_packed(bits, w_bits, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="in_channels must be >= 1, got 0"):
        fastdl.ops.xnor_conv2d_packed(bits, w_bits, 0)
    with pytest.raises(ValueError, match=r"fastdl.pack_signs: input's channel count \(8\) must be "
                       r"divisible by groups \(3\)"):
        fastdl.ops.pack_signs(x, 3)
    with pytest.raises(RuntimeError, match="fastdl.xnor_conv2d: input and weight must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.xnor_conv2d(x, w.to("meta"))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="XNORConv2d: padding_mode must be 'zeros'"):
        XNORConv2d(4, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(TypeError, match="XNORConv2d: input must be a floating-point tensor"):
        XNORConv2d(4, 4, 3)(torch.ones(1, 4, 5, 5, dtype=torch.int64))
