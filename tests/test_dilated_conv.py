"""fastdl.ops.dilated_conv2d / dilated_conv1d: parity with F.conv2d / F.conv1d (float64
reference) for the output and every gradient over dilations (ASPP's 6/12/18, WaveNet's
1..512), strides, even and non-square kernels, groups (dense, grouped, depthwise),
paddings (int, pair, 'same' with odd and even dilated extents, 'valid', per side),
causal 1-D, layouts (channels_last, slices), odd sizes and tails of the vector and
register tiles; 16-bit dtypes; backward output_mask subsets; gradcheck; opcheck;
empty batch; torch.compile; thread-count independence; every bad-input check."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conftest import TOLERANCES_VS_FLOAT64, requires_cuda
from parity import assert_close, assert_same_layout, outputs_and_grads

# F.conv2d's own warning for 'same' with an even dilated extent (the reference's copy).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

OP2D = torch.ops.fastdl.dilated_conv2d.default
BACKWARD2D = torch.ops.fastdl.dilated_conv2d_backward.default
OP1D = torch.ops.fastdl.dilated_conv1d.default
BACKWARD1D = torch.ops.fastdl.dilated_conv1d_backward.default

# 16-bit inputs against the float64 reference on the same (upcast) values. CPU computes
# in float32 and rounds the results once; CUDA may round more often.
LOW_PRECISION = {
    ("cpu", torch.bfloat16): dict(rtol=2e-2, atol=2e-2),
    ("cpu", torch.float16): dict(rtol=2e-3, atol=2e-3),
    ("cuda", torch.bfloat16): dict(rtol=4e-2, atol=4e-2),
    ("cuda", torch.float16): dict(rtol=1e-2, atol=1e-2),
}


@pytest.fixture(params=[pytest.param("cpu", id="cpu"),
                        pytest.param("cuda", id="cuda", marks=requires_cuda)])
def plain_device(request):
    """A device without the per-ISA repetition: for tests of the schema, fake kernels and
    compile, which no vector path changes."""
    return torch.device(request.param)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, device, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)


def exact_cudnn():
    """The CUDA reference in full precision: cuDNN may otherwise pick TF32 engines."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                      allow_tf32=False)


def side_padding(padding, kernel, dilation):
    """(begin, end) per dimension, the contract of fastdl.ops.dilated_conv*."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        return padding, padding
    return tuple(padding)


def _pads_through_f_pad(padding):
    return not (isinstance(padding, (int, str)) or all(isinstance(p, int) for p in padding))


def reference_conv2d(x, w, b, stride, padding, dilation, groups):
    """F.conv2d; 'same' / 'valid' passed straight to F.conv2d (it takes them at stride 1),
    per-side padding through F.pad."""
    if not _pads_through_f_pad(padding):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)
    (top, bottom), (left, right) = (side_padding(p, k, d) for p, k, d in
                                    zip(padding, w.shape[2:], _pair(dilation)))
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)


def reference_conv1d(x, w, b, stride, padding, dilation, groups, causal):
    if causal:
        return F.conv1d(F.pad(x, (dilation * (w.shape[2] - 1), 0)), w, b, stride, 0, dilation, groups)
    if isinstance(padding, (int, str)):
        return F.conv1d(x, w, b, stride, padding, dilation, groups)
    return F.conv1d(F.pad(x, tuple(padding)), w, b, stride, 0, dilation, groups)


def skip_redundant_float64(device, dtype):
    """float64 has only the scalar CPU kernels: the avx2 / avx512 runs would repeat it."""
    if device.type == "cpu" and dtype == torch.float64 and fastdl._C.cpu_isa() != "scalar":
        pytest.skip("float64 runs the scalar kernels whatever the ISA")


# The float64 references of a case, shared by its runs on the ISA paths (the same
# inputs, so the same reference): F.conv2d in float64 with large dilations is most of
# this file's time otherwise.
_REFERENCES = {}


def check_parity(ours, reference, tensors, out_shape, seed, tolerance=None, key=None):
    """ours(*tensors) (dtype of tensors) against reference(*float64 copies): output and
    every gradient. Returns (ours' results, the reference's). `key` (hashable, naming
    the case and dtype) caches the reference across ISA paths."""
    dtype, device = tensors[0].dtype, tensors[0].device
    grad_out = _randn(out_shape, dtype, device, _generator(seed))
    actual = outputs_and_grads(ours, tensors, grad_out)
    key = None if key is None else (key, dtype, str(device), seed)
    expected = _REFERENCES.get(key) if key is not None else None
    if expected is None:
        with exact_cudnn():
            expected = outputs_and_grads(reference, [t.double() for t in tensors], grad_out.double())
        expected = [t.detach() for t in expected]
        if key is not None:
            _REFERENCES[key] = expected
    tolerance = tolerance or TOLERANCES_VS_FLOAT64[dtype]
    names = ["output", "grad_input", "grad_weight", "grad_bias"]
    for name, a, e, given in zip(names, actual, expected, [grad_out, *tensors]):
        assert a.dtype == dtype and a.shape == given.shape and a.device == device, name
        torch.testing.assert_close(a.double(), e, **tolerance, msg=lambda m, name=name: f"{name}: {m}")
    return actual, expected


# ---------------------------------------------------------------- 2-D configurations

# (batch, channels, out_channels, groups, H, W, kernel, stride, padding, dilation, layout)
# layout: "nchw", "cl" (channels_last), "slice" (a non-contiguous view).
DENSE_2D = (2, 5, 6, 1, 13, 11, 3, 1, 1, 1, "nchw")
ASPP6_2D = (1, 8, 8, 1, 9, 11, 3, 1, 6, 6, "nchw")
ASPP12_2D = (1, 6, 7, 1, 9, 10, 3, 1, 12, 12, "cl")
WIDE_CL_2D = (2, 5, 5, 1, 3, 133, (1, 5), 1, (0, 4), (1, 2), "cl")
GROUPED_2D = (2, 6, 6, 2, 11, 13, (3, 5), (1, 2), (1, 2), (2, 1), "nchw")
EVEN_CL_2D = (1, 8, 12, 2, 12, 12, 2, 2, 0, 3, "cl")
DEPTHWISE_CL_2D = (2, 5, 10, 5, 9, 9, 5, 3, 4, 2, "cl")
SIDES_2D = (2, 3, 4, 1, 9, 8, 3, 2, ((2, 0), (1, 3)), (1, 2), "nchw")
LANES_2D = (1, 8, 32, 1, 5, 13, 3, 1, 2, 2, "nchw")
EXPLICIT_2D = [
    DENSE_2D,
    ASPP6_2D,  # ASPP: padding = dilation
    ASPP12_2D,
    (3, 4, 5, 1, 7, 9, 3, 1, 18, 18, "nchw"),  # every tap but the centre in the padding
    (1, 4, 4, 1, 40, 41, 3, 1, 18, 18, "slice"),
    (1, 3, 9, 1, 5, 71, 3, 1, 1, 2, "nchw"),  # out_w 71: one full 64-column tile and a tail
    WIDE_CL_2D,  # out_w 133: two tiles + 5
    (1, 7, 6, 1, 4, 64, (2, 3), 1, (0, 2), (1, 2), "nchw"),  # out_w exactly 64
    # Row tails past 3 vectors: out_w 58 = 3 x 16 + 10 (avx512), 32 + 26 (avx2); 29 = 3 x 8 + 5
    (1, 3, 5, 1, 3, 58, 3, 1, 1, 1, "nchw"),
    (2, 5, 6, 1, 5, 29, 3, 1, 1, 2, "cl"),
    (1, 7, 6, 1, 4, 17, (2, 3), 1, "same", (1, 2), "nchw"),  # 17 = 16 + 1
    GROUPED_2D,  # grouped, non-square
    EVEN_CL_2D,  # even kernel, stride 2, grouped
    (1, 6, 6, 6, 15, 14, 3, 1, 2, 2, "nchw"),  # depthwise-like
    DEPTHWISE_CL_2D,  # depthwise, multiplier 2, stride 3
    (1, 4, 3, 1, 8, 10, 4, 1, "same", 1, "nchw"),  # even extent: padding (1, 2)
    (1, 4, 3, 1, 8, 10, (2, 4), 1, "same", (3, 2), "slice"),  # extents 3 and 6: asymmetric
    (1, 4, 3, 1, 8, 10, 3, 1, "same", 5, "cl"),
    (3, 3, 5, 1, 9, 8, 7, 1, "valid", 1, "nchw"),  # 7x7, 3x2 output
    (1, 3, 5, 1, 7, 7, 7, 1, "valid", 1, "nchw"),  # 1x1 output
    (1, 3, 4, 1, 13, 13, 3, 1, "valid", 6, "cl"),  # 1x1 output from a dilated kernel
    SIDES_2D,  # per-side padding
    (1, 5, 4, 1, 6, 9, (2, 2), 1, ((0, 1), (1, 0)), 1, "cl"),  # (2, 2) kernel, causal-like 2-D
    (1, 4, 4, 2, 5, 6, 3, 3, ((7, 0), (0, 5)), 3, "nchw"),  # padding past the kernel's reach
    (2, 9, 6, 3, 7, 7, 1, 2, 0, 1, "slice"),  # 1x1 kernel, stride 2
    (1, 2, 3, 1, 1, 1, 3, 1, 1, 1, "nchw"),  # 1x1 image
    (1, 4, 4, 1, 5, 5, 3, 1, 3, 1, "nchw"),  # padding >= kernel extent
    # Output channels in the lanes (>= 32 output channels per group on AVX-512, 8 on AVX2):
    LANES_2D,  # 32: one half-width block (AVX-512); 13 columns = 2 tiles of 6 + 1
    (2, 6, 80, 1, 4, 9, 3, 2, 3, 3, "nchw"),  # 80 = 64 + a half-width 16; stride 2
    (1, 5, 100, 1, 3, 20, (2, 3), 3, ((1, 0), (4, 2)), (1, 4), "cl"),  # 100 = 64 + 36; stride 3
    (1, 12, 96, 2, 6, 11, 3, 1, 6, 6, "slice"),  # grouped, 48 per group
    (1, 6, 40, 1, 5, 30, 3, 1, 18, 18, "nchw"),  # whole tiles in the padding columns
]


def _sampled_2d(count, seed):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kernel = rng.choice([1, 2, 3, 5, 7, (3, 5), (2, 2), (1, 3), (4, 1)])
        kh, kw = _pair(kernel)
        dilation = rng.choice([1, 2, 3, 4, 6, 12, 18, (2, 5), (1, 7)])
        dh, dw = _pair(dilation)
        stride = rng.choice([1, 1, 2, 3, (1, 2), (3, 1)])
        kind = rng.choice(["int", "pair", "same", "valid", "sides", "aspp"])
        if kind == "same" and stride != 1:
            kind = "sides"
        padding = {
            "int": rng.randint(0, 4), "pair": (rng.randint(0, 3), rng.randint(0, 5)),
            "same": "same", "valid": "valid", "aspp": dilation,
            "sides": ((rng.randint(0, 4), rng.randint(0, 4)), (rng.randint(0, 6), rng.randint(0, 2))),
        }[kind]
        groups_kind = rng.choice(["dense", "dense", "grouped", "depthwise"])
        groups = {"dense": 1, "grouped": 2, "depthwise": rng.choice([3, 5, 6])}[groups_kind]
        channels = groups * (1 if groups_kind == "depthwise" else rng.choice([1, 2, 3, 5]))
        out_channels = groups * rng.choice([1, 2, 3] if groups > 2 else [1, 2, 3, 5])
        h, w = rng.randint(1, 15), rng.randint(1, 40)
        (pt, pb), (pl, pr) = (side_padding(p, k, d) for p, k, d in zip(
            padding if isinstance(padding, tuple) and not all(isinstance(p, int) for p in padding) else
            [padding[0], padding[1]] if isinstance(padding, tuple) else [padding, padding],
            (kh, kw), (dh, dw)))
        if h + pt + pb - dh * (kh - 1) < 1 or w + pl + pr - dw * (kw - 1) < 1:
            continue
        configs.append((rng.choice([1, 2, 3]), channels, out_channels, groups, h, w, kernel, stride,
                        padding, dilation, rng.choice(["nchw", "nchw", "cl", "slice"])))
    return configs


CONFIGS_2D = EXPLICIT_2D + _sampled_2d(24, seed=0)


def make_2d(config, dtype, device, bias=True, seed=0):
    n, c, o, groups, h, w, kernel, stride, padding, dilation, layout = config
    g = _generator(seed)
    kh, kw = _pair(kernel)
    if layout == "slice":  # every other channel, and a window of the columns
        x = _randn((n, 2 * c, h, w + 5), dtype, device, g)[:, ::2, :, 2:w + 2]
        assert not x.is_contiguous()
    else:
        x = _randn((n, c, h, w), dtype, device, g)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
    weight = _randn((o, c // groups, kh, kw), dtype, device, g)
    b = _randn((o,), dtype, device, g) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _out_shape_2d(x, weight, args):
    (pt, pb), (pl, pr) = _sides_2d(weight, args)
    (sh, sw), (dh, dw) = _pair(args["stride"]), _pair(args["dilation"])
    kh, kw = weight.shape[2:]
    return (x.shape[0], weight.shape[0], (x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _sides_2d(weight, args):
    padding = args["padding"]
    if isinstance(padding, (int, str)):
        per_dim = [padding, padding]
    else:
        per_dim = list(padding)
    return [side_padding(p, k, d) for p, k, d in zip(per_dim, weight.shape[2:], _pair(args["dilation"]))]


def _config_id(config):
    return "-".join(str(v).replace(" ", "") for v in config)


def _check_layout(actual, expected, x, padding):
    """Output and grad_input take the layout F.conv2d gives for this input (channels_last
    in, channels_last out), except that PyTorch's CUDA conv drops channels_last for
    float64, where fastdl keeps it. (Where the reference pads through F.pad, its
    grad_input is a slice, so only the output's layout is compared.)"""
    (out, grad_input), (ref, ref_grad) = actual[:2], expected[:2]
    if x.is_cuda and x.dtype == torch.float64:
        x_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if x_cl else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt) and grad_input.is_contiguous(memory_format=fmt)
        return
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert out.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), fmt
        if not _pads_through_f_pad(padding):
            assert grad_input.is_contiguous(memory_format=fmt) == ref_grad.is_contiguous(memory_format=fmt), fmt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS_2D, ids=[_config_id(c) for c in CONFIGS_2D])
