"""The recurrent layers and cells under torch.autocast: they run where nn.LSTM, nn.GRU,
nn.LSTMCell and nn.GRUCell run (they used to fail with a dtype mismatch), forward and
backward, with the dtypes fastdl.ops._utils.register_autocast promises: on CPU the
widest of the inputs (float32 here), on CUDA the region's (float16)."""

import pytest
import torch
from torch import nn

import fastdl
from conftest import TOLERANCES
from parity import assert_close

# (fastdl layer, torch layer, constructor arguments, input shape)
LAYERS = {
    "LSTM": (fastdl.nn.LSTM, nn.LSTM, (6, 16, 2), (5, 3, 6)),
    "GRU": (fastdl.nn.GRU, nn.GRU, (6, 16, 2), (5, 3, 6)),
    "LSTMCell": (fastdl.nn.LSTMCell, nn.LSTMCell, (6, 16), (3, 6)),
    "GRUCell": (fastdl.nn.GRUCell, nn.GRUCell, (6, 16), (3, 6)),
}


def first_output(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("name", LAYERS)
def test_runs_under_autocast(device, name):
    ours_type, reference_type, args, shape = LAYERS[name]
    torch.manual_seed(0)
    reference = reference_type(*args).to(device)
    ours = ours_type(*args).to(device)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(*shape, device=device, requires_grad=True)
    expected = first_output(reference(x))  # float32, outside the region
    expected_grads = torch.autograd.grad(expected.sum(), (x, *reference.parameters()))

    low = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=low):
        actual = first_output(ours(x))
    grads = torch.autograd.grad(actual.float().sum(), (x, *ours.parameters()))

    # CPU: the ops run in float32 (the cells' gates come from F.linear in bfloat16);
    # CUDA: in float16.
    assert actual.dtype == (torch.float32 if device.type == "cpu" else low)
    assert_close(actual.float(), expected, **TOLERANCES[low])
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == torch.float32  # the parameters' and the input's own
        assert_close(grad, expected_grad, rtol=5e-2, atol=5e-2)


def test_layer_on_cpu_keeps_float32_results():
    """On CPU a float32 layer under autocast is the float32 layer: same kernels, same
    result to the bit."""
    torch.manual_seed(0)
    layer = fastdl.nn.LSTM(6, 16, 2)
    x = torch.randn(5, 3, 6)
    expected, (h, c) = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual, (h_auto, c_auto) = layer(x)
    for a, e in ((actual, expected), (h_auto, h), (c_auto, c)):
        assert torch.equal(a, e)


def test_backward_inside_the_region(device):
    torch.manual_seed(0)
    layer = fastdl.nn.LSTM(6, 16).to(device)
    x = torch.randn(5, 3, 6, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16):
        output, _ = layer(x)
        output.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
