"""fastdl.ops.gru_cell/gru_layer, fastdl.nn.GRUCell/GRU: parity with nn.GRUCell and
nn.GRU (outputs and every gradient), edge shapes, dtypes, gradcheck, opcheck, the
layers as drop-ins, torch.compile, bad input, convert."""

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
    reference = nn.GRUCell(input_size, hidden, bias=bias).to(device=device, dtype=dtype)
    ours = fastdl.nn.GRUCell(input_size, hidden, bias=bias).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, input_size, hidden", [
    (1, 1, 1), (3, 5, 7), (2, 4, 16), (5, 3, 33), (4, 10, 64), (1, 8, 257), (17, 6, 40),
])
def test_matches_gru_cell(device, batch, input_size, hidden, dtype):
    ours, reference = pair(input_size, hidden, dtype, device)
    g = torch.Generator().manual_seed(1)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()
    x, h = make(batch, input_size), make(batch, hidden)
    grad_h = make(batch, hidden).detach()
    results = []
    for layer in (ours, reference):
        h_new = layer(x, h)
        results.append([h_new, *torch.autograd.grad((h_new * grad_h).sum(),
                                                    (x, h, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    ours, reference = pair(6, 24, torch.float32, device)
    x, h = torch.randn(4, 6, device=device), torch.randn(4, 24, device=device)
    expected = reference(x, h)
    actual = ours.to(dtype)(x.to(dtype), h.to(dtype))
    assert actual.dtype == dtype
    assert_close(actual.float(), expected, **TOLERANCES[dtype])


def test_cell_gradcheck(device):
    g = torch.Generator().manual_seed(2)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(2, 3), make(2, 4), make(12, 3), make(12, 4), make(12), make(12))
    assert torch.autograd.gradcheck(fastdl.ops.gru_cell, inputs)


def test_cell_opcheck(device):
    make = lambda *shape: torch.randn(*shape, device=device)
    args = (make(3, 15), make(3, 15), make(3, 5))
    torch.library.opcheck(OPS.gru_cell.default, tuple(a.clone().requires_grad_() for a in args))
    _, saved = OPS.gru_cell(*args)
    torch.library.opcheck(OPS.gru_cell_backward.default, (make(3, 5), saved, args[2]))


def test_cell_is_a_drop_in():
    ours, reference = pair(4, 6, torch.float32, "cpu", bias=False)
    assert isinstance(ours, nn.GRUCell) and list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(4)  # unbatched, hx=None
    assert ours(x).shape == (6,)
    assert_close(ours(x), reference(x))
    h = torch.randn(6)
    assert_close(ours(x, h), reference(x, h))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        ours(torch.randn(1, 2, 4))


@torch._inductor.config.patch(force_disable_caches=True)  # compiled code of older fakes
def test_inductor_backward_batch_first_and_transposed_state():
    """Under inductor: a batch_first layer's input reaches the op as a transposed view,
    and a cell's state may be one (the fakes copied those strides; the kernels return
    contiguous gradients)."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, requires_grad=True)
    assert_compiled_grads_match(fastdl.nn.GRU(5, 7, batch_first=True),
                                nn.GRU(5, 7, batch_first=True), (x,), (x,))
    h = torch.randn(7, 3).t().requires_grad_()
    assert_compiled_grads_match(fastdl.nn.GRUCell(5, 7), nn.GRUCell(5, 7),
                                (torch.randn(3, 5), h), (h,))


def test_cell_under_torch_compile():
    ours, reference = pair(4, 6, torch.float32, "cpu")
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, h = torch.randn(3, 4), torch.randn(3, 6)
    assert_close(compiled(x, h), reference(x, h))


@pytest.mark.parametrize("op, args, error, message", [
    ("gru_cell", lambda: (torch.randn(2, 10), torch.randn(2, 10), torch.randn(2, 3)), ValueError,
     r"fastdl.gru_cell: x_gates must have shape \(B, 3 \* H\), got \(2, 10\)"),
    ("gru_cell", lambda: (torch.randn(2, 9), torch.randn(2, 6), torch.randn(2, 3)), ValueError,
     r"fastdl.gru_cell: h_gates must have shape \(B, 3 \* H\) as x_gates, got \(2, 6\)"),
    ("gru_cell", lambda: (torch.randn(2, 9), torch.randn(2, 9), torch.randn(3, 3)), ValueError,
     r"fastdl.gru_cell: h_prev must have shape \(B, H\) with x_gates \(B, 3 \* H\), got \(3, 3\)"),
    ("gru_cell", lambda: (torch.randn(2, 9), torch.randn(2, 9).double(), torch.randn(2, 3)),
     TypeError, "fastdl.gru_cell: x_gates and h_gates must have the same dtype, got "
     "torch.float32 and torch.float64"),
    ("gru_cell", lambda: tuple(torch.ones(2, n, dtype=torch.int32) for n in (9, 9, 3)), TypeError,
     "fastdl.gru_cell: x_gates must be torch.float32, torch.float64, torch.float16 or "
     "torch.bfloat16, got torch.int32"),
    ("gru_cell_backward", lambda: (torch.randn(2, 3), torch.randn(2, 10), torch.randn(2, 3)),
     ValueError, r"fastdl.gru_cell_backward: saved must have shape \(B, 4 \* H\), got \(2, 10\)"),
    ("gru_cell_backward", lambda: (torch.randn(2, 2), torch.randn(2, 12), torch.randn(2, 3)),
     ValueError, r"fastdl.gru_cell_backward: grad_h must have shape \(B, H\) with saved "
     r"\(B, 4 \* H\), got \(2, 2\)"),
    ("gru_cell_backward", lambda: (torch.randn(2, 3), torch.randn(2, 12), torch.randn(2, 4)),
     ValueError, r"fastdl.gru_cell_backward: h_prev must have shape \(B, H\)"),
    ("gru_cell_backward",
     lambda: (torch.randn(2, 3).double(), torch.randn(2, 12), torch.randn(2, 3)), TypeError,
     "fastdl.gru_cell_backward: saved and grad_h must have the same dtype"),
])
def test_bad_input(op, args, error, message):
    with pytest.raises(error, match=message):
        getattr(OPS, op)(*args())


# ---- the layer over a sequence and nn.GRU ----

GRU_CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
    dict(num_layers=1, bias=False, bidirectional=True),
    dict(num_layers=3, dropout=0.0),
    dict(num_layers=2, bias=False, batch_first=True, bidirectional=True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps, batch", [(4, 3), (1, 1), (7, 1), (1, 5)])
@pytest.mark.parametrize("config", GRU_CONFIGS,
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gru_matches_nn_gru(device, config, steps, batch, dtype):
    torch.manual_seed(0)
    reference = nn.GRU(5, 6, **config).to(device=device, dtype=dtype)
    ours = fastdl.nn.GRU(5, 6, **config).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    assert list(ours.state_dict()) == list(reference.state_dict())
    directions = 2 if config.get("bidirectional") else 1
    shape = (batch, steps, 5) if config.get("batch_first") else (steps, batch, 5)
    g = torch.Generator().manual_seed(1)
    make = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device).requires_grad_()
    x, h0 = make(*shape), make(config["num_layers"] * directions, batch, 6)
    results = []
    for layer in (ours, reference):
        out, h_n = layer(x, h0)
        loss = (out * out.detach().cos()).sum() + h_n.sin().sum()
        results.append([out, h_n, *torch.autograd.grad(loss, (x, h0, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gru_recurrence_splits_columns_between_threads(device, dtype, threads):
    """The CPU recurrence (gru_recurrence_cpu.cpp) splits h_gates' 3H columns between
    threads in blocks of a register tile's width (64 on AVX-512): hidden 100 gives several
    blocks, so every thread has some (3 threads on a 2-core machine meet at libgomp's
    barrier). Against nn.GRU in float64, forward and every gradient."""
    torch.manual_seed(0)
    reference = nn.GRU(12, 100, num_layers=2, bidirectional=True).double()
    ours = fastdl.nn.GRU(12, 100, num_layers=2, bidirectional=True).to(device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(1)
    x, h0 = torch.randn(6, 9, 12, generator=g, dtype=torch.float64), torch.randn(4, 9, 100, generator=g, dtype=torch.float64)
    previous = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(threads)
        for layer, inputs in ((ours, (x.to(device, dtype), h0.to(device, dtype))), (reference, (x, h0))):
            inputs = [t.detach().requires_grad_() for t in inputs]
            out, h_n = layer(*inputs)
            loss = (out * out.detach().cos()).sum() + h_n.sin().sum()
            results.append([out, h_n, *torch.autograd.grad(loss, (*inputs, *layer.parameters()))])
    finally:
        torch.set_num_threads(previous)
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual.double().cpu(), expected, **TOLERANCES_VS_FLOAT64[dtype])


@pytest.mark.parametrize("pick", [0, 1], ids=["output", "h_n"])
def test_gru_gradient_through_one_output_only(device, pick):
    """The gradient of the output not used arrives as None (mark_saved_outputs), not as
    zeros; the backward fills in what it needs."""
    torch.manual_seed(0)
    reference = nn.GRU(5, 6, num_layers=2).to(device=device, dtype=torch.float64)
    ours = fastdl.nn.GRU(5, 6, num_layers=2).to(device=device, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for layer in (ours, reference):
        out, h_n = layer(x)
        results.append(torch.autograd.grad((out, h_n)[pick].sin().sum(), (x, *layer.parameters())))
    for actual, expected in zip(*results):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gru_half_precision(device, dtype):
    torch.manual_seed(0)
    reference, ours = nn.GRU(4, 8).to(device), fastdl.nn.GRU(4, 8).to(device)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 4, device=device)
    expected = reference(x)
    for actual, wanted in zip(ours.to(dtype)(x.to(dtype)), expected):
        assert actual.dtype == dtype
        # Rounding compounds over the steps: twice the one-step tolerance.
        assert_close(actual.float(), wanted, **{k: 2 * v for k, v in TOLERANCES[dtype].items()})


def test_gru_unbatched_default_state_and_dropout():
    torch.manual_seed(0)
    reference = nn.GRU(3, 4, num_layers=2, dropout=0.5)
    ours = fastdl.nn.GRU(3, 4, num_layers=2, dropout=0.5)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3)  # unbatched (T, I), hx=None
    ours.eval()
    reference.eval()
    for a, e in zip(ours(x), reference(x)):
        assert_close(a, e)
    h0 = torch.randn(2, 4)
    for a, e in zip(ours(x, h0), reference(x, h0)):
        assert_close(a, e)
    ours.train()  # dropout between the layers: outputs differ from eval, and between calls
    assert not torch.equal(ours(x)[0], ours(x)[0])
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        ours(torch.randn(1, 2, 3, 3))


def test_gru_empty_sequence_keeps_h0():
    torch.manual_seed(0)
    ours = fastdl.nn.GRU(3, 4)
    h0 = torch.randn(1, 2, 4)
    out, h_n = ours(torch.randn(0, 2, 3), h0)
    assert out.shape == (0, 2, 4)
    assert torch.equal(h_n, h0)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                    dict(num_layers=2, batch_first=True, bidirectional=True)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_gru_packed_sequence_matches_nn_gru(device, config, enforce_sorted):
    """Variable lengths (incl. length 1 and equal lengths): packed output, h_n (each
    sequence's own last state, in the caller's order) and every gradient as nn.GRU's."""
    torch.manual_seed(0)
    reference = nn.GRU(5, 6, **config).to(device=device, dtype=torch.float64)
    ours = fastdl.nn.GRU(5, 6, **config).to(device=device, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    lengths = [7, 7, 4, 1, 3] if not enforce_sorted else [7, 7, 4, 3, 1]
    batch, steps = len(lengths), max(lengths)
    directions = 2 if config.get("bidirectional") else 1
    batch_first = config.get("batch_first", False)
    g = torch.Generator().manual_seed(1)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    x = make(*((batch, steps, 5) if batch_first else (steps, batch, 5)))
    h0 = make(config["num_layers"] * directions, batch, 6)
    results = []
    for layer in (ours, reference):
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first,
                                      enforce_sorted=enforce_sorted)
        out, h_n = layer(packed, h0)
        assert isinstance(out, PackedSequence)
        padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
        assert out_lengths.tolist() == lengths
        loss = (padded * padded.detach().cos()).sum() + h_n.sin().sum()
        results.append([padded, h_n, *torch.autograd.grad(loss, (x, h0, *layer.parameters()))])
    for actual, expected in zip(*results):
        assert_close(actual, expected)


def test_gru_gradcheck(device):
    g = torch.Generator().manual_seed(3)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(3, 2, 2), make(2, 3), make(9, 2), make(9, 3), make(9), make(9))
    for reverse in (False, True):
        run = lambda x, h, wi, wh, bi, bh: fastdl.ops.gru_layer(x, h, wi, wh, bi, bh, reverse)
        assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("packed", [False, True])
def test_gru_layer_opcheck(device, packed):
    make = lambda *s: torch.randn(*s, device=device)
    args = (make(3, 2, 4), make(2, 5), make(15, 4), make(15, 5), make(15), make(15))
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    for reverse in (False, True):
        torch.library.opcheck(OPS.gru_layer.default,
                              tuple(a.clone().requires_grad_() for a in args) + (reverse, batch_sizes))
        out, _, saved = OPS.gru_layer(*args, reverse, batch_sizes)
        torch.library.opcheck(OPS.gru_layer_backward.default,
                              (make(3, 2, 5), make(2, 5), *args[:4], out, saved, reverse, batch_sizes))


def test_gru_gradcheck_packed(device):
    g = torch.Generator().manual_seed(5)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    inputs = (make(3, 3, 2), make(3, 3), make(9, 2), make(9, 3), make(9), make(9))
    batch_sizes = torch.tensor([3, 2, 2])
    for reverse in (False, True):
        run = lambda x, h, wi, wh, bi, bh: fastdl.ops.gru_layer(x, h, wi, wh, bi, bh, reverse,
                                                                batch_sizes)
        assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("op, args, error, message", [
    ("gru_layer", dict(w_ih=torch.randn(15, 3)), ValueError,
     r"fastdl.gru_layer: w_ih must have shape \(3 \* H, I\) with input \(T, B, I\), got \(15, 3\)"),
    ("gru_layer", dict(w_hh=torch.randn(16, 5)), ValueError,
     r"fastdl.gru_layer: w_hh must have shape \(3 \* H, H\), got \(16, 5\)"),
    ("gru_layer", dict(h0=torch.randn(3, 5)), ValueError,
     r"fastdl.gru_layer: h0 must have shape \(B, H\), got \(3, 5\)"),
    ("gru_layer", dict(b_hh=torch.randn(20)), ValueError,
     r"fastdl.gru_layer: b_hh must have shape \(3 \* H,\), got \(20,\)"),
    ("gru_layer", dict(input=torch.randn(3, 2)), ValueError,
     r"fastdl.gru_layer: input must have shape \(T, B, I\), got \(3, 2\)"),
    ("gru_layer", dict(b_ih=torch.randn(15).double()), TypeError,
     "fastdl.gru_layer: input and b_ih must have the same dtype, got torch.float32 and "
     "torch.float64"),
    ("gru_layer", dict(input=torch.ones(3, 2, 4, dtype=torch.int64)), TypeError,
     "fastdl.gru_layer: input must be torch.float32, torch.float64, torch.float16 or "
     "torch.bfloat16, got torch.int64"),
    ("gru_layer_backward", dict(saved=torch.randn(3, 2, 15)), ValueError,
     r"fastdl.gru_layer_backward: saved must have shape \(T, B, 4 \* H\), got \(3, 2, 15\)"),
    ("gru_layer_backward", dict(grad_output=torch.randn(3, 2, 4)), ValueError,
     r"fastdl.gru_layer_backward: grad_output must have shape \(T, B, H\), got \(3, 2, 4\)"),
])
def test_layer_bad_input(op, args, error, message):
    layer = dict(input=torch.randn(3, 2, 4), h0=torch.randn(2, 5), w_ih=torch.randn(15, 4),
                 w_hh=torch.randn(15, 5), b_ih=torch.randn(15), b_hh=torch.randn(15))
    backward = dict(grad_output=torch.randn(3, 2, 5), grad_h_n=torch.randn(2, 5),
                    input=layer["input"], h0=layer["h0"], w_ih=layer["w_ih"], w_hh=layer["w_hh"],
                    output=torch.randn(3, 2, 5), saved=torch.randn(3, 2, 20))
    kwargs = dict(layer if op == "gru_layer" else backward, **args)
    with pytest.raises(error, match=message):
        getattr(OPS, op)(*kwargs.values(), False)


def test_convert_gru_shares_parameters_and_matches():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(gru=nn.GRU(5, 7, num_layers=2, bidirectional=True, batch_first=True),
                               cell=nn.GRUCell(5, 7), lstm=nn.LSTM(5, 7)))
    original = dict(model.items())
    converted, report = fastdl.convert(model, families=["gru"], inplace=True)
    assert converted is model and "2 layers swapped" in str(report)
    model = nn.ModuleDict(original)
    assert type(converted["gru"]) is fastdl.nn.GRU and type(converted["cell"]) is fastdl.nn.GRUCell
    assert type(converted["lstm"]) is nn.LSTM  # another family: left alone
    assert converted["gru"].weight_hh_l1_reverse is model["gru"].weight_hh_l1_reverse
    assert converted["cell"].weight_ih is model["cell"].weight_ih
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(3, 4, 5)
    for actual, expected in zip((*converted["gru"](x), converted["cell"](x[:, 0])),
                                (*model["gru"](x), model["cell"](x[:, 0]))):
        assert_close(actual, expected)


@pytest.mark.parametrize("make, call", [
    (lambda m: m.GRU(5, 7), lambda layer: layer(torch.randn(4, 3, 5), torch.randn(2, 3, 7))),
    (lambda m: m.GRU(5, 7, 2), lambda layer: layer(torch.randn(4, 3, 5), torch.randn(1, 3, 7))),
    (lambda m: m.GRU(5, 7), lambda layer: layer(
        pack_padded_sequence(torch.randn(4, 3, 5), [4, 3, 2]), torch.randn(1, 2, 7))),
    (lambda m: m.GRUCell(5, 7), lambda cell: cell(torch.randn(3, 5), torch.randn(7))),
    (lambda m: m.GRUCell(5, 7), lambda cell: cell(torch.randn(3, 5), torch.randn(3, 8))),
])
def test_state_shapes_checked_as_torch_does(make, call):
    """A state of the wrong layers, batch or size fails with torch's message: it used to
    be partly ignored or broadcast."""
    torch.manual_seed(0)
    with pytest.raises(RuntimeError) as expected:
        call(make(nn))
    with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
        call(make(fastdl.nn))