def test_conv2d_matches_f_conv2d(device, dtype, config):
    skip_redundant_float64(device, dtype)
    x, weight, bias, args = make_2d(config, dtype, device)
    actual, expected = check_parity(
        lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
        lambda x, w, b: reference_conv2d(x, w, b, **args),
        [x, weight, bias], _out_shape_2d(x, weight, args), seed=1, key=("2d", config))
    _check_layout(actual, expected, x, args["padding"])


@pytest.mark.parametrize("x_cl, w_cl", [(False, True), (True, False), (True, True)],
                         ids=["weight-cl", "input-cl", "both-cl"])
def test_conv2d_layout_follows_input_or_weight(device, x_cl, w_cl):
    """test_depthwise_conv2d.py's test_layout_follows_input_or_weight for this op."""
    dtype = torch.float32
    g = _generator(5)
    x, weight, bias = (_randn(shape, dtype, device, g) for shape in ((2, 6, 9, 8), (4, 3, 3, 2), (4,)))
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if w_cl:
        weight = weight.to(memory_format=torch.channels_last)  # as module.to() does it
    args = dict(stride=1, padding=2, dilation=(2, 1), groups=2)
    grad_out = _randn((2, 4, 9, 11), dtype, device, g)
    out, *grads = outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
                                    [x, weight, bias], grad_out)
    with exact_cudnn():
        ref, *ref_grads = outputs_and_grads(lambda x, w, b: F.conv2d(x, w, b, **args),
                                            [x, weight, bias], grad_out)
    tolerance = dict(rtol=1e-5, atol=1e-5)
    assert_close(out, ref, **tolerance)
    assert_close(grads[0], ref_grads[0], **tolerance)
    assert ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous()
    assert_same_layout(out, ref)
    assert_same_layout(grads[0], ref_grads[0])
    call = ([1, 1], [2, 2], [2, 2], [2, 1], 2)
    torch.library.opcheck(OP2D, (x, weight, bias, *call))
    torch.library.opcheck(BACKWARD2D, (grad_out, x, weight, *call, [True, True, True]))


# Winograd F(2x2, 3x3) on CPU: 3x3, stride 1, one group, >= 128 channels in and out, and
# tiles mostly outputs (dilated_conv_cpu_winograd.h; each of these passes that test):
WINOGRAD_2D = [
    (1, 128, 128, 1, 13, 11, 3, 1, 2, 2, "nchw"),  # ASPP-like; residues of 7 outputs: half tiles
    (2, 136, 130, 1, 13, 14, 3, 1, 1, 1, "cl"),  # channels past whole vectors, batch 2
    (1, 129, 140, 1, 26, 26, 3, 1, "same", 6, "slice"),  # residues of 5 and 4 outputs
    (1, 128, 144, 1, 9, 9, 3, 1, 3, 1, "nchw"),  # padding past the kernel's reach
    (1, 128, 128, 1, 12, 13, 3, 1, ((2, 0), (1, 3)), (1, 2), "nchw"),  # per-side padding
    (1, 144, 128, 1, 20, 7, 3, 1, (9, 1), (9, 1), "nchw"),
    (3, 128, 128, 1, 26, 26, 3, 1, 1, 1, "nchw"),  # 507 tiles: two tasks, one split in an image
]


