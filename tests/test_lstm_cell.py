"""fastdl.ops.lstm_cell and fastdl.nn.LSTMCell: parity with nn.LSTMCell (outputs and
every gradient), edge shapes, dtypes, gradcheck, opcheck, the layer as a drop-in,
torch.compile, bad input."""

import pytest
import torch
from torch import nn

import fastdl
from conftest import TOLERANCES
from parity import assert_close

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
