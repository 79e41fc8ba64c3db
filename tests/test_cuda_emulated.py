"""The CUDA kernels, run on the CPU by the emulator in tests/cuda_emu, against fastdl's
CPU ops (which the other test files hold to PyTorch's). Every launch path of every
op registered for CUDA is called here: tiles with halos and partial edges, split
reductions, warp shuffles, tensor-core (wmma) tiles, 16-bit types.

Opt in with FASTDL_CUDA_EMU=1, or FASTDL_CUDA_EMU=asan for a build with AddressSanitizer
(CI runs that; the command is in the README): the first run compiles the .cu files as
C++, a minute or two. Needs the CUDA headers, not a GPU. What passing means, and what it
cannot show (speed, races between threads that run at once), is in
tests/cuda_emu/emu_runtime.h."""

import os

import pytest
import torch
import torch.nn.functional as F

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
from conftest import TOLERANCES, TOLERANCES_VS_FLOAT64
from cuda_emu import build

pytestmark = [
    pytest.mark.skipif(os.environ.get("FASTDL_CUDA_EMU") not in ("1", "asan"),
                       reason="set FASTDL_CUDA_EMU=1 (or asan) to run the CUDA kernels on the emulator"),
    pytest.mark.skipif(build.cuda_home() is None, reason="no CUDA headers (CUDA_HOME)"),
]

# Ops whose CUDA registration is device-agnostic C++ over the ops below (it calls them
# through the dispatcher, so on a GPU it runs the kernels tested here): nothing of their
# own to emulate.
COMPOSITES = {"xnor_conv2d", "lstm_layer", "lstm_layer_backward", "gru_layer", "gru_layer_backward"}

FLOAT_TYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emu():
    """The emulated ops (built once per test run; the emulator's self-test kernels are
    loaded with them, as torch.ops.fastdl_emu_selftest)."""
    build.load()
    return torch.ops.fastdl_emu


def cpu_op(name):
    return getattr(torch.ops.fastdl, name)


def assert_same(emulated, reference, sums=False):
    """Results of the emulated CUDA op against the CPU op; ``sums``: reductions over
    many values, whose rounding depends on the order."""
    if isinstance(emulated, (tuple, list)):
        assert len(emulated) == len(reference)
        for e, r in zip(emulated, reference):
            assert_same(e, r, sums)
        return
    if reference is None:  # an output the mask did not ask for
        assert emulated is None
        return
    assert emulated.dtype == reference.dtype and emulated.shape == reference.shape
    if emulated.is_floating_point():
        tolerances = (TOLERANCES_VS_FLOAT64 if sums else TOLERANCES)[emulated.dtype]
        if emulated.dtype in (torch.float16, torch.bfloat16):
            # the CPU ops compute 16-bit types through float32 copies, the CUDA ones in
            # float32 registers; each rounds its own intermediate values
            tolerances = dict(rtol=2 * tolerances["rtol"], atol=4 * tolerances["atol"])
        torch.testing.assert_close(emulated, reference, equal_nan=True, **tolerances)
    else:
        assert torch.equal(emulated, reference)


def randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def test_emulator_shuffles(emu):
    """Each lane gets its source lane's value; a source outside the lane's segment
    of ``width`` lanes leaves the lane its own value."""
    out = torch.ops.fastdl_emu_selftest.shuffles(torch.empty(0))
    lanes = torch.arange(64)
    down = torch.where(lanes % 16 + 3 < 16, lanes + 3, lanes)
    expected = torch.stack([lanes ^ 5, down, lanes // 8 * 8 + 7])
    assert torch.equal(out, expected)


def test_emulator_wmma(emu):
    a = randn(16, 16, dtype=torch.float16)
    b = randn(16, 16, dtype=torch.float16, seed=1)
    out = torch.ops.fastdl_emu_selftest.wmma_product(a, b.t().contiguous())
    torch.testing.assert_close(out, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


def test_emulator_reports_barriers_threads_do_not_all_reach(emu):
    divergent = torch.ops.fastdl_emu_selftest.divergent
    assert torch.equal(divergent(torch.empty(0), 0), torch.ones(64))
    with pytest.raises(RuntimeError, match=r"block \(0, 0, 0\) wait at different __syncthreads: "
                                           r".*selftest_cuda.cu:\d+ and .*selftest_cuda.cu:\d+"):
        divergent(torch.empty(0), 1)
    with pytest.raises(RuntimeError, match=r"deadlock in block \(0, 0, 0\): 32 threads wait at "
                                           r"__syncthreads and 32 at a warp-wide call"):
        divergent(torch.empty(0), 2)


def test_every_cuda_op_is_emulated_and_tested(emu):
    """The emulated library holds the CUDA kernels of every op that has one, and each
    is called by a test in this file."""
    emulated = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                if n.startswith("fastdl_emu::")
                and torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")}
    with_cuda = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                 if n.startswith("fastdl::")
                 and torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")} - COMPOSITES
    source = open(__file__).read()
    assert emulated, "no emulated op registered"
    if fastdl._C.cuda_compiled:
        assert with_cuda, "a CUDA build without CUDA kernels"
        assert with_cuda <= emulated, f"CUDA kernels the emulator lacks: {sorted(with_cuda - emulated)}"
    untested = sorted(n for n in emulated if f'"{n}"' not in source)
    assert not untested, f"emulated ops without a test here: {untested}"


# --- depthwise convolution ------------------------------------------------------------

DEPTHWISE_CASES = [
    # kernel, stride, padding, dilation, multiplier, channels_last, (C, H, W); small
    # NCHW planes: several in a block, the last block part full
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, False, (5, 11, 9)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 1, True, (5, 11, 9)),
    ((5, 5), (1, 1), (2, 2), (1, 1), 2, False, (5, 11, 9)),
    ((7, 7), (1, 1), (3, 3), (1, 1), 1, True, (5, 11, 9)),
    ((2, 3), (2, 1), (0, 1), (2, 1), 1, False, (5, 11, 9)),
    ((3, 3), (1, 2), (2, 0), (2, 3), 3, True, (5, 11, 9)),
    # tiles: two tile rows and columns with partial edges (37 x 45 outputs, 32 x 32
    # tiles), 16-wide tiles, strides and dilations in the halo, the sliding window of
    # other kernels, grad_input through the flipped-kernel convolution (stride 1,
    # multiplier 1) and its negative padding
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, False, (5, 37, 45)),
    ((5, 5), (1, 1), (2, 2), (1, 1), 1, False, (5, 37, 45)),
    ((7, 7), (1, 1), (3, 3), (1, 1), 1, False, (5, 20, 17)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 2, False, (5, 37, 45)),
    ((3, 3), (1, 1), (4, 4), (2, 3), 1, False, (5, 33, 35)),
    ((9, 9), (1, 1), (4, 4), (1, 1), 1, False, (5, 21, 34)),
    ((4, 6), (1, 1), (3, 1), (1, 2), 1, False, (5, 19, 26)),
    ((3, 5), (2, 1), (2, 2), (2, 1), 1, False, (5, 40, 36)),  # no window: row stride 2
    ((3, 3), (1, 1), (0, 0), (1, 1), 1, False, (5, 18, 18)),
    ((3, 3), (1, 1), (0, 0), (60, 60), 1, False, (2, 130, 130)),  # direct: tile > 48 KiB
    ((3, 3), (1, 1), (3, 3), (1, 1), 1, False, (5, 16, 16)),
    ((5, 5), (1, 1), (2, 2), (1, 1), 1, False, (3, 64, 80)),  # grad_weight in 2 chunks
    # channels_last, several outputs per thread: the register window (column stride 1
    # or 2, dilation 1) or the sliding one (other kernels), a row end inside a
    # thread's outputs, channels past a warp and past grad_weight's 32-channel blocks
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, True, (37, 24, 24)),  # grad_weight in 3 chunks
    ((5, 5), (1, 1), (2, 2), (1, 1), 1, True, (37, 10, 11)),
    ((7, 7), (1, 1), (3, 3), (1, 1), 1, True, (37, 9, 13)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 1, True, (37, 13, 14)),
    ((7, 7), (2, 2), (3, 3), (1, 1), 1, True, (37, 15, 16)),
    ((5, 5), (2, 1), (2, 2), (2, 1), 1, True, (37, 15, 13)),  # row stride, dilation 2
    ((9, 9), (1, 1), (4, 4), (1, 1), 1, True, (37, 10, 12)),
    ((4, 6), (2, 1), (1, 2), (1, 1), 1, True, (37, 9, 14)),
    ((3, 3), (1, 1), (3, 2), (1, 1), 1, True, (37, 6, 7)),
]


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_conv2d(emu, case, dtype):
    kernel, stride, padding, dilation, multiplier, channels_last, shape = case
    channels = shape[0]
    x = randn(2, *shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(channels * multiplier, 1, *kernel, dtype=dtype, seed=1)
    b = randn(channels * multiplier, dtype=dtype, seed=2)
    args = (x, w, b, stride, padding, dilation)
    out = emu.depthwise_conv2d(*args)
    # sums of up to 81 taps, which the CPU kernels add in another order
    assert_same(out, cpu_op("depthwise_conv2d")(*args), sums=True)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = randn(*out.shape, dtype=dtype, seed=3).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        bargs = (grad, x, w, stride, padding, dilation, mask)
        assert_same(emu.depthwise_conv2d_backward(*bargs),
                    cpu_op("depthwise_conv2d_backward")(*bargs), sums=True)


def test_depthwise_conv2d_with_huge_padding_and_dilation(emu):
    """Strides, dilations and paddings near 2^32 (whose tile sizes overflow int64 when
    multiplied) take the direct kernel instead of a tile: every output reads only
    padding, so it is the bias."""
    x = randn(1, 1, 1, 1)
    w = randn(1, 1, 2, 2, seed=1)
    b = torch.tensor([0.5])
    out = emu.depthwise_conv2d(x, w, b, (1, 1), (2**31, 2**31 - 1), (2**32 - 30, 2**32 - 34))
    assert out.shape == (1, 1, 31, 33)
    assert torch.equal(out, torch.full_like(out, 0.5))


# --- dilated convolution --------------------------------------------------------------

DILATED_2D_CASES = [
    # in, out, kernel, stride, padding begin, padding end, dilation, groups, channels_last
    (6, 10, (3, 3), (1, 1), (2, 2), (2, 2), (2, 2), 1, False),
    (8, 12, (3, 3), (2, 1), (3, 1), (0, 2), (3, 1), 2, True),
    (20, 36, (3, 3), (1, 1), (6, 6), (6, 6), (6, 6), 1, False),
    (4, 4, (2, 5), (1, 2), (0, 0), (1, 3), (1, 2), 4, False),
    (3, 17, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1, True),
    (66, 70, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1, False),  # several 64-wide tiles, partial
]


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("case", DILATED_2D_CASES)
def test_dilated_conv2d(emu, case, dtype):
    cin, cout, kernel, stride, pad_begin, pad_end, dilation, groups, channels_last = case
    x = randn(2, cin, 13, 15, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(cout, cin // groups, *kernel, dtype=dtype, seed=1) / (cin * kernel[0] * kernel[1]) ** 0.5
    b = randn(cout, dtype=dtype, seed=2)
    args = (x, w, b, stride, pad_begin, pad_end, dilation, groups)
    out = emu.dilated_conv2d(*args)
    assert_same(out, cpu_op("dilated_conv2d")(*args), sums=True)
    grad = randn(*out.shape, dtype=dtype, seed=3)
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        bargs = (grad, x, w, stride, pad_begin, pad_end, dilation, groups, mask)
        assert_same(emu.dilated_conv2d_backward(*bargs), cpu_op("dilated_conv2d_backward")(*bargs),
                    sums=True)


DILATED_1D_CASES = [
    # in, out, kernel, stride, padding left, padding right, dilation, groups, length
    (8, 8, 2, 1, 4, 0, 4, 1, 50),      # causal WaveNet layer
    (16, 24, 2, 1, 64, 0, 64, 1, 200),  # a dilation longer than a tile
    (6, 9, 3, 2, 1, 3, 2, 3, 37),
    (5, 7, 1, 1, 0, 0, 1, 1, 33),
]


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("case", DILATED_1D_CASES)
def test_dilated_conv1d(emu, case, dtype):
    cin, cout, kernel, stride, left, right, dilation, groups, length = case
    x = randn(2, cin, length, dtype=dtype)
    w = randn(cout, cin // groups, kernel, dtype=dtype, seed=1) / (cin * kernel) ** 0.5
    b = randn(cout, dtype=dtype, seed=2)
    args = (x, w, b, stride, left, right, dilation, groups)
    out = emu.dilated_conv1d(*args)
    assert_same(out, cpu_op("dilated_conv1d")(*args), sums=True)
    grad = randn(*out.shape, dtype=dtype, seed=3)
    bargs = (grad, x, w, stride, left, right, dilation, groups, [True, True, True])
    assert_same(emu.dilated_conv1d_backward(*bargs), cpu_op("dilated_conv1d_backward")(*bargs),
                sums=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_convolutions_with_non_finite_inputs(emu, dtype):
    """NaN and infinities reach the outputs whose receptive field holds them, as in
    the CPU ops (which follow F.conv2d / F.conv1d), and no other."""
    x = randn(2, 4, 12, 13, dtype=dtype)
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 7, 0] = float("inf")
    x[1, 3, 11, 12] = float("-inf")
    w = randn(4, 1, 3, 3, dtype=dtype, seed=1)
    args = (x, w, None, (1, 1), (1, 1), (2, 2))
    assert_same(emu.depthwise_conv2d(*args), cpu_op("depthwise_conv2d")(*args))
    w2 = randn(6, 4, 3, 3, dtype=dtype, seed=2) / 6
    args = (x, w2, None, (1, 1), (2, 2), (2, 2), (2, 2), 1)
    assert_same(emu.dilated_conv2d(*args), cpu_op("dilated_conv2d")(*args), sums=True)
    x1 = x.flatten(2)
    w1 = randn(5, 4, 2, dtype=dtype, seed=3) / 3
    args = (x1, w1, None, 1, 8, 0, 8, 1)
    assert_same(emu.dilated_conv1d(*args), cpu_op("dilated_conv1d")(*args), sums=True)


@pytest.mark.parametrize("keys", [50, 300])  # one block of keys / keys in several splits
@pytest.mark.parametrize("where", ["nan key", "inf query", "-inf key"])
def test_attention_with_non_finite_inputs(emu, where, keys):
    """A NaN or infinite score makes its row NaN, as on CPU and in
    F.scaled_dot_product_attention, whether or not the keys are split."""
    q = randn(1, 2, 4, 16)
    k = randn(1, 2, keys, 16, seed=1)
    v = randn(1, 2, keys, 16, seed=2)
    if where == "nan key":
        k[0, 0, 3, 5] = float("nan")
    elif where == "inf query":
        q[0, 1, 2, 7] = float("inf")
    else:
        k[0, 1, 7, 0] = float("-inf")
    args = (q, k, v, None, False, 0.25, 0.0, 0)
    out, lse = emu.attention(*args)
    assert_same((out, lse), cpu_op("attention")(*args), sums=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.25), equal_nan=True,
                               **TOLERANCES_VS_FLOAT64[torch.float32])


def test_strided_inputs(emu):
    """Views with gaps and permuted strides, as models pass them (attention's heads
    split from (B, N, H, D), slices of wider maps), give what contiguous copies give."""
    wide = randn(2, 6, 13, 20)[:, 1:5, :, ::2]  # (2, 4, 13, 10), strided in W and C
    w = randn(4, 1, 3, 3, seed=1)
    args = (wide, w, None, (1, 1), (1, 1), (1, 1))
    assert_same(emu.depthwise_conv2d(*args), cpu_op("depthwise_conv2d")(wide.contiguous(), *args[1:]))
    w2 = randn(5, 4, 3, 3, seed=2) / 6
    args = (wide, w2, None, (1, 1), (2, 2), (2, 2), (2, 2), 1)
    assert_same(emu.dilated_conv2d(*args), cpu_op("dilated_conv2d")(wide.contiguous(), *args[1:]),
                sums=True)
    x1 = randn(2, 8, 40)[:, ::2]
    w1 = randn(5, 4, 2, seed=3) / 3
    args = (x1, w1, None, 1, 4, 0, 4, 1)
    assert_same(emu.dilated_conv1d(*args), cpu_op("dilated_conv1d")(x1.contiguous(), *args[1:]),
                sums=True)
    q, k, v = (randn(2, 19, 3, 16, seed=s).transpose(1, 2) for s in (4, 5, 6))  # (B, H, N, D)
    out, lse = emu.attention(q, k, v, None, True, 0.25, 0.0, 0)
    reference = cpu_op("attention")(q.contiguous(), k.contiguous(), v.contiguous(), None, True, 0.25, 0.0, 0)
    assert_same((out, lse), reference, sums=True)
    grad = randn(2, 19, 3, 16, seed=7).transpose(1, 2)
    assert_same(emu.attention_backward(grad, q, k, v, out, lse, None, True, 0.25, 0.0, 0),
                cpu_op("attention_backward")(grad.contiguous(), q.contiguous(), k.contiguous(),
                                             v.contiguous(), out, lse, None, True, 0.25, 0.0, 0),
                sums=True)
    gates = randn(6, 40)[::2, :28]  # (3, 28): hidden 7, rows 80 values apart
    c_prev = randn(3, 14, seed=8)[:, ::2]
    assert_same(emu.lstm_cell(gates, c_prev), cpu_op("lstm_cell")(gates.contiguous(), c_prev.contiguous()))
    boxes, scores = random_boxes(50, seed=9)
    boxes_t = boxes.t().contiguous().t()  # column-major
    assert_same(emu.nms(boxes_t, scores[::1], 0.5), cpu_op("nms")(boxes, scores, 0.5))


# --- batch norm + activation ----------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("shape, channels_last", [
    ((3, 5, 7, 9), False), ((3, 6, 5, 4), True), ((40, 3), False), ((2, 4, 300), False),
    ((4, 3, 40, 30), False), ((2, 6, 9, 8), True),  # reductions in several splits
])
@pytest.mark.parametrize("activation, residual", [("relu", False), ("leaky_relu", True), ("none", False)])
def test_batch_norm(emu, shape, channels_last, activation, residual, dtype):
    x = randn(*shape, dtype=dtype) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    weight = randn(c, seed=1).to(dtype)
    bias = randn(c, seed=2).to(dtype)
    res = randn(*shape, dtype=dtype, seed=4).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format) if residual else None
    eps, slope = 1e-5, 0.1
    assert_same(emu.batch_norm_stats(x), cpu_op("batch_norm_stats")(x), sums=True)
    train = (x, weight, bias, res, eps, activation, slope)
    out, mean, var = emu.batch_norm_act_train(*train)
    assert_same((out, mean, var), cpu_op("batch_norm_act_train")(*train), sums=True)
    ev = (x, mean, var, weight, bias, res, eps, activation, slope)
    assert_same(emu.batch_norm_act(*ev), cpu_op("batch_norm_act")(*ev))
    grad = randn(*shape, dtype=dtype, seed=3)
    for batch_stats in (True, False):
        bargs = (grad, x, mean, var, weight, bias, res, eps, activation, slope, batch_stats,
                 [True, True, True, residual])
        assert_same(emu.batch_norm_act_backward(*bargs), cpu_op("batch_norm_act_backward")(*bargs),
                    sums=True)
    rargs = (grad, x, mean, var, weight, bias, res, eps, activation, slope, True)
    reduced = emu.batch_norm_act_backward_reduce(*rargs)
    assert_same(reduced, cpu_op("batch_norm_act_backward_reduce")(*rargs), sums=True)
    count = x.numel() // c
    iargs = (grad, x, mean, var, weight, bias, res, reduced[0] / count, reduced[1] / count, eps,
             activation, slope, [True, residual])
    assert_same(emu.batch_norm_act_backward_input(*iargs),
                cpu_op("batch_norm_act_backward_input")(*iargs), sums=True)