def _takes_winograd(x, weight, args):
    """dilated_conv_cpu_winograd.h's takes_winograd, for these tests' own check."""
    out_h, out_w = _out_shape_2d(x, weight, args)[2:]
    dh, dw = _pair(args["dilation"])

    def tiles(size, d):
        return sum((len(range(r, size, d)) + 1) // 2 for r in range(min(d, size)))

    return (weight.shape[2:] == (3, 3) and _pair(args["stride"]) == (1, 1) and args["groups"] == 1
            and min(weight.shape[:2]) >= 128 and 4 * 9 * out_h * out_w >= 7 * 16 * tiles(out_h, dh) * tiles(out_w, dw))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", WINOGRAD_2D, ids=[_config_id(c) for c in WINOGRAD_2D])
def test_conv2d_winograd(device, dtype, config):
    """The Winograd path's output and gradients (grad_input and grad_weight run it too)
    against F.conv2d in float64, in the tolerance of the direct kernels."""
    skip_redundant_float64(device, dtype)
    x, weight, bias, args = make_2d(config, dtype, device)
    assert _takes_winograd(x, weight, args)
    weight = weight / (3 * config[1] ** 0.5)  # outputs of unit size, as a trained layer's
    # grad_weight's values are sums over every output position (rms ~20 here); in float32
    # the Winograd weight gradient's error is 1.5-2.5x the direct kernel's, up to 7e-5.
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else None
    actual, expected = check_parity(
        lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
        lambda x, w, b: reference_conv2d(x, w, b, **args),
        [x, weight, bias], _out_shape_2d(x, weight, args), seed=1, tolerance=tolerance,
        key=("winograd", config))
    _check_layout(actual, expected, x, args["padding"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_winograd_non_finite_and_huge_inputs(device, dtype):
    """The transforms' differences would turn an infinity into NaN and overflow near the
    largest values: such inputs or weights keep the call on the direct kernels, so the
    output is F.conv2d's (inf where it gives inf, NaN only where it gives NaN)."""
    skip_redundant_float64(device, dtype)
    big = torch.finfo(dtype).max / 1.5
    x = torch.randn(1, 128, 9, 9, dtype=dtype, device=device)
    w = torch.rand(128, 128, 3, 3, dtype=dtype, device=device) / 1200  # positive: no inf - inf
    b = torch.randn(128, dtype=dtype, device=device)
    huge = x.clone()
    huge[0, :, 2:4] = big
    x[0, 3, 2, 2] = math.inf
    x[0, 5, 6, 7] = -math.inf
    x[0, 9, 4, 4] = math.nan
    assert _takes_winograd(x, w, dict(stride=1, padding=2, dilation=2, groups=1))
    for inputs in (x, huge):
        ours = fastdl.ops.dilated_conv2d(inputs, w, b, 1, 2, 2)
        with exact_cudnn():
            reference = F.conv2d(inputs, w, b, 1, 2, 2)
        assert torch.equal(ours.isnan(), reference.isnan())
        assert torch.equal(ours.isinf(), reference.isinf())
        finite = reference.isfinite()
        torch.testing.assert_close(ours[finite] / big, reference[finite] / big, atol=1e-5, rtol=1e-4)
    w[1, 2, 0, 0] = math.inf  # no padding: the direct kernels skip padding taps, oneDNN may not
    y = torch.randn(1, 128, 9, 9, dtype=dtype, device=device)
    with exact_cudnn():
        ours, reference = fastdl.ops.dilated_conv2d(y, w, b, 1, 0, 2), F.conv2d(y, w, b, 1, 0, 2)
    assert torch.equal(ours.isinf(), reference.isinf()) and torch.equal(ours.isnan(), reference.isnan())


def test_conv2d_winograd_large_finite_values_stay_finite(plain_device):
    """Values well inside the type's range whose transforms and sums could overflow (a
    transformed input is up to 4 |x|, a transformed weight 9/4 |w|) keep the call on the
    direct kernels: F.conv2d's finite outputs stay finite, in every gradient too."""
    for dtype in (torch.float32, torch.float64):
        big = torch.finfo(dtype).max / 4.5
        x = torch.zeros(1, 128, 12, 12, dtype=dtype, device=plain_device)
        w = torch.zeros(128, 128, 3, 3, dtype=dtype, device=plain_device)
        w[:, 0] = 1.0
        x[0, 0, 4:6, 4:6] = big
        args = dict(stride=1, padding=1, dilation=1, groups=1)
        assert _takes_winograd(x, w, args)
        reference = F.conv2d(x, w, None, **args)
        assert reference.isfinite().all()
        assert fastdl.ops.dilated_conv2d(x, w, None, **args).isfinite().all(), dtype
        grads = torch.ops.fastdl.dilated_conv2d_backward.default(
            torch.ones_like(reference), x, w, [1, 1], [1, 1], [1, 1], [1, 1], 1, [True, True, False])
        assert all(g.isfinite().all() for g in grads if g is not None), dtype


def test_conv2d_winograd_keeps_float32_under_reduced_matmul_precision(plain_device):
    """torch.set_float32_matmul_precision('medium') lets oneDNN run float32 GEMMs in
    bfloat16; the Winograd path's GEMMs would follow (errors of 4e-3), so the call takes
    the direct kernels, which stay float32 like F.conv2d."""
    x, weight, bias, args = make_2d(WINOGRAD_2D[1], torch.float32, plain_device)
    weight = (weight / 34).requires_grad_()
    x.requires_grad_()
    grad = _randn(_out_shape_2d(x, weight, args), torch.float32, plain_device, _generator(4))
    expected = outputs_and_grads(lambda x, w: reference_conv2d(x, w, None, **args),
                                 [x.double(), weight.double()], grad.double())
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        actual = outputs_and_grads(lambda x, w: fastdl.ops.dilated_conv2d(x, w, None, **args),
                                   [x, weight], grad)
    finally:
        torch.set_float32_matmul_precision(previous)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4)


def test_conv2d_winograd_backward_in_inference_mode(plain_device):
    """The GEMMs run on at::parallel_for's threads, which must see the caller's
    thread-local state: in inference mode the in-place sums of inference tensors failed
    there with more than one thread."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x, weight, _, args = make_2d(WINOGRAD_2D[0], torch.float32, plain_device)
        grad = torch.randn(_out_shape_2d(x, weight, args), device=plain_device)
        call = [[1, 1], [2, 2], [2, 2], [2, 2], 1, [True, True, True]]
        expected = torch.ops.fastdl.dilated_conv2d_backward.default(grad, x, weight, *call)
        with torch.inference_mode():
            actual = torch.ops.fastdl.dilated_conv2d_backward.default(grad, x, weight, *call)
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("config", [DENSE_2D, ASPP12_2D, GROUPED_2D, DEPTHWISE_CL_2D, SIDES_2D], ids=str)
def test_conv2d_without_bias(device, config):
    skip_redundant_float64(device, torch.float64)
    x, weight, _, args = make_2d(config, torch.float64, device, bias=False)
    check_parity(lambda x, w: fastdl.ops.dilated_conv2d(x, w, None, **args),
                 lambda x, w: reference_conv2d(x, w, None, **args),
                 [x, weight], _out_shape_2d(x, weight, args), seed=2)


def test_conv2d_padding_forms_agree(device):
    """int == (p, p) == ((p, p), (p, p)); 'valid' == 0; 'same' == its per-side padding."""
    x, weight, bias, _ = make_2d((1, 4, 3, 1, 9, 10, (2, 3), 1, 0, 1, "nchw"), torch.float64, device)
    conv = lambda padding, dilation=1: fastdl.ops.dilated_conv2d(x, weight, bias, 1, padding, dilation)
    assert torch.equal(conv(2), conv((2, 2)))
    assert torch.equal(conv(2), conv(((2, 2), (2, 2))))
    assert torch.equal(conv("valid"), conv(0))
    # extents (2 - 1) * 3 = 3 and (3 - 1) * 2 = 4: the odd one puts the extra zero at the end
    assert torch.equal(conv("same", (3, 2)), conv(((1, 2), (2, 2)), (3, 2)))
    assert conv("same", (3, 2)).shape[2:] == x.shape[2:]
    # mixed per dimension
    assert torch.equal(conv(("same", (0, 1)), (3, 1)), conv(((1, 2), (0, 1)), (3, 1)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config", [ASPP6_2D, WIDE_CL_2D, EVEN_CL_2D, DEPTHWISE_CL_2D, SIDES_2D, LANES_2D,
                                    WINOGRAD_2D[1]], ids=str)
def test_conv2d_half_precision(device, dtype, config):
    x, weight, bias, args = make_2d(config, dtype, device)
    (out, grad_input, *_), _ = check_parity(
        lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
        lambda x, w, b: reference_conv2d(x, w, b, **args),
        [x, weight, bias], _out_shape_2d(x, weight, args), seed=3,
        tolerance=LOW_PRECISION[device.type, dtype], key=("2d", config))
    if config[-1] == "cl":
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grad_input.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- 1-D

# (batch, channels, out_channels, groups, L, k, stride, padding, dilation, causal, layout)
# layout: "contiguous" or "slice" (every other channel, a window of the sequence).
BASIC_1D = (2, 3, 5, 1, 37, 3, 1, 1, 1, False, "contiguous")
GROUPED_1D = (3, 4, 6, 2, 65, 3, 2, (3, 0), 2, False, "slice")
DEPTHWISE_1D = (1, 6, 6, 6, 131, 5, 1, "same", 4, False, "contiguous")
CAUSAL_1D = (1, 4, 4, 2, 47, 2, 2, 0, 8, True, "slice")
LONG_CAUSAL_1D = (1, 5, 7, 1, 1100, 3, 1, 0, 3, True, "contiguous")
WAVENET_1D = (1, 16, 64, 1, 1100, 2, 1, 0, 256, True, "contiguous")
EXPLICIT_1D = [
    BASIC_1D,
    (1, 5, 4, 1, 70, 2, 1, "same", 3, False, "contiguous"),  # extent 3: padding (1, 2)
    (1, 4, 5, 1, 123, 3, 1, 1, 2, False, "contiguous"),  # out 121 = 64 + 57 = 3 x 32 + 25
    GROUPED_1D,
    DEPTHWISE_1D,  # depthwise
    (2, 4, 8, 4, 33, 3, 3, 2, 5, False, "slice"),
    (1, 3, 3, 1, 9, 7, 1, "valid", 1, False, "contiguous"),  # output length 3
    (1, 3, 2, 1, 9, 5, 1, "valid", 2, False, "contiguous"),  # output length 1
    (2, 3, 5, 1, 1, 3, 1, 1, 1, False, "contiguous"),  # length 1
    (2, 3, 5, 1, 50, 3, 1, 0, 4, True, "contiguous"),
    CAUSAL_1D,  # causal, stride 2, grouped
    (3, 2, 3, 1, 5, 3, 1, 0, 6, True, "contiguous"),  # receptive field > length
    LONG_CAUSAL_1D,  # > 1024 columns: several tasks
    (1, 4, 6, 2, 2049, 2, 1, (5, 9), 7, False, "contiguous"),
    WAVENET_1D,  # output channels in the lanes, > 1024 columns
    (2, 6, 72, 1, 300, 3, 2, 0, 40, True, "slice"),  # lanes, causal, stride 2
]


# Two-tap rows with output channels in the lanes take Winograd F(3, 2) over triples
# (conv_row_triples) for dilations of at least a vector (16 float32 lanes on AVX-512;
# on AVX2 8 lanes, up to d = 64), the Winograd pair kernel (conv_row_pairs) for the
# other dilations of at least a vector (AVX2 beyond 64, and every dilation in float64's
# scalar kernels), and on AVX-512 below that:
# for d = 1, 2, 4, 8 the same pairs gathered into vectors by lane permutes
# (conv_row_interleaved_pairs: chunks that end inside a vector, padded copies at
# either end of the row), for other d the direct products in the same tiles
# (conv_row_taps: rows read in place, a padded copy at either end of the row); at
# least 2048 output columns in all: rows that end inside a pair, padding wider than
# the dilation on either side, grouped blocks of 16 + 8 channels, output channels that
# end inside a register tile (4 channels on AVX-512, 3 elsewhere), dilations that are
# not a multiple of the vector width (a run's last vector partly unused), several
# chunks, and for the triples runs split into blocks (more input channels than a task's
# rows hold whole runs of).
TAP_PAIRS_1D = [
    (1, 16, 42, 1, 2100, 2, 1, 0, 48, True, "contiguous"),
    (1, 16, 64, 1, 2100, 2, 1, 0, 4, True, "contiguous"),
    (2, 8, 35, 1, 1500, 2, 1, (3, 5), 1, False, "slice"),
    (2, 24, 37, 1, 1100, 2, 1, (25, 3), 20, False, "contiguous"),
    (2, 12, 40, 1, 3001, 2, 1, (20, 1), 9, False, "contiguous"),
    (1, 16, 64, 1, 2100, 2, 1, 0, 16, True, "contiguous"),
    (3, 8, 48, 2, 777, 2, 1, (40, 3), 33, False, "slice"),
    (1, 9, 17, 1, 2049, 2, 1, 0, 512, True, "contiguous"),
    (3, 16, 16, 1, 700, 2, 1, (16, 16), 16, False, "contiguous"),
    (40, 16, 32, 2, 20, 2, 1, (31, 31), 30, False, "contiguous"),  # rows shorter than 2d
    (7, 5, 20, 1, 300, 2, 1, 0, 1, True, "contiguous"),  # float64 only: below a vector
    (41, 16, 32, 1, 50, 2, 1, 0, 300, True, "contiguous"),  # every output a first of its pair
    (2, 16, 32, 1, 1500, 2, 1, (0, 7), 600, False, "contiguous"),  # past the largest pair dilation
    (1, 16, 36, 1, 2059, 2, 1, 0, 2, True, "contiguous"),  # interleaved: a partial last vector
    (2, 24, 72, 2, 1037, 2, 1, (11, 9), 8, False, "slice"),  # interleaved: groups, wide padding
    (1, 32, 64, 1, 5000, 2, 1, (1, 0), 1, False, "contiguous"),  # interleaved: ten chunks
    (1, 256, 32, 1, 2100, 2, 1, 0, 64, True, "contiguous"),  # triples: runs in blocks of 32
    (2, 192, 64, 2, 1100, 2, 1, (150, 7), 200, False, "slice"),  # triples: blocks of 64, 64, 64, 8
]


def make_1d(config, dtype, device, bias=True, seed=0):
    n, c, o, groups, length, k, stride, padding, dilation, causal, layout = config
    g = _generator(seed)
    if layout == "slice":
        x = _randn((n, 2 * c, length + 4), dtype, device, g)[:, ::2, 3:length + 3]
    else:
        x = _randn((n, c, length), dtype, device, g)
    weight = _randn((o, c // groups, k), dtype, device, g)
    b = _randn((o,), dtype, device, g) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                              causal=causal)


def _out_shape_1d(x, weight, args):
    k, d = weight.shape[2], args["dilation"]
    left, right = (d * (k - 1), 0) if args["causal"] else side_padding(args["padding"], k, d)
    return (x.shape[0], weight.shape[0], (x.shape[2] + left + right - d * (k - 1) - 1) // args["stride"] + 1)


def check_parity_1d(config, dtype, device, tolerance=None, bias=True, seed=4):
    skip_redundant_float64(device, dtype)
    x, weight, b, args = make_1d(config, dtype, device, bias=bias)
    tensors = [x, weight] + ([b] if bias else [])
    ours = lambda x, w, b=None: fastdl.ops.dilated_conv1d(x, w, b, **args)
    reference = lambda x, w, b=None: reference_conv1d(x, w, b, **args)
    (out, *_), _ = check_parity(ours, reference, tensors, _out_shape_1d(x, weight, args), seed, tolerance,
                                key=("1d", config, bias))
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", EXPLICIT_1D, ids=[_config_id(c) for c in EXPLICIT_1D])
def test_conv1d_matches_f_conv1d(device, dtype, config):
    # grad_weight sums over about 1000 positions per value: float32 rounding grows with that
    long = dtype == torch.float32 and config[4] > 1000
    check_parity_1d(config, dtype, device, tolerance=dict(rtol=1e-4, atol=5e-5) if long else None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", TAP_PAIRS_1D, ids=[_config_id(c) for c in TAP_PAIRS_1D])
def test_conv1d_two_tap_pairs(device, dtype, config):
    # grad_weight sums over about 1000 positions per value: float32 rounding grows with that
    long = dtype == torch.float32 and config[4] > 1000
    check_parity_1d(config, dtype, device, tolerance=dict(rtol=1e-4, atol=5e-5) if long else None)


@pytest.mark.parametrize("length", [16000, 4133])
def test_conv1d_two_tap_pairs_over_a_long_row(plain_device, length):
    """WaveNet's layers at full length, one image: every two-tap path (interleaved pairs,
    triples, pairs or triples in blocks of a run) over many tasks, the last one partial."""
    g = _generator(5)
    x = _randn((1, 64, length), torch.float32, plain_device, g)
    for d in (1, 8, 16, 128, 256, 512):
        weight = _randn((64, 64, 2), torch.float32, plain_device, g) / 8
        torch.testing.assert_close(fastdl.ops.dilated_conv1d(x, weight, dilation=d, causal=True),
                                   F.conv1d(F.pad(x, (d, 0)), weight, dilation=d),
                                   atol=1e-4, rtol=1e-4)


def test_conv1d_two_tap_rows_with_too_many_channels_for_a_pair_chunk(plain_device):
    """A chunk of the pair kernel holds at least one pair of every input channel's three
    transformed rows within its byte budget; past 8192 float64 channels it could not,
    and its column count came out 0 (a division by zero). Such rows take the direct
    kernels. float64 runs the scalar kernels, which take the pair path from one output
    channel."""
    g = _generator(3)
    x = _randn((1, 8200, 2049), torch.float64, plain_device, g)
    weight = _randn((1, 8200, 2), torch.float64, plain_device, g)
    torch.testing.assert_close(fastdl.ops.dilated_conv1d(x, weight, dilation=1),
                               F.conv1d(x, weight, dilation=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv1d_two_tap_pairs_non_finite_and_huge_inputs(device, dtype):
    """The pair kernel's differences would turn an infinity into NaN and overflow near
    the largest values: such chunks run the direct products, so the output is
    F.conv1d's (inf where it gives inf, NaN only where it gives NaN)."""
    skip_redundant_float64(device, dtype)
    big = torch.finfo(dtype).max / 1.5
    x = torch.randn(2, 8, 1500, dtype=dtype, device=device)
    x[0, 3, 20] = math.inf
    x[0, 5, 700] = -math.inf
    x[1, 2, 1100] = math.nan
    x[1, :, 100:140] = big
    x[1, :, 140:180] = -big
    # 32 output channels: AVX-512 takes the pair kernel from half a block of 64
    w = torch.rand(32, 8, 2, dtype=dtype, device=device) / 16  # positive: no inf - inf
    b = torch.randn(32, dtype=dtype, device=device)
    for d in (1, 2, 4, 8, 16, 40):
        ours = fastdl.ops.dilated_conv1d(x, w, b, dilation=d, causal=True)
        reference = F.conv1d(F.pad(x, (d, 0)), w, b, dilation=d)
        assert torch.equal(ours.isnan(), reference.isnan()), d
        assert torch.equal(ours.isinf(), reference.isinf()), d
        finite = reference.isfinite()
        torch.testing.assert_close(ours[finite] / big, reference[finite] / big, atol=1e-5, rtol=1e-4)
        # image 0 has no huge values: its finite outputs at the usual scale
        torch.testing.assert_close(ours[0][finite[0]], reference[0][finite[0]], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("d", [16, 40])
def test_conv1d_two_tap_triples_nan_at_every_position_of_a_triple(device, d):
    """A NaN input gives NaN where F.conv1d does and nowhere else, whichever of a
    triple's four inputs it is (conv_row_triples: as x1 or x2 the transform would also
    reach the triple's third output, so such a task runs the direct products). Image n
    has its NaN at column 1000 + n: every residue mod 3d."""
    x = torch.randn(3 * d, 4, 1500, device=device)
    for n in range(3 * d):
        x[n, n % 4, 1000 + n] = math.nan
    w = torch.rand(32, 4, 2, device=device) / 8  # positive: no inf - inf
    ours = fastdl.ops.dilated_conv1d(x, w, dilation=d, causal=True)
    reference = F.conv1d(F.pad(x, (d, 0)), w, dilation=d)
    assert torch.equal(ours.isnan(), reference.isnan())
    finite = reference.isfinite()
    torch.testing.assert_close(ours[finite], reference[finite], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("d", [4, 16, 100])
def test_conv1d_two_tap_products_near_the_largest_float(device, d):
    """Winograd's transformed sums can overflow where F.conv1d's direct sums do not
    (products of weights and inputs near 1e38): inputs beyond the limit that the
    weights and bias allow take the direct products, so the output is F.conv1d's,
    finite where it is finite."""
    x = torch.randn(2, 1, 2200, device=device)
    x[0, 0, 1500], x[0, 0, 1500 + d] = 1e30, -1e30  # -2e38 at column 1500, inf at 1500 + d
    x[1, 0, 700] = 1.5e30
    w = torch.empty(32, 1, 2, device=device)
    w[:, :, 0], w[:, :, 1] = 2e8, -2e8
    ours = fastdl.ops.dilated_conv1d(x, w, dilation=d, causal=True)
    reference = F.conv1d(F.pad(x, (d, 0)), w, dilation=d)
    assert torch.equal(ours.isinf(), reference.isinf())
    assert not ours.isnan().any()
    finite = reference.isfinite()
    torch.testing.assert_close(ours[finite] / 1e38, reference[finite] / 1e38, atol=1e-6, rtol=1e-5)


def _two_tap_weight_grads(grad, x, w, d):
    """grad_weight of a causal two-tap convolution: fastdl's and PyTorch's."""
    _, ours, _ = torch.ops.fastdl.dilated_conv1d_backward(grad, x, w, 1, d, 0, d, 1,
                                                          [False, True, False])
    reference = torch.ops.aten.convolution_backward(grad, F.pad(x, (d, 0)), w, None, [1], [0], [d],
                                                    False, [0], 1, [False, True, False])[1]
    return ours, reference


@pytest.mark.parametrize("where", ["input", "grad_output"])
def test_conv1d_two_tap_weight_grad_non_finite_and_huge_values(device, where):
    """The two-tap weight gradient's Winograd sums (weight_grad_triples) would spread an
    infinity or NaN to entries F.conv1d's sums keep finite, and overflow in the
    transforms near the largest values: a call whose sums are not finite runs the
    direct kernels, so the gradient is F.conv1d's (inf where it gives inf, NaN only
    where it gives NaN; finite where it is)."""
    big = torch.finfo(torch.float32).max / 1.5
    for d in (8, 16, 40):
        x = torch.randn(2, 8, 1500, device=device)
        grad = torch.randn(2, 32, 1500, device=device)
        w = torch.randn(32, 8, 2, device=device)
        t = x if where == "input" else grad
        t[0, 3, 200] = math.inf  # away from the padding: F.pad's zeros times inf give NaN
        t[0, 5, 1499] = -math.inf  # the input is read by the last output only (tap 1)
        t[1, 2, 1100] = math.nan
        ours, reference = _two_tap_weight_grads(grad, x, w, d)
        assert torch.equal(ours.isnan(), reference.isnan()), d
        assert torch.equal(ours.isinf(), reference.isinf()), d
        finite = reference.isfinite()
        torch.testing.assert_close(ours[finite], reference[finite], atol=1e-3, rtol=1e-4)
        # huge values of alternating sign, the other operand small: every sum is finite,
        # but the transforms' sums and differences overflow
        t.copy_(torch.randn_like(t).sign() * big)
        (grad if where == "input" else x).mul_(1e-6)
        ours, reference = _two_tap_weight_grads(grad, x, w, d)
        assert reference.isfinite().all() and ours.isfinite().all(), d
        scale = reference.abs().max()
        torch.testing.assert_close(ours / scale, reference / scale, atol=1e-5, rtol=1e-4)


def test_conv2d_two_tap_pairs_padding_rows_give_the_bias(device):
    """A (1, 2) kernel's padding rows give the bias, as the direct kernel's skipped taps
    do; a non-finite weight keeps the whole call on the direct kernel, whose padding
    taps are skipped, so it does not reach those rows (on CPU: the CUDA implicit GEMM
    multiplies padding as zeros, as F.conv2d does, so there 0 * inf is NaN)."""
    x = torch.randn(1, 4, 2, 600, device=device)
    w = torch.randn(16, 4, 1, 2, device=device)
    b = torch.randn(16, device=device)
    bias_row = b[None, :, None].expand(1, 16, 600)
    out = fastdl.ops.dilated_conv2d(x, w, b, 1, ((1, 1), (16, 0)), (1, 16), 1)
    torch.testing.assert_close(out[:, :, 0], bias_row, atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 3], bias_row, atol=0, rtol=0)
    if device.type != "cpu":
        return
    w[0, 0, 0, 0] = math.inf
    out = fastdl.ops.dilated_conv2d(x, w, b, 1, ((1, 1), (16, 0)), (1, 16), 1)
    torch.testing.assert_close(out[:, :, 0], bias_row, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_two_tap_pairs_with_padding_rows(device, dtype):
    """A (1, 2) kernel over several rows, with rows of padding above and below: the pair
    kernel's transform of a row outside the image is zeros."""
    skip_redundant_float64(device, dtype)
    config = (2, 8, 24, 1, 5, 700, (1, 2), 1, (2, 20), (1, 12), "nchw")
    x, weight, bias, args = make_2d(config, dtype, device)
    check_parity(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
                 lambda x, w, b: reference_conv2d(x, w, b, **args),
                 [x, weight, bias], _out_shape_2d(x, weight, args), seed=5, key=("2d", config))


@pytest.mark.parametrize("dilation", [2 ** i for i in range(10)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv1d_wavenet_causal_dilations(device, dtype, dilation):
    """WaveNet's stack: causal, k = 2 and 3, dilation 1 .. 512, sequences longer than the
    receptive field and shorter than it."""
    for k in (2, 3):
        length = 600 + 7 * dilation % 500
        check_parity_1d((1, 3, 4, 1, length, k, 1, 0, dilation, True, "contiguous"), dtype, device)
    check_parity_1d((2, 2, 3, 1, 77, 2, 1, 0, dilation, True, "contiguous"), dtype, device, bias=False)


def test_conv1d_causal_equals_left_padding(device):
    x, weight, b, _ = make_1d(BASIC_1D, torch.float64, device)
    for dilation, k in ((1, 3), (4, 3), (16, 2)):
        w = weight[..., :k]
        causal = fastdl.ops.dilated_conv1d(x, w, b, dilation=dilation, causal=True)
        assert torch.equal(causal, fastdl.ops.dilated_conv1d(x, w, b, padding=(dilation * (k - 1), 0),
                                                             dilation=dilation))
        assert causal.shape == (x.shape[0], w.shape[0], x.shape[2])


@pytest.mark.parametrize("dilation, k", [(1, 2), (4, 3), (16, 2), (64, 3)])
def test_conv1d_causal_output_sees_only_the_past(device, dilation, k):
    """Output t does not change when inputs after t change, and grad_output at <= t
    reaches no input after t."""
    x, weight, b, _ = make_1d((2, 3, 4, 1, 150, k, 1, 0, dilation, True, "contiguous"), torch.float32, device)
    out = fastdl.ops.dilated_conv1d(x, weight, b, dilation=dilation, causal=True)
    for t in (0, 1, 17, 70, 148):
        perturbed = x.clone()
        perturbed[..., t + 1:] = torch.randn_like(perturbed[..., t + 1:]) * 100
        changed = fastdl.ops.dilated_conv1d(perturbed, weight, b, dilation=dilation, causal=True)
        assert torch.equal(changed[..., :t + 1], out[..., :t + 1]), t
        assert not torch.equal(changed[..., t + 1:], out[..., t + 1:]), t
        grad_out = torch.zeros_like(out)
        grad_out[..., :t + 1] = 1
        grad_input, _, _ = BACKWARD1D(grad_out, x, weight, 1, dilation * (k - 1), 0, dilation, 1,
                                      [True, False, False])
        assert torch.equal(grad_input[..., t + 1:], torch.zeros_like(grad_input[..., t + 1:])), t
        assert grad_input[..., max(0, t - dilation * (k - 1)):t + 1].abs().sum() > 0, t


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config", [GROUPED_1D, DEPTHWISE_1D, CAUSAL_1D, LONG_CAUSAL_1D, WAVENET_1D], ids=str)
def test_conv1d_half_precision(device, dtype, config):
    check_parity_1d(config, dtype, device, LOW_PRECISION[device.type, dtype])


def test_conv1d_output_layout_matches_conv1d(plain_device):
    """A (N, L, C) sequence transposed to (N, C, L) (as after a linear layer): F.conv1d
    returns a contiguous output; fastdl's fake kernel says contiguous too, so the real
    kernel must agree (and grad_input keep the input's shape)."""
    g = _generator(5)
    x = _randn((2, 19, 4), torch.float64, plain_device, g).transpose(1, 2)
    weight = _randn((6, 4, 3), torch.float64, plain_device, g)
    out = fastdl.ops.dilated_conv1d(x, weight, None, padding=2, dilation=2)
    ref = F.conv1d(x, weight, None, padding=2, dilation=2)
    assert_close(out, ref)
    assert out.stride() == ref.stride(), (out.stride(), ref.stride())


# ---------------------------------------------------------------- backward output_mask


MASKS = [[True, False, False], [False, True, False], [False, False, True], [True, True, False],
         [False, True, True], [True, False, True]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_output_mask_subsets(device, dtype):
    """Each gradient alone (and in pairs) equals the all-true run bitwise; None where
    the mask is False."""
    for config in (GROUPED_2D, WIDE_CL_2D):  # grouped NCHW and channels_last
        x, weight, _, args = make_2d(config, dtype, device)
        (pt, pb), (pl, pr) = _sides_2d(weight, args)
        conv_args = [list(_pair(args["stride"])), [pt, pl], [pb, pr], list(_pair(args["dilation"])),
                     args["groups"]]
        grad_out = _randn(_out_shape_2d(x, weight, args), dtype, device, _generator(6))
        full = BACKWARD2D(grad_out, x, weight, *conv_args, [True, True, True])
        assert all(t is not None for t in full)
        for mask in MASKS:
            partial = BACKWARD2D(grad_out, x, weight, *conv_args, mask)
            for wanted, got, expected in zip(mask, partial, full):
                assert (got is None) != wanted
                if wanted:
                    assert torch.equal(got, expected) and got.stride() == expected.stride()
    x, weight, _, args = make_1d(CAUSAL_1D, dtype, device)
    k, d = weight.shape[2], args["dilation"]
    conv_args = [args["stride"], d * (k - 1), 0, d, args["groups"]]
    grad_out = _randn(_out_shape_1d(x, weight, args), dtype, device, _generator(7))
    full = BACKWARD1D(grad_out, x, weight, *conv_args, [True, True, True])
    for mask in MASKS:
        partial = BACKWARD1D(grad_out, x, weight, *conv_args, mask)
        for wanted, got, expected in zip(mask, partial, full):
            assert (got is None) != wanted
            if wanted:
                assert torch.equal(got, expected)


def test_autograd_with_some_inputs_not_requiring_grad(device):
    """Only the weight, or only the input, requires grad (the backward's mask then asks
    for a subset): the gradients still match F.conv2d's."""
    x, weight, bias, args = make_2d(GROUPED_2D, torch.float64, device)
    grad_out = _randn(_out_shape_2d(x, weight, args), torch.float64, device, _generator(12))
    for wants in ((False, True, False), (True, False, False), (False, False, True)):
        tensors = [t.detach().requires_grad_(w) for t, w in zip((x, weight, bias), wants)]
        ours = fastdl.ops.dilated_conv2d(*tensors, **args)
        ref = reference_conv2d(*tensors, **args)
        needed = [t for t in tensors if t.requires_grad]
        for a, e in zip(torch.autograd.grad(ours, needed, grad_out), torch.autograd.grad(ref, needed, grad_out)):
            assert_close(a, e)


# ---------------------------------------------------------------- gradcheck, opcheck


def test_gradcheck_conv2d(plain_device):
    device = plain_device  # float64: the scalar kernels on every ISA
    for layout in ("nchw", "cl"):
        x, weight, bias, args = make_2d((1, 4, 4, 2, 6, 7, (3, 2), 2, ((1, 2), (0, 1)), 2, layout),
                                        torch.float64, device)
        inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradcheck(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), inputs)


def test_gradcheck_conv2d_winograd(plain_device):
    x, weight, bias, args = make_2d((1, 128, 128, 1, 2, 2, 3, 1, 1, 1, "nchw"), torch.float64,
                                    plain_device)
    assert _takes_winograd(x, weight, args)
    # The input's gradient runs the Winograd path too. The weight's does as well, but its
    # 147456 values would make this the slowest test of the file: test_conv2d_winograd
    # checks it against F.conv2d's in float64.
    inputs = tuple(t.requires_grad_() for t in (x, bias))
    assert torch.autograd.gradcheck(
        lambda x, b: fastdl.ops.dilated_conv2d(x, weight, b, **args), inputs)


def test_gradcheck_conv1d(plain_device):
    device = plain_device
    for causal, padding, stride in ((True, 0, 1), (False, (2, 1), 2)):
        x, weight, bias, args = make_1d((2, 2, 4, 2, 9, 3, stride, padding, 2, causal, "contiguous"),
                                        torch.float64, device)
        inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradcheck(lambda x, w, b: fastdl.ops.dilated_conv1d(x, w, b, **args), inputs)


def test_gradgradcheck(plain_device):
    """Second derivatives (a gradient penalty): the backward ops' own formula, which runs
    these ops again (fastdl/ops/_utils.py: register_conv_derivatives)."""
    x, weight, bias, args = make_2d((1, 4, 4, 2, 5, 6, (3, 2), 2, ((1, 2), (0, 1)), 2, "cl"),
                                    torch.float64, plain_device)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), inputs)
    assert torch.autograd.gradcheck(  # forward mode too (the ops' jvp rules)
        lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), inputs, check_forward_ad=True)
    for causal, padding, stride in ((True, 0, 1), (False, (2, 1), 2)):
        x, weight, bias, args = make_1d((2, 2, 4, 2, 9, 3, stride, padding, 2, causal, "contiguous"),
                                        torch.float64, plain_device)
        inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradgradcheck(
            lambda x, w, b: fastdl.ops.dilated_conv1d(x, w, b, **args), inputs)
        assert torch.autograd.gradcheck(
            lambda x, w, b: fastdl.ops.dilated_conv1d(x, w, b, **args), inputs,
            check_forward_ad=True)


def test_gradcheck_conv1d_two_tap_pairs(plain_device):
    """The Winograd pair kernel (k=2, 2048 output columns; float64's scalar kernels take
    it at any dilation up to 512), forward and grad_input."""
    x, weight, bias, args = make_1d((1, 1, 2, 1, 2048, 2, 1, 0, 8, True, "contiguous"),
                                    torch.float64, plain_device)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w, b: fastdl.ops.dilated_conv1d(x, w, b, **args), inputs)


def _raw_args_2d(config, device, bias=True, dtype=torch.float32):
    x, weight, b, args = make_2d(config, dtype, device, bias=bias)
    (pt, pb), (pl, pr) = _sides_2d(weight, args)
    return x, weight, b, [list(_pair(args["stride"])), [pt, pl], [pb, pr], list(_pair(args["dilation"])),
                          args["groups"]]


# (config, bias): NCHW grouped and channels_last depthwise with a bias, one without, and
# the Winograd path.
@pytest.mark.parametrize("config, bias", [(GROUPED_2D, True), (DEPTHWISE_CL_2D, True), (GROUPED_2D, False),
                                          (WINOGRAD_2D[0], True)],
                         ids=["grouped-bias", "depthwise_cl-bias", "grouped-no_bias", "winograd-bias"])
def test_opcheck_conv2d(plain_device, config, bias):
    x, weight, b, conv_args = _raw_args_2d(config, plain_device, bias)
    torch.library.opcheck(OP2D, (x, weight, b, *conv_args))
    grads = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
    torch.library.opcheck(OP2D, (*grads, *conv_args))
    grad_out = OP2D(x, weight, b, *conv_args).detach().clone()
    for mask in ([True, True, bias], [True, False, False], [False, False, True]):
        torch.library.opcheck(BACKWARD2D, (grad_out, x, weight, *conv_args, mask))
    # differentiable itself (second derivatives)
    torch.library.opcheck(BACKWARD2D, (grad_out.requires_grad_(), *grads[:2], *conv_args,
                                       [True, True, bias]))


@pytest.mark.parametrize("config, bias", [(GROUPED_1D, True), (CAUSAL_1D, True), (CAUSAL_1D, False)],
                         ids=["grouped-bias", "causal-bias", "causal-no_bias"])
def test_opcheck_conv1d(plain_device, config, bias):
    x, weight, b, args = make_1d(config, torch.float32, plain_device, bias=bias)
    k, d = weight.shape[2], args["dilation"]
    left, right = (d * (k - 1), 0) if args["causal"] else side_padding(args["padding"], k, d)
    conv_args = [args["stride"], left, right, d, args["groups"]]
    torch.library.opcheck(OP1D, (x, weight, b, *conv_args))
    grads = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
    torch.library.opcheck(OP1D, (*grads, *conv_args))
    grad_out = OP1D(x, weight, b, *conv_args).detach().clone()
    for mask in ([True, True, bias], [True, False, False], [False, False, True]):
        torch.library.opcheck(BACKWARD1D, (grad_out, x, weight, *conv_args, mask))
    torch.library.opcheck(BACKWARD1D, (grad_out.requires_grad_(), *grads[:2], *conv_args,
                                       [True, True, bias]))


def test_opcheck_conv1d_transposed_input(plain_device):
    """The fake kernel's strides must match the real output's for a (N, L, C) sequence
    transposed to (N, C, L)."""
    x = torch.randn(2, 19, 4, device=plain_device).transpose(1, 2)
    weight = torch.randn(6, 4, 3, device=plain_device)
    torch.library.opcheck(OP1D, (x, weight, None, 1, 2, 2, 2, 1))
    grad_out = torch.randn(2, 6, 19, device=plain_device)
    torch.library.opcheck(BACKWARD1D, (grad_out, x, weight, 1, 2, 2, 2, 1, [True, True, False]))


def test_fake_kernels_on_meta():
    x = torch.empty(2, 6, 9, 11, device="meta").contiguous(memory_format=torch.channels_last)
    out = fastdl.ops.dilated_conv2d(x, torch.empty(4, 3, 3, 2, device="meta"), None, 2, "valid", 2, 2)
    assert out.shape == (2, 4, 3, 5) and out.device.type == "meta"
    assert out.is_contiguous(memory_format=torch.channels_last)
    out = fastdl.ops.dilated_conv1d(torch.empty(3, 4, 50, device="meta"), torch.empty(8, 4, 2, device="meta"),
                                    dilation=16, causal=True)
    assert out.shape == (3, 8, 50)


def test_large_planes_read_only_the_input(device):
    """The lane kernels read the input in place. GCC's vectorizer once made the scalar
    build load the next channel's first values after the last one, past the end of
    this 4 MB plane (a segfault); the scalar file now builds without it."""
    x = torch.randn(1, 1, 1024, 1024, device=device)
    weight = torch.randn(2, 1, 1, 1, device=device)
    torch.testing.assert_close(fastdl.ops.dilated_conv2d(x, weight), F.conv2d(x, weight))
    x = torch.randn(1, 1, 1 << 20, device=device)
    weight = torch.randn(2, 1, 1, device=device)
    torch.testing.assert_close(fastdl.ops.dilated_conv1d(x, weight), F.conv1d(x, weight))


# ---------------------------------------------------------------- empty and too small


def test_empty_batch(device):
    x = torch.empty(0, 4, 8, 9, device=device, requires_grad=True)
    weight = torch.randn(6, 2, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(6, device=device, requires_grad=True)
    out = fastdl.ops.dilated_conv2d(x, weight, bias, 2, 2, 2, 2)
    assert out.shape == F.conv2d(x, weight, bias, 2, 2, 2, 2).shape == (0, 6, 4, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))
    x_cl = torch.empty(0, 4, 8, 9, device=device).contiguous(memory_format=torch.channels_last)
    grads = BACKWARD2D(torch.empty(0, 6, 4, 5, device=device), x_cl, weight.detach(), [2, 2], [2, 2], [2, 2],
                       [2, 2], 2, [True, True, True])
    assert grads[0].shape == x_cl.shape
    assert torch.equal(grads[1], torch.zeros_like(weight)) and torch.equal(grads[2], torch.zeros(6, device=device))

    x1 = torch.empty(0, 3, 20, device=device, requires_grad=True)
    w1 = torch.randn(5, 3, 2, device=device, requires_grad=True)
    out = fastdl.ops.dilated_conv1d(x1, w1, None, dilation=8, causal=True)
    assert out.shape == (0, 5, 20)
    out.sum().backward()
    assert x1.grad.shape == x1.shape and torch.equal(w1.grad, torch.zeros_like(w1))


def test_input_of_no_rows_or_columns(device):
    """Height or length 0 with padding: the output is all padding (the bias), as
    F.conv2d/F.conv1d on the padded input give, and the input's gradient is empty."""
    x = torch.randn(1, 2, 0, 5, device=device, requires_grad=True)
    weight = torch.randn(3, 2, 1, 1, device=device, requires_grad=True)
    bias = torch.randn(3, device=device, requires_grad=True)
    out = fastdl.ops.dilated_conv2d(x, weight, bias, 1, ((1, 0), (0, 0)), 1, 1)
    with exact_cudnn():
        expected = F.conv2d(F.pad(x, (0, 0, 1, 0)), weight, bias)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    torch.testing.assert_close(bias.grad, torch.full_like(bias, 5.0))

    x1 = torch.randn(2, 3, 0, device=device, requires_grad=True)
    w1 = torch.randn(4, 3, 2, device=device, requires_grad=True)
    out = fastdl.ops.dilated_conv1d(x1, w1, None, padding=(1, 1))
    with exact_cudnn():
        expected = F.conv1d(F.pad(x1, (1, 1)), w1)
    assert out.shape == expected.shape == (2, 4, 1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x1.grad.shape == x1.shape


def test_input_too_small():
    x, weight = torch.randn(2, 4, 5, 9), torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d: input height 5 with padding \(0, 0\) is "
                       r"too small for kernel size 3 with dilation 3"):
        fastdl.ops.dilated_conv2d(x, weight, dilation=3)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d: input width 9 with padding \(1, 0\) is "
                       r"too small for kernel size 3 with dilation 5"):
        fastdl.ops.dilated_conv2d(x, weight, padding=((0, 0), (1, 0)), dilation=(1, 5))
    # One more zero makes it fit: a 1-wide output.
    assert fastdl.ops.dilated_conv2d(x, weight, padding=((0, 0), (1, 1)), dilation=(1, 5)).shape == (2, 3, 3, 1)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d: input height 0"):
        fastdl.ops.dilated_conv2d(torch.randn(1, 4, 0, 9), torch.randn(3, 4, 1, 1))


