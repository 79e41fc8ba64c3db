"""fastdl's layers under torch.autocast, where torch's run: the recurrent layers and
cells (they failed with a dtype mismatch inside), and the convolutions and attention
behind a layer that autocasts (they refused its lower-precision output against their
float32 weights). Forward and backward, with the dtypes
fastdl.ops._utils.register_autocast promises: on CPU the widest of the inputs (float32
here), on CUDA the region's (float16)."""

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


def lower_precision(device):
    return torch.bfloat16 if device.type == "cpu" else torch.float16


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

    low = lower_precision(device)
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
    with torch.autocast(device.type, dtype=lower_precision(device)):
        output, _ = layer(x)
        output.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


# Behind an autocast convolution or linear layer, whose output is in the lower
# precision: (fastdl layer, the layer in front, input shape).
BEHIND = {
    "DepthwiseConv2d": (lambda: fastdl.nn.DepthwiseConv2d(8, 3, padding=1),
                        lambda: nn.Conv2d(8, 8, 1), (2, 8, 9, 9)),
    "DilatedConv2d": (lambda: fastdl.nn.DilatedConv2d(8, 8, 3, padding=2, dilation=2),
                      lambda: nn.Conv2d(8, 8, 1), (2, 8, 9, 9)),
    "DilatedConv1d": (lambda: fastdl.nn.DilatedConv1d(8, 8, 2, dilation=2, causal=True),
                      lambda: nn.Conv1d(8, 8, 1), (2, 8, 20)),
    "XNORConv2d": (lambda: fastdl.nn.XNORConv2d(8, 8, 3, padding=1),
                   lambda: nn.Conv2d(8, 8, 1), (2, 8, 9, 9)),
}


@pytest.mark.parametrize("name", BEHIND)
def test_behind_an_autocast_layer(device, name):
    make, make_front, shape = BEHIND[name]
    torch.manual_seed(0)
    model = nn.Sequential(make_front(), make()).to(device)
    x = torch.randn(*shape, device=device)
    expected = model(x)  # float32, outside the region
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))

    low = lower_precision(device)
    with torch.autocast(device.type, dtype=low):
        actual = model(x)
    grads = torch.autograd.grad(actual.float().sum(), list(model.parameters()))

    assert actual.dtype == (torch.float32 if device.type == "cpu" else low)
    if name != "XNORConv2d":  # signs of values near 0 may flip with the rounding
        assert_close(actual.float(), expected, **TOLERANCES[low])
        for grad, expected_grad in zip(grads, expected_grads):
            assert_close(grad, expected_grad, rtol=5e-2, atol=5e-2)
    assert all(torch.isfinite(g).all() for g in grads)


def test_attention_with_mixed_dtypes(device):
    """q from an autocast linear layer, k and v kept in float32 (a cache)."""
    torch.manual_seed(0)
    project = nn.Linear(16, 16).to(device)
    x = torch.randn(2, 2, 5, 16, device=device)
    k, v = torch.randn(2, 2, 7, 16, device=device), torch.randn(2, 2, 7, 16, device=device)
    expected = fastdl.ops.attention(project(x), k, v)
    with torch.autocast(device.type, dtype=lower_precision(device)):
        actual = fastdl.ops.attention(project(x), k, v)
    assert_close(actual.float(), expected, **TOLERANCES[lower_precision(device)])