# --- recurrent cells ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("batch, hidden", [(1, 1), (3, 7), (5, 67)])
def test_lstm_cell(emu, batch, hidden, dtype):
    gates = randn(batch, 4 * hidden, dtype=dtype) * 2
    c_prev = randn(batch, hidden, dtype=dtype, seed=1)
    h, c, activated = emu.lstm_cell(gates, c_prev)
    assert_same((h, c, activated), cpu_op("lstm_cell")(gates, c_prev))
    grad_h, grad_c = randn(batch, hidden, dtype=dtype, seed=2), randn(batch, hidden, dtype=dtype, seed=3)
    args = (grad_h, grad_c, activated, c_prev, c)
    assert_same(emu.lstm_cell_backward(*args), cpu_op("lstm_cell_backward")(*args))


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("batch, hidden", [(1, 1), (3, 7), (5, 67)])
def test_gru_cell(emu, batch, hidden, dtype):
    x_gates = randn(batch, 3 * hidden, dtype=dtype) * 2
    h_gates = randn(batch, 3 * hidden, dtype=dtype, seed=1) * 2
    h_prev = randn(batch, hidden, dtype=dtype, seed=2)
    h, saved = emu.gru_cell(x_gates, h_gates, h_prev)
    assert_same((h, saved), cpu_op("gru_cell")(x_gates, h_gates, h_prev))
    grad_h = randn(batch, hidden, dtype=dtype, seed=3)
    assert_same(emu.gru_cell_backward(grad_h, saved, h_prev),
                cpu_op("gru_cell_backward")(grad_h, saved, h_prev))