# ---------------------------------------------------------------- torch.compile, threads


def _block(x, seq, w2, b2, w1, b1):
    y = torch.relu(fastdl.ops.dilated_conv2d(x, w2, b2, padding="same", dilation=(2, 3), groups=2))
    z = torch.tanh(fastdl.ops.dilated_conv1d(seq * 2, w1, b1, dilation=4, causal=True))
    return y.sum(dim=(1, 2)) + z.sum(dim=1)[:, :y.shape[3]]


def _block_inputs(device):
    g = _generator(8)
    return [_randn(s, torch.float32, device, g) for s in
            ((2, 4, 9, 10), (2, 3, 30), (6, 2, 3, 2), (6,), (5, 3, 2), (5,))]


def test_under_torch_compile(plain_device):
    inputs = _block_inputs(plain_device)
    compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
    grad_out = torch.randn(2, 10, device=plain_device)
    ours = outputs_and_grads(compiled, inputs, grad_out)
    eager = outputs_and_grads(_block, inputs, grad_out)
    for a, e in zip(ours, eager):
        assert_close(a, e)


def test_under_inductor():
    inputs = _block_inputs("cpu")
    compiled = torch.compile(_block, fullgraph=True)
    assert_close(compiled(*inputs), _block(*inputs))


def _everything(dtype, device):
    results = []
    x, weight, bias, args = make_2d((3, 6, 9, 1, 11, 70, 3, 1, 2, 2, "nchw"), dtype, device)
    results += outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), [x, weight, bias],
                                 _randn(_out_shape_2d(x, weight, args), dtype, device, _generator(9)))
    x, weight, bias, args = make_2d((2, 6, 6, 2, 9, 13, (3, 5), 2, ((1, 2), (3, 0)), (2, 1), "cl"), dtype, device)
    results += outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), [x, weight, bias],
                                 _randn(_out_shape_2d(x, weight, args), dtype, device, _generator(10)))
    x, weight, bias, args = make_1d((2, 5, 24, 1, 2100, 2, 1, 0, 32, True, "contiguous"), dtype, device)  # pairs
    results += outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv1d(x, w, b, **args), [x, weight, bias],
                                 _randn(_out_shape_1d(x, weight, args), dtype, device, _generator(11)))
    x, weight, bias, args = make_2d((2, 9, 70, 1, 7, 20, 3, 1, 3, 3, "nchw"), dtype, device)  # lanes
    results += outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args), [x, weight, bias],
                                 _randn(_out_shape_2d(x, weight, args), dtype, device, _generator(12)))
    # Winograd: two tasks; one task, whose GEMMs MKL may thread itself
    for config, seed in ((WINOGRAD_2D[-1], 13), (WINOGRAD_2D[0], 14)):
        x, weight, bias, args = make_2d(config, dtype, device)
        results += outputs_and_grads(lambda x, w, b: fastdl.ops.dilated_conv2d(x, w, b, **args),
                                     [x, weight, bias],
                                     _randn(_out_shape_2d(x, weight, args), dtype, device, _generator(seed)))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_thread_count(device, dtype):
    skip_redundant_float64(device, dtype)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(_everything(dtype, device))
    finally:
        torch.set_num_threads(previous)
    for i, (a, e) in enumerate(zip(*runs)):
        assert torch.equal(a, e), i


