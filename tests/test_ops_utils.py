"""fastdl.ops._utils.call_op: the op wrappers skip the autograd layer only when no
gradient can flow from the call, and give the same results either way."""

import pytest
import torch
import torch.nn.functional as F

from fastdl import ops
from fastdl.ops._utils import _any_requires_grad, call_op


def _depthwise_args(requires_grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    for t, flag in zip((x, w, b), requires_grad):
        t.requires_grad_(flag)
    return x, w, b


@pytest.mark.parametrize("requires_grad", [(True, False, False), (False, True, False),
                                           (False, False, True)])
def test_any_one_tensor_requiring_grad_keeps_autograd(requires_grad):
    x, w, b = _depthwise_args(requires_grad)
    out = ops.depthwise_conv2d(x, w, b, padding=1)
    assert out.grad_fn is not None
    out.sum().backward()
    xr, wr, br = (t.detach().clone().requires_grad_(t.requires_grad) for t in (x, w, b))
    F.conv2d(xr, wr, br, padding=1, groups=4).sum().backward()
    for ours, theirs in zip((x, w, b), (xr, wr, br)):
        if ours.requires_grad:
            torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_without_grad_the_result_is_the_same_and_untracked(context):
    x, w, b = _depthwise_args((True, True, True))
    expected = ops.depthwise_conv2d(x, w, b, padding=1).detach()
    with context():
        out = ops.depthwise_conv2d(x, w, b, padding=1)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_no_tensor_requiring_grad_gives_an_untracked_result():
    x, w, b = _depthwise_args((False, False, False))
    out = ops.dilated_conv2d(x, w.expand(4, 4, 3, 3).contiguous(), b, padding=2, dilation=2)
    assert out.grad_fn is None and not out.requires_grad


def test_requires_grad_is_found_in_nested_arguments():
    leaf = torch.zeros(1, requires_grad=True)
    assert _any_requires_grad((1.0, [torch.zeros(1), (None, leaf)]))
    assert not _any_requires_grad((1.0, [torch.zeros(1), (None, leaf.detach())], "x"))


def test_call_op_passes_arguments_and_results_through():
    gates, c = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        below = call_op(torch.ops.fastdl.lstm_cell.default, gates, c)
    direct = torch.ops.fastdl.lstm_cell.default(gates, c)
    for a, b in zip(below, direct):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
