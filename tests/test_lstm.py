"""fastdl.ops.lstm_cell/lstm_layer, fastdl.nn.LSTMCell/LSTM: parity with nn.LSTMCell and
nn.LSTM (outputs and every gradient), edge shapes, dtypes, gradcheck, opcheck, the
layers as drop-ins, torch.compile, bad input."""

import re

import pytest
import torch
import torch._inductor.config
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastdl
from conftest import TOLERANCES, TOLERANCES_VS_FLOAT64
from parity import assert_close, assert_compiled_grads_match

OPS = torch.ops.fastdl


def pair(input_size, hidden, dtype, device, bias=True):
    torch.manual_seed(0)
    reference = nn.LSTMCell(input_size, hidden, bias=bias).to(device=device, dtype=dtype)
    ours = fastdl.nn.LSTMCell(input_size, hidden, bias=bias).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, input_size, hidden", [
    (1, 1, 1), (3, 5, 7), (2, 4, 16), (5, 3, 33), (4, 10, 64), (1, 8, 257),
])
def test_matches_lstm_cell(device, batch, input_size, hidden, dtype):
    ours, reference = pair(input_size, hidden, dtype, device)
    g = torch.Generator().manual_seed(1)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()
    x, h, c = make(batch, input_size), make(batch, hidden), make(batch, hidden)
    grad_h, grad_c = make(batch, hidden).detach(), make(batch, hidden).detach()
    results = []
    for layer in (ours, reference):
        h_new, c_new = layer(x, (h, c))
        loss = (h_new * grad_h).sum() + (c_new * grad_c).sum()
        results.append([h_new, c_new, *torch.autograd.grad(loss, (x, h, c, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    ours, reference = pair(6, 24, torch.float32, device)
    x = torch.randn(4, 6, device=device)
    expected = reference(x)
    actual = ours.to(dtype)(x.to(dtype))
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        assert_close(a.float(), e, **TOLERANCES[dtype])


def test_only_h_or_only_c_used(device):
    ours, reference = pair(3, 8, torch.float64, device)
    x = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    for pick in (0, 1):
        expected, = torch.autograd.grad(reference(x)[pick].sum(), x)
        actual, = torch.autograd.grad(ours(x)[pick].sum(), x)
        assert_close(actual, expected)


def test_gradcheck(device):
    g = torch.Generator().manual_seed(2)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(2, 3), make(2, 4), make(2, 4), make(16, 3), make(16, 4), make(16), make(16))
    assert torch.autograd.gradcheck(
        lambda x, h, c, w_ih, w_hh, b_ih, b_hh: fastdl.ops.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh),
        inputs)


def test_opcheck(device):
    gates = torch.randn(3, 20, device=device, requires_grad=True)
    c_prev = torch.randn(3, 5, device=device, requires_grad=True)
    torch.library.opcheck(OPS.lstm_cell.default, (gates, c_prev))
    _, c, activated = OPS.lstm_cell(gates.detach(), c_prev.detach())
    grads = [torch.randn(3, 5, device=device) for _ in range(2)]
    torch.library.opcheck(OPS.lstm_cell_backward.default, (*grads, activated, c_prev.detach(), c))


def test_layer_is_a_drop_in():
    ours, reference = pair(4, 6, torch.float32, "cpu", bias=False)
    assert isinstance(ours, nn.LSTMCell) and list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(4)  # unbatched, hx=None
    for a, e in zip(ours(x), reference(x)):
        assert a.shape == (6,)
        assert_close(a, e)
    hx = (torch.randn(6), torch.randn(6))
    for a, e in zip(ours(x, hx), reference(x, hx)):
        assert_close(a, e)
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        ours(torch.randn(1, 2, 4))


def test_layer_under_torch_compile():
    ours, reference = pair(4, 6, torch.float32, "cpu")
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4)
    for a, e in zip(compiled(x), reference(x)):
        assert_close(a, e)


@pytest.mark.parametrize("op, args, error, message", [
    ("lstm_cell", lambda: (torch.randn(2, 10), torch.randn(2, 2)), ValueError,
     r"fastdl.lstm_cell: gates must have shape \(B, 4 \* H\), got \(2, 10\)"),
    ("lstm_cell", lambda: (torch.randn(2, 8), torch.randn(3, 2)), ValueError,
     r"c_prev must have shape \(B, H\) with gates \(B, 4 \* H\), got \(3, 2\)"),
    ("lstm_cell", lambda: (torch.randn(2, 8), torch.randn(2, 2).double()), TypeError,
     "gates and c_prev must have the same dtype"),
    ("lstm_cell", lambda: (torch.ones(2, 8, dtype=torch.int32), torch.ones(2, 2, dtype=torch.int32)),
     TypeError, "gates must be torch.float32, torch.float64, torch.float16 or torch.bfloat16"),
    ("lstm_cell_backward",
     lambda: (torch.randn(2, 2), torch.randn(2, 3), torch.randn(2, 8), torch.randn(2, 2),
              torch.randn(2, 2)), ValueError, r"grad_c must have shape \(B, H\)"),
    ("lstm_cell_backward",
     lambda: (torch.randn(2, 2), torch.randn(2, 2), torch.randn(2, 7), torch.randn(2, 2),
              torch.randn(2, 2)), ValueError, r"activated_gates must have shape \(B, 4 \* H\)"),
])
def test_bad_input(op, args, error, message):
    with pytest.raises(error, match=message):
        getattr(OPS, op)(*args())


# ---- the layer over a sequence and nn.LSTM ----

LSTM_CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
    dict(num_layers=1, bias=False, bidirectional=True),
    dict(num_layers=3, dropout=0.0),
    dict(num_layers=2, proj_size=4, bidirectional=True),
    dict(num_layers=1, proj_size=2, bias=False),
]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps, batch", [(4, 3), (1, 1), (7, 1), (1, 5), (3, 9)])  # 9: tiled recurrence
@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_lstm_matches_nn_lstm(device, config, steps, batch, dtype):
    torch.manual_seed(0)
    reference = nn.LSTM(5, 6, **config).to(device=device, dtype=dtype)
    ours = fastdl.nn.LSTM(5, 6, **config).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    assert list(ours.state_dict()) == list(reference.state_dict())
    directions = 2 if config.get("bidirectional") else 1
    layers = config["num_layers"]
    shape = (batch, steps, 5) if config.get("batch_first") else (steps, batch, 5)
    g = torch.Generator().manual_seed(1)
    make = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device).requires_grad_()
    h_size = config.get("proj_size", 6)
    x, h0, c0 = make(*shape), make(layers * directions, batch, h_size), make(layers * directions, batch, 6)
    results = []
    for layer in (ours, reference):
        out, (h_n, c_n) = layer(x, (h0, c0))
        loss = (out * out.detach().cos()).sum() + h_n.sin().sum() + (2 * c_n).sum()
        results.append([out, h_n, c_n,
                        *torch.autograd.grad(loss, (x, h0, c0, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("batch", [3, 9])  # 9: tiled recurrence
@pytest.mark.parametrize("pick", [0, 1, 2], ids=["output", "h_n", "c_n"])
def test_lstm_gradient_through_one_output_only(device, pick, batch):
    """The gradients of the outputs not used arrive as None (mark_saved_outputs), not as
    zeros; the backward fills in what it needs."""
    torch.manual_seed(0)
    reference = nn.LSTM(5, 6, num_layers=2).to(device=device, dtype=torch.float64)
    ours = fastdl.nn.LSTM(5, 6, num_layers=2).to(device=device, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, batch, 5, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for layer in (ours, reference):
        out, (h_n, c_n) = layer(x)
        results.append(torch.autograd.grad((out, h_n, c_n)[pick].sin().sum(),
                                           (x, *layer.parameters())))
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, hidden, input_size, bias",
                         [(9, 16, 7, True), (13, 40, 7, True), (70, 33, 7, True),
                          (64, 256, 7, True), (11, 20, 1, False), (12, 17, 300, True),
                          (26, 300, 256, True)])
def test_lstm_tiled_recurrence_matches_nn_lstm(device, batch, hidden, input_size, bias, dtype):
    """Batches above the GEMV recurrence's 8 rows: register tiles of 6 rows (2 on AVX2)
    x one vector of units over [x_t | h], whole and partial tiles and unit blocks, both
    directions, inputs narrower and wider than h, with and without bias; hidden 300 takes
    the backward's products over 4H = 1200 gates in two passes and the weight gradients
    of 256 input columns through their padded rows."""
    torch.manual_seed(0)
    # The reference in float64: float32's own rounding over 64 rows would set the bar.
    reference = nn.LSTM(input_size, hidden, num_layers=2, bias=bias, bidirectional=True).to(
        device=device, dtype=torch.float64)
    ours = fastdl.nn.LSTM(input_size, hidden, num_layers=2, bias=bias, bidirectional=True).to(
        device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(2)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)
    inputs = [make(3, batch, input_size), make(4, batch, hidden), make(4, batch, hidden)]
    results = []
    for layer, t in ((ours, dtype), (reference, torch.float64)):
        x, h0, c0 = (v.to(t).requires_grad_() for v in inputs)
        out, (h_n, c_n) = layer(x, (h0, c0))
        loss = (out * out.detach().cos()).sum() + h_n.sin().sum() + (2 * c_n).sum()
        results.append([out, h_n, c_n, *torch.autograd.grad(loss, (x, h0, c0, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.double(), expected, **TOLERANCES_VS_FLOAT64[dtype])


@pytest.mark.parametrize("batch, hidden", [(9, 40), (30, 40), (1, 300)])
def test_lstm_recurrence_is_the_same_on_any_thread_count(batch, hidden):
    """The CPU recurrence splits the batch rows between threads when each gets 12 and
    the weights fit half the L2, else the hidden units (30 rows and these small weights:
    rows on 1-2 threads, units on 3); every output and gradient is computed in one
    order either way, so the results are bitwise equal. Batch 1 takes the GEMV path
    (units split: hidden 300 is several panel blocks) after MKL's input projection,
    whose rounding depends on the thread count, so there only to float32 accuracy.
    Teams that split units meet at a barrier every step: a spinning one while each
    thread has a processor, libgomp's beyond (3 threads on a 2-core machine)."""
    torch.manual_seed(0)
    layer = fastdl.nn.LSTM(20, hidden, bidirectional=True)
    x = torch.randn(5, batch, 20, requires_grad=True)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, (h_n, c_n) = layer(x)
            loss = (out * out.detach().cos()).sum() + h_n.sin().sum() + c_n.sum()
            results.append([out, h_n, c_n, *torch.autograd.grad(loss, (x, *layer.parameters()))])
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for actual, expected in zip(other, results[0]):
            if batch > 8:  # kMaxRecurrenceBatch: the tiled path
                assert torch.equal(actual, expected)
            else:
                torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, packed, projected",
                         [(3, False, False), (20, False, False), (30, False, False), (3, True, False),
                          (3, False, True)])
def test_lstm_layer_without_backward_keeps_nothing_but_the_output(device, batch, packed, projected):
    """need_backward=False (what fastdl.ops.lstm_layer passes under no_grad): the same
    output, h_n and c_n, and empty saved tensors, on the CPU recurrence (GEMV and tiled
    rows, odd and even step counts for its two alternating cell slots) and the general
    step path (packed, projected)."""
    torch.manual_seed(0)
    make = lambda *s: torch.randn(*s, device=device)
    h_size = 3 if projected else 5
    batch_sizes = torch.tensor([batch] * 3 + [batch - 1] * 2) if packed else None
    w_hr = make(3, 5) if projected else None
    for steps in ((5,) if packed else (1, 4, 5)):
        args = (make(steps, batch, 4), make(batch, h_size), make(batch, 5), make(20, 4),
                make(20, h_size), make(20))
        for reverse in (False, True):
            full = OPS.lstm_layer(*args, reverse, batch_sizes, w_hr)
            lean = OPS.lstm_layer(*args, reverse, batch_sizes, w_hr, False)
            for a, b in zip(full[:3], lean[:3]):
                assert torch.equal(a, b)
            assert all(t.numel() == 0 for t in lean[3:])


def test_lstm_under_no_grad_matches_and_backward_needs_the_flag():
    torch.manual_seed(0)
    layer = fastdl.nn.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 16, 4)
    with torch.no_grad():
        lean = layer(x)
    full = layer(x)
    assert torch.equal(lean[0], full[0]) and torch.equal(lean[1][1], full[1][1])
    args = [torch.randn(3, 2, 4, requires_grad=True), torch.randn(2, 5), torch.randn(2, 5),
            torch.randn(20, 4), torch.randn(20, 5), torch.randn(20)]
    out = OPS.lstm_layer(*args, False, None, None, False)[0]
    with pytest.raises(RuntimeError, match="lstm_layer: the forward ran with need_backward=False"):
        out.sum().backward()


@torch._dynamo.config.patch(allow_rnn=True)  # dynamo skips nn.LSTM subclasses without it
def test_lstm_under_torch_compile():
    """The whole layer compiles in one graph, for training (gradients through the fake
    kernels' saved tensors) and for inference (need_backward=False under no_grad)."""
    torch.manual_seed(0)
    reference = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    ours = fastdl.nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    ours.load_state_dict(reference.state_dict())
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 10, 4, requires_grad=True)
    out, expected = compiled(x)[0], reference(x)[0]
    assert_close(out, expected)
    assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(expected.sum(), x)[0])
    with torch.no_grad():
        assert_close(compiled(x)[0], reference(x)[0])


@torch._inductor.config.patch(force_disable_caches=True)  # compiled code of older fakes
def test_inductor_backward_batch_first_and_transposed_state():
    """Under inductor: a batch_first layer's input reaches the op as a transposed view,
    and a cell's state may be one. The backward's fake kernels copied those strides with
    empty_like, the kernels return contiguous gradients, and the backward failed."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, requires_grad=True)
    assert_compiled_grads_match(fastdl.nn.LSTM(5, 7, batch_first=True),
                                nn.LSTM(5, 7, batch_first=True), (x,), (x,))
    h, c = (torch.randn(7, 3).t().requires_grad_() for _ in range(2))
    assert_compiled_grads_match(fastdl.nn.LSTMCell(5, 7), nn.LSTMCell(5, 7),
                                (torch.randn(3, 5), (h, c)), (h, c))


def test_lstm_unbatched_default_state_and_dropout():
    torch.manual_seed(0)
    reference, ours = nn.LSTM(3, 4, num_layers=2, dropout=0.5), fastdl.nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3)  # unbatched (T, I), hx=None
    ours.eval()
    reference.eval()
    for a, e in zip([ours(x)[0], *ours(x)[1]], [reference(x)[0], *reference(x)[1]]):
        assert_close(a, e)
    ours.train()  # dropout between the layers: outputs differ from eval, and between calls
    assert not torch.equal(ours(x)[0], ours(x)[0])


def test_lstm_gradcheck(device):
    g = torch.Generator().manual_seed(3)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(3, 2, 2), make(2, 3), make(2, 3), make(12, 2), make(12, 3), make(12), make(12))
    def flat(x, h, c, wi, wh, bi, bh, reverse):
        out, (h_n, c_n) = fastdl.ops.lstm_layer(x, (h, c), wi, wh, bi, bh, reverse)
        return out, h_n, c_n

    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda *args: flat(*args, reverse), inputs)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_lstm_layer_opcheck(device, packed, projected):
    make = lambda *s: torch.randn(*s, device=device)
    h_size = 3 if projected else 5
    args = (make(3, 2, 4), make(2, h_size), make(2, 5), make(20, 4), make(20, h_size), make(20))
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    w_hr = make(3, 5) if projected else None
    for reverse in (False, True):
        torch.library.opcheck(OPS.lstm_layer.default,
                              tuple(a.clone().requires_grad_() for a in args)
                              + (reverse, batch_sizes, None if w_hr is None else w_hr.clone().requires_grad_()))
        # Without a backward (inference): no autograd, so no grad check.
        torch.library.opcheck(OPS.lstm_layer.default, args + (reverse, batch_sizes, w_hr, False),
                              test_utils=("test_schema", "test_faketensor"))
        out, h, c, activated, cells, unprojected = OPS.lstm_layer(*args, reverse, batch_sizes, w_hr)
        torch.library.opcheck(OPS.lstm_layer_backward.default,
                              (make(3, 2, h_size), make(2, h_size), make(2, 5), *args[:5], out, activated,
                               cells, reverse, batch_sizes, w_hr, None if w_hr is None else unprojected))


def test_lstm_gradcheck_with_projection_and_packing(device):
    g = torch.Generator().manual_seed(4)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(3, 3, 2), make(3, 2), make(3, 4), make(16, 2), make(16, 2), make(16), make(16),
              make(2, 4))
    batch_sizes = torch.tensor([3, 2, 2])

    def flat(x, h, c, wi, wh, bi, bh, wr, reverse):
        out, (h_n, c_n) = fastdl.ops.lstm_layer(x, (h, c), wi, wh, bi, bh, reverse, batch_sizes, wr)
        return out, h_n, c_n

    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda *args: flat(*args, reverse), inputs)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                    dict(num_layers=2, batch_first=True, bidirectional=True),
                                    dict(num_layers=2, bidirectional=True, proj_size=3)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_lstm_packed_sequence_matches_nn_lstm(device, config, enforce_sorted):
    """Variable lengths (incl. length 1 and a batch of several equal lengths): packed
    output, h_n, c_n (each sequence's own last state, in the caller's order) and every
    gradient as nn.LSTM's."""
    torch.manual_seed(0)
    reference = nn.LSTM(5, 6, **config).to(device=device, dtype=torch.float64)
    ours = fastdl.nn.LSTM(5, 6, **config).to(device=device, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    lengths = [7, 7, 4, 1, 3] if not enforce_sorted else [7, 7, 4, 3, 1]
    batch, steps, layers = len(lengths), max(lengths), config["num_layers"]
    directions = 2 if config.get("bidirectional") else 1
    batch_first = config.get("batch_first", False)
    g = torch.Generator().manual_seed(1)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    x = make(*((batch, steps, 5) if batch_first else (steps, batch, 5)))
    h0 = make(layers * directions, batch, config.get("proj_size", 6))
    c0 = make(layers * directions, batch, 6)
    results = []
    for layer in (ours, reference):
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first,
                                      enforce_sorted=enforce_sorted)
        out, (h_n, c_n) = layer(packed, (h0, c0))
        assert isinstance(out, PackedSequence)
        padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
        assert out_lengths.tolist() == lengths
        loss = (padded * padded.detach().cos()).sum() + h_n.sin().sum() + (2 * c_n).sum()
        results.append([padded, h_n, c_n,
                        *torch.autograd.grad(loss, (x, h0, c0, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


def test_lstm_layer_batch_sizes_are_checked():
    args = (torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5), torch.randn(20, 4),
            torch.randn(20, 5), torch.randn(20), False)
    with pytest.raises(ValueError, match="fastdl.lstm_layer: batch_sizes must start at the batch size "
                       r"\(2\) and not increase, as a PackedSequence's do; got 2 at step 2"):
        OPS.lstm_layer(*args, torch.tensor([2, 1, 2]))
    with pytest.raises(ValueError, match=r"batch_sizes must have shape \(T,\) with input \(T, B, I\), got \(2,\)"):
        OPS.lstm_layer(*args, torch.tensor([2, 1]))
    with pytest.raises(TypeError, match="batch_sizes must be torch.int64, got torch.int32"):
        OPS.lstm_layer(*args, torch.tensor([2, 1, 1], dtype=torch.int32))


def test_lstm_unsupported_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"fastdl.lstm_layer: w_ih must have shape \(4 \* H, I\)"):
        OPS.lstm_layer(torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5),
                       torch.randn(20, 3), torch.randn(20, 5), torch.randn(20), False)


@pytest.mark.parametrize("make, call", [
    # a state of too many or too few layers, or another batch: torch raises, it must not
    # be partly ignored (or fail with an IndexError)
    (lambda m: m.LSTM(5, 7), lambda layer: layer(torch.randn(4, 3, 5), (torch.randn(2, 3, 7),) * 2)),
    (lambda m: m.LSTM(5, 7, 3), lambda layer: layer(torch.randn(4, 3, 5), (torch.randn(2, 3, 7),) * 2)),
    (lambda m: m.LSTM(5, 7, batch_first=True),
     lambda layer: layer(torch.randn(3, 4, 5), (torch.randn(1, 4, 7),) * 2)),
    (lambda m: m.LSTM(5, 7), lambda layer: layer(torch.randn(4, 3, 6))),
    # a cell state of one row for a batch of three: torch raises, it must not broadcast
    (lambda m: m.LSTMCell(5, 7), lambda cell: cell(torch.randn(3, 5), (torch.randn(1, 7),) * 2)),
    (lambda m: m.LSTMCell(5, 7), lambda cell: cell(torch.randn(3, 5), (torch.randn(3, 8),) * 2)),
    (lambda m: m.LSTMCell(5, 7), lambda cell: cell(torch.randn(3, 6))),
])
def test_state_and_input_shapes_checked_as_torch_does(make, call):
    torch.manual_seed(0)
    with pytest.raises(RuntimeError) as expected:
        call(make(nn))
    with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
        call(make(fastdl.nn))


def test_packed_input_state_of_another_batch():
    """(torch fails here too, on a size mismatch inside; fastdl says which state.)"""
    packed = pack_padded_sequence(torch.randn(4, 3, 5), [4, 3, 2])
    with pytest.raises(RuntimeError, match=re.escape("Expected hidden[0] size (1, 3, 7), got [1, 2, 7]")):
        fastdl.nn.LSTM(5, 7)(packed, (torch.randn(1, 2, 7),) * 2)