# ---------------------------------------------------------------- bad input


def _valid2d():
    return torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3), torch.randn(6)


@pytest.mark.parametrize(
    "mutate, kwargs, error, message",
    [
        (lambda x, w, b: (x[0], w, b), {}, ValueError,
         r"fastdl.dilated_conv2d: input must have shape \(N, C, H, W\), got \(4, 8, 8\)"),
        (lambda x, w, b: (x[..., None], w, b), {}, ValueError,
         r"fastdl.dilated_conv2d: input must have shape \(N, C, H, W\), got \(2, 4, 8, 8, 1\)"),
        (lambda x, w, b: (x, w[0], b), {}, ValueError,
         r"fastdl.dilated_conv2d: weight must have shape \(out_channels, C / groups, kH, kW\), got \(2, 3, 3\)"),
        (lambda x, w, b: (x.long(), w.long(), b.long()), {}, TypeError,
         r"fastdl.dilated_conv2d: input must be torch.float32, torch.float64, torch.float16 or "
         r"torch.bfloat16, got torch.int64"),
        (lambda x, w, b: (x, w.double(), b), {}, TypeError,
         r"fastdl.dilated_conv2d: input and weight must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x, w, b.double()), {}, TypeError,
         r"fastdl.dilated_conv2d: input and bias must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x, w, b[:5]), {}, ValueError,
         r"fastdl.dilated_conv2d: bias must have shape \(out_channels,\), got \(5,\)"),
        (lambda x, w, b: (x, w, b[None]), {}, ValueError,
         r"fastdl.dilated_conv2d: bias must have shape \(out_channels,\), got \(1, 6\)"),
        (lambda x, w, b: (x, w, b), dict(groups=0), ValueError,
         r"fastdl.dilated_conv2d: groups must be >= 1, got 0"),
        (lambda x, w, b: (x, w, b), dict(groups=-2), ValueError,
         r"fastdl.dilated_conv2d: groups must be >= 1, got -2"),
        (lambda x, w, b: (x, w, b), dict(groups=3), ValueError,
         r"fastdl.dilated_conv2d: input channels must be a positive multiple of groups = 3, got 4"),
        (lambda x, w, b: (x[:, :0], w, b), {}, ValueError,
         r"fastdl.dilated_conv2d: input channels must be a positive multiple of groups = 2, got 0"),
        (lambda x, w, b: (x, w[:5], b[:5]), dict(groups=2), ValueError,
         r"fastdl.dilated_conv2d: weight's out_channels must be a positive multiple of groups = 2, "
         r"got \(5, 2, 3, 3\)"),
        (lambda x, w, b: (x, w[:0], b[:0]), {}, ValueError,
         r"fastdl.dilated_conv2d: weight's out_channels must be a positive multiple of groups = 2, "
         r"got \(0, 2, 3, 3\)"),
        (lambda x, w, b: (x, torch.randn(6, 4, 3, 3), b), {}, ValueError,
         r"fastdl.dilated_conv2d: weight must have shape \(out_channels, C / groups = 2, kH, kW\) for input "
         r"\(2, 4, 8, 8\) and groups 2, got \(6, 4, 3, 3\)"),
        (lambda x, w, b: (x, w[:, :, :0], b), {}, ValueError,
         r"fastdl.dilated_conv2d: weight's kernel size must be at least 1, got \(6, 2, 0, 3\)"),
        (lambda x, w, b: (x, w[:, :, :, :0], b), {}, ValueError,
         r"fastdl.dilated_conv2d: weight's kernel size must be at least 1, got \(6, 2, 3, 0\)"),
        (lambda x, w, b: (x, w, b), dict(stride=0), ValueError,
         r"fastdl.dilated_conv2d: stride must be >= 1, got \(0, 0\)"),
        (lambda x, w, b: (x, w, b), dict(stride=(1, -1)), ValueError,
         r"fastdl.dilated_conv2d: stride must be >= 1, got \(1, -1\)"),
        (lambda x, w, b: (x, w, b), dict(dilation=(0, 1)), ValueError,
         r"fastdl.dilated_conv2d: dilation must be >= 1, got \(0, 1\)"),
        (lambda x, w, b: (x, w, b), dict(padding=-1), ValueError,
         r"fastdl.dilated_conv2d: padding_begin must be >= 0, got \(-1, -1\)"),
        (lambda x, w, b: (x, w, b), dict(padding=((0, -2), (1, 1))), ValueError,
         r"fastdl.dilated_conv2d: padding_end must be >= 0, got \(-2, 1\)"),
        (lambda x, w, b: (x, w, b), dict(stride=(1, 1, 1)), ValueError,
         r"fastdl.dilated_conv2d: stride must be an int or a pair of ints, got \(1, 1, 1\)"),
        (lambda x, w, b: (x, w, b), dict(dilation=1.5), ValueError,
         r"fastdl.dilated_conv2d: dilation must be an int or a pair of ints, got 1.5"),
        (lambda x, w, b: (x, w, b), dict(padding=(1, 1, 1)), ValueError,
         r"fastdl.dilated_conv2d: padding must be an int, a pair, 'same', 'valid' or "
         r"\(\(top, bottom\), \(left, right\)\), got \(1, 1, 1\)"),
        (lambda x, w, b: (x, w, b), dict(padding="full"), ValueError,
         r"fastdl.dilated_conv2d: padding must be an int, a \(begin, end\) pair, 'same' or 'valid', got 'full'"),
        (lambda x, w, b: (x, w, b), dict(padding=((1, 2, 3), 0)), ValueError,
         r"fastdl.dilated_conv2d: padding must be an int, a \(begin, end\) pair, 'same' or 'valid', "
         r"got \(1, 2, 3\)"),
        (lambda x, w, b: (x, w, b), dict(padding=((1, "a"), 0)), ValueError,
         r"fastdl.dilated_conv2d: padding must be an int, a \(begin, end\) pair, 'same' or 'valid', "
         r"got \(1, 'a'\)"),
        (lambda x, w, b: (x[:, :, :2], w, b), dict(dilation=2), ValueError,
         r"fastdl.dilated_conv2d: input height 2 with padding \(0, 0\) is too small for kernel size 3 "
         r"with dilation 2"),
    ],
)
def test_conv2d_bad_input(mutate, kwargs, error, message):
    x, w, b = mutate(*_valid2d())
    with pytest.raises(error, match=message):
        fastdl.ops.dilated_conv2d(x, w, b, **(dict(groups=2) | kwargs))