# --- NMS ------------------------------------------------------------------------------

def random_boxes(n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], 1).to(dtype), torch.rand(n, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 300])
def test_nms(emu, n, dtype):
    boxes, scores = random_boxes(n, seed=n, dtype=dtype)
    if n > 10:
        scores[3] = scores[7]  # a tie: the stable order keeps the lower index first
        boxes[5] = boxes[4]
        scores[9] = float("nan")  # fastdl.ops.nms ranks NaN scores first
        boxes[11, 2:] = boxes[11, :2]  # zero area
        boxes[12, 0] = float("-inf")
    # the CPU op takes float32 and float64; float16 boxes compare with their float32
    # copies, as the CUDA kernel computes the overlaps in float32
    wide = (boxes.float(), scores.float()) if dtype == torch.float16 else (boxes, scores)
    for threshold in (0.0, 0.3, 0.7):
        assert_same(emu.nms(boxes, scores, threshold), cpu_op("nms")(*wide, threshold))
    idxs = torch.arange(n) % 3
    assert_same(emu.batched_nms(boxes, scores, idxs, 0.5), cpu_op("batched_nms")(*wide, idxs, 0.5))


# --- XNOR convolution -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("channels, groups, kernel, stride, padding, dilation, channels_last", [
    (3, 1, (3, 3), (1, 1), (1, 1), (1, 1), False),
    (70, 1, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (130, 2, (1, 2), (1, 1), (0, 1), (1, 1), False),
    (64, 4, (3, 3), (1, 2), (2, 2), (2, 1), True),
])
def test_xnor_conv2d(emu, channels, groups, kernel, stride, padding, dilation, channels_last, dtype):
    x = randn(2, channels, 9, 10, dtype=dtype)
    out_channels = 2 * groups + 3 * (groups == 1)
    w = randn(out_channels, channels // groups, *kernel, dtype=dtype, seed=1)
    for t, g in ((x, groups), (w, 1)):
        assert_same(emu.pack_signs(t, g), cpu_op("pack_signs")(t, g))
    x_bits, w_bits = cpu_op("pack_signs")(x, groups), cpu_op("pack_signs")(w, 1)
    scale = randn(out_channels, seed=2).abs().to(dtype)
    bias = randn(out_channels, seed=3).to(dtype)
    args = (x_bits, w_bits, channels, scale, bias, stride, padding, dilation, groups, dtype, channels_last)
    out = emu.xnor_conv2d_packed(*args)
    assert_same(out, cpu_op("xnor_conv2d_packed")(*args))


# --- attention ------------------------------------------------------------------------

ATTENTION_CASES = [
    # batch, q heads, kv heads, q len, k len, head dim, value dim, causal, mask
    (1, 1, 1, 1, 1, 8, 8, False, None),
    (2, 2, 2, 37, 45, 16, 16, False, None),
    (1, 4, 2, 33, 33, 32, 24, True, None),
    (2, 2, 1, 20, 300, 64, 64, False, "bool"),
    (1, 2, 2, 17, 29, 8, 16, False, "float"),
    (1, 1, 1, 9, 70, 16, 8, False, "row masked"),  # query row 4 sees no key
]


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention(emu, case, dtype):
    batch, hq, hk, nq, nk, dk, dv, causal, mask_kind = case
    q = randn(batch, hq, nq, dk, dtype=dtype)
    k = randn(batch, hk, nk, dk, dtype=dtype, seed=1)
    v = randn(batch, hk, nk, dv, dtype=dtype, seed=2)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(nq, nk, generator=torch.Generator().manual_seed(5)) > 0.3
        mask[:, 0] = True
    elif mask_kind == "float":
        mask = randn(batch, 1, nq, nk, dtype=dtype, seed=6)
    elif mask_kind == "row masked":
        mask = torch.ones(nq, nk, dtype=torch.bool)
        mask[4] = False
    scale = dk ** -0.5
    # dropout: CPU and CUDA draw the same mask (a hash of the seed and the weight's index)
    for dropout_p, seed in ((0.0, 0), (0.3, 12345)):
        args = (q, k, v, mask, causal, scale, dropout_p, seed)
        out, lse = emu.attention(*args)
        assert_same((out, lse), cpu_op("attention")(*args), sums=True)
        grad = randn(*out.shape, dtype=dtype, seed=3)
        bargs = (grad, q, k, v, out, lse, mask, causal, scale, dropout_p, seed)
        assert_same(emu.attention_backward(*bargs), cpu_op("attention_backward")(*bargs), sums=True)
