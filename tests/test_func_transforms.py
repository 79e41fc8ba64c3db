"""torch.func transforms over fastdl layers (call_op's _FormulaFunction); second
derivatives: the convolutions' (their backward ops' formula), and the other backward
ops' refusal of one (csrc/common/first_order.h)."""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F

import fastdl
from fastdl import ops


def _layers():
    """(name, layer, input, the input's batch dimension), a layer for every differentiable
    op."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return [
        ("DepthwiseConv2d", fastdl.nn.DepthwiseConv2d(4, 3, padding=1), randn(3, 4, 6, 6), 0),
        ("DilatedConv2d", fastdl.nn.DilatedConv2d(3, 4, 3, padding=2, dilation=2),
         randn(3, 3, 9, 9), 0),
        ("DilatedConv1d causal", fastdl.nn.DilatedConv1d(3, 4, 2, dilation=2, causal=True),
         randn(3, 3, 9), 0),
        ("LSTM", fastdl.nn.LSTM(5, 6, num_layers=2), randn(4, 3, 5), 1),
        ("LSTMCell", fastdl.nn.LSTMCell(5, 6), randn(3, 5), 0),
        ("GRU", fastdl.nn.GRU(5, 6), randn(4, 3, 5), 1),
        ("GRUCell", fastdl.nn.GRUCell(5, 6), randn(3, 5), 0),
        ("BatchNorm2d eval", fastdl.nn.BatchNorm2d(4).eval(), randn(3, 4, 5, 5), 0),
        ("BatchNorm2d+ReLU train", fastdl.nn.BatchNorm2d(4, activation="relu"), randn(3, 4, 5, 5),
         0),
        ("MultiheadAttention", fastdl.nn.MultiheadAttention(8, 2), randn(4, 3, 8), 1),
        ("XNORConv2d", fastdl.nn.XNORConv2d(4, 5, 3, padding=1), randn(3, 4, 6, 6), 0),
    ]


def _loss(layer, params, x, buffers=None):
    """The layer's output squared and summed. ``buffers`` (a training batch norm's running
    statistics, updated in place) are passed in, as a transform must see them."""
    args = (x, x, x) if isinstance(layer, fastdl.nn.MultiheadAttention) else (x,)
    out = torch.func.functional_call(layer, (params, buffers or {}), args)
    out = out[0] if isinstance(out, tuple) else out
    return out.square().sum()


LAYERS = _layers()


@pytest.mark.parametrize("name,layer,x,batch_dim", LAYERS, ids=[case[0] for case in LAYERS])
def test_func_grad_equals_autograd(name, layer, x, batch_dim):
    layer = layer.double()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = {k: v.clone() for k, v in layer.named_buffers()}
    grads = torch.func.grad(lambda p, x, b: _loss(layer, p, x, b), argnums=(0, 1))(
        params, x, buffers)

    leaves = [p.requires_grad_() for p in params.values()] + [x.clone().requires_grad_()]
    expected = torch.autograd.grad(_loss(layer, params, leaves[-1], buffers), leaves)
    for got, want in zip([*grads[0].values(), grads[1]], expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name,layer,x,batch_dim",
                         [case for case in LAYERS if "BatchNorm" not in case[0]],
                         ids=[case[0] for case in LAYERS if "BatchNorm" not in case[0]])
def test_per_sample_gradients_equal_a_loop(name, layer, x, batch_dim):
    """vmap(grad): per-sample gradients, PyTorch's batching fallback running the op once
    per sample."""
    layer = layer.double()
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def sample_loss(p, sample):
        return _loss(layer, p, sample.unsqueeze(batch_dim))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batching fallback's performance warning
        per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, batch_dim))(
            params, x)
    for i in range(x.shape[batch_dim]):
        expected = torch.func.grad(sample_loss)(params, x.select(batch_dim, i))
        for key, value in expected.items():
            torch.testing.assert_close(per_sample[key][i], value)


def test_grad_through_create_graph_keeps_first_order_gradients():
    """create_graph=True (a gradient penalty's first step) works; only a second
    derivative through a backward op is refused."""
    layer = fastdl.nn.GRU(5, 6).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad(layer(x)[0].sum(), x)
    torch.testing.assert_close(grad, expected)


def _depthwise_second(x, w, b):
    return ops.depthwise_conv2d(x, w, b, padding=1).square().sum()


def _dilated_second(x, w, b):
    return ops.dilated_conv2d(x, w.expand(4, 4, 3, 3).contiguous(), b, padding=2,
                              dilation=2).square().sum()


def _dilated_reference(x, w, b):
    return F.conv2d(x, w.expand(4, 4, 3, 3).contiguous(), b, padding=2,
                    dilation=2).square().sum()


def _depthwise_reference(x, w, b):
    return F.conv2d(x, w, b, padding=1, groups=4).square().sum()


def _second_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    return x, w, b


def _dilated1d_second(x, w, b):
    return ops.dilated_conv1d(x.flatten(2), w.flatten(1)[:, :2].expand(4, 4, 2).contiguous(), b,
                              dilation=2, causal=True).sin().sum()


def _dilated1d_reference(x, w, b):
    return F.conv1d(F.pad(x.flatten(2), (2, 0)), w.flatten(1)[:, :2].expand(4, 4, 2).contiguous(),
                    b, dilation=2).sin().sum()


SECOND_ORDER = [(_depthwise_second, _depthwise_reference), (_dilated_second, _dilated_reference),
                (_dilated1d_second, _dilated1d_reference)]


@pytest.mark.parametrize("loss,reference", SECOND_ORDER, ids=["depthwise", "dilated", "dilated1d"])
def test_conv_second_derivatives_equal_torch(loss, reference):
    """A gradient penalty's second derivative (the convolutions' backward ops have a
    formula of their own), by autograd and by nested torch.func.grad, against F.conv2d's."""
    x, w, b = _second_inputs()
    penalties = []
    for f in (loss, reference):
        (grad,) = torch.autograd.grad(f(x, w, b), x, create_graph=True)
        penalties.append(torch.autograd.grad(grad.square().sum(), (x, w)))
    for got, want in zip(*penalties):
        torch.testing.assert_close(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batching fallback's performance warning
        nested = [torch.func.grad(lambda x: torch.func.grad(lambda x: f(x, w, b))(x).sum())(
            x.detach()) for f in (loss, reference)]
    torch.testing.assert_close(*nested)


@pytest.mark.parametrize("loss,reference", SECOND_ORDER, ids=["depthwise", "dilated", "dilated1d"])
def test_conv_hessian_and_forward_mode_equal_torch(loss, reference):
    """Forward mode (jvp rules of the forward and backward ops) under torch.func:
    hessian (jacfwd of jacrev, so the backward ops' jvp under vmap) and jvp itself."""
    x, w, b = (t.detach() for t in _second_inputs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batching fallback's performance warning
        hessians = [torch.func.hessian(f, argnums=(0, 1, 2))(x, w, b) for f in (loss, reference)]
        tangents = tuple(torch.randn_like(t) for t in (x, w, b))
        jvps = [torch.func.jvp(f, (x, w, b), tangents) for f in (loss, reference)]
        bias_alone = [torch.func.jvp(lambda b: f(x, w, b), (b,), tangents[2:])
                      for f in (loss, reference)]
    torch.testing.assert_close(*hessians)
    torch.testing.assert_close(*jvps)
    torch.testing.assert_close(*bias_alone)


@pytest.mark.parametrize("loss,reference", SECOND_ORDER, ids=["depthwise", "dilated", "dilated1d"])
def test_conv_forward_ad_dual_tensors_equal_torch(loss, reference):
    """torch.autograd.forward_ad outside torch.func: below autograd the op would drop the
    dual input's tangent without a word (it did: None)."""
    x, w, b = (t.detach() for t in _second_inputs())
    tangent = torch.randn_like(x)
    results = []
    for f in (loss, reference):
        with forward_ad.dual_level():
            results.append(forward_ad.unpack_dual(f(forward_ad.make_dual(x, tangent), w, b)))
    torch.testing.assert_close(results[0].primal, results[1].primal)
    torch.testing.assert_close(results[0].tangent, results[1].tangent)


def test_forward_mode_inside_torch_compile():
    """Traced, the op's own autograd kernel has no forward rule and the tangent came out
    as zeros; the call now runs outside the graph, through the formula function."""
    x, w, b = (t.detach() for t in _second_inputs())
    tangent = torch.randn_like(x)

    def jvp(f):
        return torch.func.jvp(lambda x: f(x, w, b), (x,), (tangent,))

    torch._dynamo.reset()
    got = torch.compile(lambda: jvp(_depthwise_second), backend="eager")()
    torch.testing.assert_close(got, jvp(_depthwise_reference))


def test_nested_forward_mode_raises():
    """PyTorch hands an autograd.Function's jvp one level's tangents and drops the
    outer's (pytorch/pytorch#197867): a jvp of a jvp came out as zeros. Refused."""
    x, w, _ = (t.detach() for t in _second_inputs())

    def inner(w):
        return torch.func.jvp(lambda x: ops.depthwise_conv2d(x, w, None, padding=1), (x,),
                              (torch.ones_like(x),))[1]

    with pytest.raises(NotImplementedError, match="nested forward mode"):
        torch.func.jvp(inner, (w,), (torch.ones_like(w),))


def test_forward_mode_raises_naming_the_op():
    """Ops without forward-mode rules (here the LSTM's) say so by name."""
    layer = fastdl.nn.LSTM(6, 3).double()
    x = _second_inputs()[0].detach()
    with pytest.raises(NotImplementedError, match=r"fastdl: fastdl.lstm_layer.default: "
                                                  r"forward-mode AD \(torch.func.jvp"):
        torch.func.jacfwd(lambda x: layer(x.flatten(2))[0])(x)
    with forward_ad.dual_level(), pytest.raises(NotImplementedError,
                                                match="fastdl.lstm_layer.default: forward-mode"):
        layer(forward_ad.make_dual(x.flatten(2), torch.ones_like(x.flatten(2))))


def test_second_derivative_through_lstm_raises_naming_the_backward_op():
    """The recurrent, attention and batch norm backward ops are first order: a second
    derivative through one raises (before, PyTorch warned and returned zeros)."""
    layer = fastdl.nn.LSTM(6, 3).double()
    x, _, _ = _second_inputs()

    def loss(x):
        return layer(x.flatten(2))[0].square().sum()

    (grad,) = torch.autograd.grad(loss(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match="fastdl::lstm_layer_backward is not implemented"):
        torch.autograd.grad(grad.sum(), x)
    with pytest.raises(RuntimeError, match="fastdl::lstm_layer_backward is not implemented"):
        torch.func.grad(lambda x: torch.func.grad(loss)(x).sum())(x.detach())


@pytest.mark.parametrize("name,layer,x,batch_dim",
                         [case for case in LAYERS if "train" not in case[0]],
                         ids=[case[0] for case in LAYERS if "train" not in case[0]])
def test_vmap_forward_equals_a_loop(name, layer, x, batch_dim):
    """vmap of a forward alone (inference, no gradient): one op call per sample."""
    layer = layer.double()

    def forward(sample):
        args = (sample.unsqueeze(batch_dim),) * (3 if name == "MultiheadAttention" else 1)
        out = layer(*args)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batching fallback's performance warning
        batched = torch.func.vmap(forward, in_dims=batch_dim)(x)
        for i in range(x.shape[batch_dim]):
            torch.testing.assert_close(batched[i], forward(x.select(batch_dim, i)))