def test_conv2d_non_int_padding_is_a_clear_error():
    """A float padding is refused with a message naming the op and the argument (not a
    bare "'float' object is not iterable")."""
    x, w, b = _valid2d()
    for padding in (1.5, (1.5, 1), None):
        with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d: padding must be"):
            fastdl.ops.dilated_conv2d(x, w, b, padding=padding, groups=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (([1], [0, 0], [0, 0], [1, 1]), r"fastdl.dilated_conv2d: stride must have 2 values, got 1"),
        (([1, 1], [0, 0, 0], [0, 0], [1, 1]), r"fastdl.dilated_conv2d: padding_begin must have 2 values, got 3"),
        (([1, 1], [0, 0], [0], [1, 1]), r"fastdl.dilated_conv2d: padding_end must have 2 values, got 1"),
        (([1, 1], [0, 0], [0, 0], [1, 1, 1]), r"fastdl.dilated_conv2d: dilation must have 2 values, got 3"),
        (([1, 1], [0, -1], [0, 0], [1, 1]), r"fastdl.dilated_conv2d: padding_begin must be >= 0, got \(0, -1\)"),
    ],
)
def test_conv2d_raw_op_argument_counts(args, message):
    x, w, b = _valid2d()
    with pytest.raises(ValueError, match=message):
        OP2D(x, w, b, *args, 2)


def test_conv2d_raw_op_weight_dims():
    x, w, b = _valid2d()
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d: weight must have shape "
                       r"\(out_channels, C / groups, kH, kW\), got \(6, 2, 3\)"):
        OP2D(x, w[..., 0], b, [1, 1], [0, 0], [0, 0], [1, 1], 2)


def test_bad_device():
    x, w, b = _valid2d()
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv2d: input and weight must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.dilated_conv2d(x, w.to("meta"), b, groups=2)
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv2d: input and bias must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.dilated_conv2d(x, w, b.to("meta"), groups=2)
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv1d: input and weight must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.dilated_conv1d(x[:, :, 0], w[..., 0].to("meta"), groups=2)


@requires_cuda
def test_bad_device_in_the_raw_ops():
    x, w, b = _valid2d()
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv2d: input and weight must be on the same device"):
        OP2D(x.cuda(), w, None, [1, 1], [0, 0], [0, 0], [1, 1], 2)
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv2d: input and bias must be on the same device"):
        OP2D(x.cuda(), w.cuda(), b, [1, 1], [0, 0], [0, 0], [1, 1], 2)
    with pytest.raises(RuntimeError, match="fastdl.dilated_conv2d_backward: input and grad_output must be on "
                       "the same device"):
        BACKWARD2D(torch.randn(2, 6, 6, 6), x.cuda(), w.cuda(), [1, 1], [0, 0], [0, 0], [1, 1], 2,
                   [True, True, True])


def _valid1d():
    return torch.randn(2, 4, 20), torch.randn(6, 2, 3), torch.randn(6)


@pytest.mark.parametrize(
    "mutate, kwargs, error, message",
    [
        (lambda x, w, b: (x[0], w, b), {}, ValueError,
         r"fastdl.dilated_conv1d: input must have shape \(N, C, L\), got \(4, 20\)"),
        (lambda x, w, b: (x[..., None], w, b), {}, ValueError,
         r"fastdl.dilated_conv1d: input must have shape \(N, C, L\), got \(2, 4, 20, 1\)"),
        (lambda x, w, b: (x, w[..., None], b), {}, ValueError,
         r"fastdl.dilated_conv1d: weight must have shape \(out_channels, C / groups, k\), got \(6, 2, 3, 1\)"),
        (lambda x, w, b: (x, w, b), dict(causal=True, padding=1), ValueError,
         r"fastdl.dilated_conv1d: causal=True sets the padding itself; padding must be 0, got 1"),
        (lambda x, w, b: (x, w, b), dict(causal=True, padding="same"), ValueError,
         r"fastdl.dilated_conv1d: causal=True sets the padding itself; padding must be 0, got 'same'"),
        (lambda x, w, b: (x, w, b), dict(padding="causal"), ValueError,
         r"fastdl.dilated_conv1d: padding must be an int, a \(begin, end\) pair, 'same' or 'valid', got 'causal'"),
        (lambda x, w, b: (x, w, b), dict(padding=(1, 2, 3)), ValueError,
         r"fastdl.dilated_conv1d: padding must be an int, a \(begin, end\) pair, 'same' or 'valid', "
         r"got \(1, 2, 3\)"),
    ],
)
def test_conv1d_bad_input(mutate, kwargs, error, message):
    x, w, b = mutate(*_valid1d())
    with pytest.raises(error, match=message):
        fastdl.ops.dilated_conv1d(x, w, b, **(dict(groups=2) | kwargs))


@pytest.mark.parametrize(
    "mutate, kwargs, error, message",
    [
        (lambda x, w, b: (x.long(), w.long(), b.long()), {}, TypeError,
         r"input must be torch.float32, torch.float64, torch.float16 or torch.bfloat16, got torch.int64"),
        (lambda x, w, b: (x, w.double(), b), {}, TypeError,
         r"input and weight must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x, w, b.double()), {}, TypeError,
         r"input and bias must have the same dtype, got torch.float32 and torch.float64"),
        (lambda x, w, b: (x, w, b[:5]), {}, ValueError, r"bias must have shape \(out_channels,\), got \(5,\)"),
        (lambda x, w, b: (x, w, b), dict(groups=0), ValueError, r"groups must be >= 1, got 0"),
        (lambda x, w, b: (x, w, b), dict(groups=3), ValueError,
         r"input channels must be a positive multiple of groups = 3, got 4"),
        (lambda x, w, b: (x, w[:5], b[:5]), {}, ValueError,
         r"weight's out_channels must be a positive multiple of groups = 2, got \(5, 2, 3\)"),
        (lambda x, w, b: (x, torch.randn(6, 3, 3), b), {}, ValueError,
         r"weight must have shape \(out_channels, C / groups = 2, k\) for input \(2, 4, 20\) and groups 2, "
         r"got \(6, 3, 3\)"),
        (lambda x, w, b: (x, w[..., :0], b), {}, ValueError,
         r"weight's kernel size must be at least 1, got \(6, 2, 0\)"),
        (lambda x, w, b: (x, w, b), dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
        (lambda x, w, b: (x, w, b), dict(dilation=0), ValueError, r"dilation must be >= 1, got 0"),
        (lambda x, w, b: (x, w, b), dict(padding=(-1, 0)), ValueError, r"padding_left must be >= 0, got -1"),
        (lambda x, w, b: (x, w, b), dict(padding=(0, -3)), ValueError, r"padding_right must be >= 0, got -3"),
        (lambda x, w, b: (x, w, b), dict(dilation=10), ValueError,
         r"input length 20 with padding \(0, 0\) is too small for kernel size 3 with dilation 10"),
    ],
)
def test_conv1d_checks_name_the_1d_op(mutate, kwargs, error, message):
    """The 1-D op runs the 2-D front end on (N, C, 1, L) views; its messages must still
    name fastdl.dilated_conv1d, its arguments and the shapes the caller passed."""
    x, w, b = mutate(*_valid1d())
    with pytest.raises(error, match="fastdl.dilated_conv1d: " + message):
        fastdl.ops.dilated_conv1d(x, w, b, **(dict(groups=2) | kwargs))


def test_conv1d_raw_op_weight_dims():
    x, w, b = _valid1d()
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv1d: weight must have shape "
                       r"\(out_channels, C / groups, k\), got \(6, 2\)"):
        OP1D(x, w[..., 0], b, 1, 0, 0, 1, 2)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv1d_backward: input must have shape \(N, C, L\), "
                       r"got \(2, 4, 20, 1\)"):
        BACKWARD1D(torch.randn(2, 6, 18), x[..., None], w, 1, 0, 0, 1, 2, [True, True, True])


def test_conv2d_backward_checks():
    x, w, _ = _valid2d()
    args = ([1, 1], [0, 0], [0, 0], [1, 1], 2, [True, True, True])
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d_backward: grad_output must have shape "
                       r"\(N, out_channels, out_H, out_W\) of the forward output, got \(2, 6, 5, 6\)"):
        BACKWARD2D(torch.randn(2, 6, 5, 6), x, w, *args)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d_backward: grad_output must have shape "
                       r"\(N, out_channels, out_H, out_W\) of the forward output, got \(6, 6, 6\)"):
        BACKWARD2D(torch.randn(6, 6, 6), x, w, *args)
    with pytest.raises(TypeError, match=r"fastdl.dilated_conv2d_backward: input and grad_output must have the "
                       r"same dtype, got torch.float32 and torch.float64"):
        BACKWARD2D(torch.randn(2, 6, 6, 6, dtype=torch.float64), x, w, *args)
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d_backward: groups must be >= 1, got 0"):
        BACKWARD2D(torch.randn(2, 6, 6, 6), x, w, *args[:4], 0, args[5])
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv2d_backward: input must have shape"):
        BACKWARD2D(torch.randn(2, 6, 6, 6), x[0], w, *args)


def test_conv1d_backward_checks():
    x, w, _ = _valid1d()
    args = (1, 0, 0, 1, 2, [True, True, True])
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv1d_backward: grad_output must have shape "
                       r"\(N, out_channels, out_L\), got \(2, 6, 1, 18\)"):
        BACKWARD1D(torch.randn(2, 6, 1, 18), x, w, *args)
    # The right rank but the wrong length: the message names the 1-D op and its shapes.
    with pytest.raises(ValueError, match=r"fastdl.dilated_conv1d_backward: grad_output must have shape "
                       r"\(N, out_channels, out_L\).*got \(2, 6, 17\)"):
        BACKWARD1D(torch.randn(2, 6, 17), x, w, *args)
