"""fastdl.nn.DilatedConv2d / DilatedConv1d: drop-ins for nn.Conv2d / nn.Conv1d loaded with
the same state_dict (outputs and every gradient) over paddings, padding modes, groups,
layouts and unbatched input; causal convolution against F.pad; incremental inference
(step) against the full causal convolution, one layer and a WaveNet stack; convert's
"dilated" family; torch.compile; state_dict round trips."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl
from conftest import TOLERANCES_VS_FLOAT64
from parity import assert_close

DTYPES = [torch.float64, torch.float32]

# (in, out, kernel, stride, padding, dilation, groups, bias, padding_mode, input spatial size)
CONV2D_CASES = [
    (4, 6, 3, 1, 2, 2, 1, True, "zeros", (11, 9)),
    (4, 6, 3, 1, 6, 6, 1, True, "zeros", (16, 15)),          # ASPP branch
    (6, 4, 3, 2, 1, (2, 3), 2, True, "zeros", (13, 12)),     # strided, grouped
    (4, 4, (2, 3), 1, "same", (3, 2), 1, True, "zeros", (9, 10)),  # even extent: uneven 'same'
    (4, 8, 3, 1, "same", 2, 4, False, "zeros", (8, 7)),
    (3, 5, 3, (1, 2), "valid", 2, 1, True, "zeros", (12, 11)),
    (4, 6, 3, 1, 2, 2, 2, True, "reflect", (9, 9)),
    (4, 6, 3, 1, (1, 2), (1, 2), 1, False, "circular", (8, 10)),
    (4, 4, 2, 1, "same", 3, 1, True, "replicate", (10, 9)),
]

# (in, out, kernel, stride, padding, dilation, groups, bias, padding_mode, length)
CONV1D_CASES = [
    (4, 6, 3, 1, 4, 4, 1, True, "zeros", 23),
    (6, 4, 2, 2, 1, 3, 2, False, "zeros", 20),
    (4, 4, 2, 1, "same", 5, 1, True, "zeros", 17),            # uneven 'same'
    (3, 6, 3, 1, "valid", 2, 3, True, "zeros", 15),
    (4, 6, 3, 1, 2, 2, 1, True, "reflect", 16),
    (4, 4, 2, 1, 3, 3, 2, True, "circular", 14),
]


def _pair_of_layers(fastdl_kind, torch_kind, case, dtype):
    cin, cout, k, stride, padding, dilation, groups, bias, mode, _ = case
    torch.manual_seed(0)
    reference = torch_kind(cin, cout, k, stride, padding, dilation, groups, bias, mode, dtype=dtype)
    layer = fastdl_kind(cin, cout, k, stride, padding, dilation, groups, bias, mode, dtype=dtype)
    layer.load_state_dict(reference.state_dict())
    return layer, reference


def _check_parity(layer, reference, x, dtype):
    tolerance = TOLERANCES_VS_FLOAT64[dtype]
    x_ref = x.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    out, expected = layer(x), reference(x_ref)
    assert_close(out, expected, **tolerance)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    assert_close(x.grad, x_ref.grad, **tolerance)
    assert_close(layer.weight.grad, reference.weight.grad, **tolerance)
    if reference.bias is not None:
        assert_close(layer.bias.grad, reference.bias.grad, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_matches_nn_conv2d(case, dtype):
    layer, reference = _pair_of_layers(fastdl.nn.DilatedConv2d, nn.Conv2d, case, dtype)
    _check_parity(layer, reference, torch.randn(2, case[0], *case[-1], dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_conv1d_matches_nn_conv1d(case, dtype):
    layer, reference = _pair_of_layers(fastdl.nn.DilatedConv1d, nn.Conv1d, case, dtype)
    _check_parity(layer, reference, torch.randn(2, case[0], case[-1], dtype=dtype), dtype)


def test_unbatched_input():
    layer, reference = _pair_of_layers(fastdl.nn.DilatedConv2d, nn.Conv2d, CONV2D_CASES[2],
                                       torch.float64)
    _check_parity(layer, reference, torch.randn(6, 13, 12, dtype=torch.float64), torch.float64)
    layer, reference = _pair_of_layers(fastdl.nn.DilatedConv1d, nn.Conv1d, CONV1D_CASES[0],
                                       torch.float64)
    _check_parity(layer, reference, torch.randn(4, 23, dtype=torch.float64), torch.float64)
    causal = fastdl.nn.DilatedConv1d(4, 3, 2, dilation=2, causal=True, dtype=torch.float64)
    x = torch.randn(4, 9, dtype=torch.float64)
    assert_close(causal(x), causal(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_keeps_the_layout(dtype):
    layer, reference = _pair_of_layers(fastdl.nn.DilatedConv2d, nn.Conv2d, CONV2D_CASES[1], dtype)
    x = torch.randn(2, 4, 16, 15, dtype=dtype).to(memory_format=torch.channels_last)
    assert layer(x).is_contiguous(memory_format=torch.channels_last)
    _check_parity(layer, reference, x, dtype)


class LeftPadded(nn.Module):
    """The reference causal convolution: nn.Conv1d after F.pad(x, (dilation * (k - 1), 0))."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x):
        return self.conv(F.pad(x, (self.conv.dilation[0] * (self.conv.kernel_size[0] - 1), 0)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel, dilation, groups", [(2, 1, 1), (2, 8, 1), (3, 3, 2), (4, 2, 1)])
def test_causal_matches_left_padding(kernel, dilation, groups, dtype):
    torch.manual_seed(0)
    layer = fastdl.nn.DilatedConv1d(4, 6, kernel, dilation=dilation, groups=groups, causal=True,
                                    dtype=dtype)
    reference = nn.Conv1d(4, 6, kernel, dilation=dilation, groups=groups, dtype=dtype)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 19, dtype=dtype)
    _check_parity(layer, LeftPadded(reference), x, dtype)
    assert layer(x).shape == (2, 6, 19)
    assert "causal=True" in repr(layer)


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding="same"), dict(stride=2),
                                    dict(padding_mode="reflect")], ids=str)
def test_causal_rejects_padding_and_stride(kwargs):
    with pytest.raises(ValueError, match="causal=True pads dilation"):
        fastdl.nn.DilatedConv1d(4, 4, 2, dilation=2, causal=True, **kwargs)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("dilation", [1, 2, 5])
def test_step_by_step_equals_the_full_causal_convolution(dilation, kernel, groups):
    torch.manual_seed(0)
    layer = fastdl.nn.DilatedConv1d(4, 6, kernel, dilation=dilation, groups=groups,
                                    causal=True, dtype=torch.float64)
    x = torch.randn(2, 4, 3 * dilation * kernel + 12, dtype=torch.float64)
    expected = layer(x)
    with torch.no_grad():
        state = layer.init_state(2)
        assert state.buffer.shape == (2, 4, dilation * (kernel - 1) + 1)
        steps = torch.stack([layer.step(x[:, :, t], state) for t in range(x.shape[2])], dim=2)
        assert_close(steps, expected)
        # A prompt as one chunk, then steps, then a chunk again: the same outputs.
        state = layer.init_state(2)
        split, rest = 7, x.shape[2] - 4
        head = layer.step(x[:, :, :split], state)
        middle = torch.stack([layer.step(x[:, :, t], state) for t in range(split, rest)], dim=2)
        mixed = torch.cat([head, middle, layer.step(x[:, :, rest:], state)], dim=2)
        assert_close(mixed, expected)


class WaveNetStack(nn.Module):
    """Gated residual blocks of causal convolutions (k=2, dilations 1, 2, 4, ...), 1x1
    residual and skip convolutions. ``conv`` builds the dilated layers: a fastdl causal
    layer, or nn.Conv1d after an explicit F.pad."""

    def __init__(self, channels, dilations, fastdl_layers, dtype=torch.float64):
        super().__init__()
        self.fastdl_layers, self.dilations = fastdl_layers, dilations
        kind = (lambda c, o, d: fastdl.nn.DilatedConv1d(c, o, 2, dilation=d, causal=True,
                                                        dtype=dtype)) if fastdl_layers else \
               (lambda c, o, d: nn.Conv1d(c, o, 2, dilation=d, dtype=dtype))
        self.dilated = nn.ModuleList(kind(channels, 2 * channels, d) for d in dilations)
        self.residual = nn.ModuleList(nn.Conv1d(channels, channels, 1, dtype=dtype)
                                      for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(channels, channels, 1, dtype=dtype) for _ in dilations)

    def forward(self, x):
        skips = 0
        for d, dilated, residual, skip in zip(self.dilations, self.dilated, self.residual,
                                              self.skip):
            h = dilated(x) if self.fastdl_layers else dilated(F.pad(x, (d, 0)))
            a, b = h.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            x, skips = x + residual(z), skips + skip(z)
        return skips

    def init_states(self, batch):
        return [layer.init_state(batch) for layer in self.dilated]

    def step(self, x, states):
        """One time step x (N, C) through the stack."""
        skips = 0
        for dilated, residual, skip, state in zip(self.dilated, self.residual, self.skip, states):
            a, b = dilated.step(x, state).chunk(2, dim=1)
            z = (torch.tanh(a) * torch.sigmoid(b)).unsqueeze(2)
            x, skips = x + residual(z).squeeze(2), skips + skip(z).squeeze(2)
        return skips


def test_step_through_a_stack_equals_the_full_stack():
    torch.manual_seed(0)
    model = WaveNetStack(4, [1, 2, 4, 8, 1, 2], fastdl_layers=True)
    x = torch.randn(2, 4, 40, dtype=torch.float64)
    expected = model(x)
    with torch.no_grad():
        states = model.init_states(2)
        steps = torch.stack([model.step(x[:, :, t], states) for t in range(x.shape[2])], dim=2)
    assert_close(steps, expected)


def test_step_rejects_non_causal_layers_and_bad_shapes():
    layer = fastdl.nn.DilatedConv1d(4, 4, 2, dilation=2)
    with pytest.raises(ValueError, match="needs a causal layer"):
        layer.init_state(2)
    causal = fastdl.nn.DilatedConv1d(4, 4, 2, dilation=2, causal=True)
    state = causal.init_state(2)
    with pytest.raises(ValueError, match=r"with \(N, C_in\) = \(2, 4\)"):
        causal.step(torch.randn(3, 4), state)


def test_from_conv_shares_the_parameters():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect")
    layer = fastdl.nn.DilatedConv2d.from_conv2d(conv.eval())
    assert layer.weight is conv.weight and layer.bias is conv.bias and not layer.training
    assert (layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode) == (
        (2, 2), (2, 2), (2, 2), 2, "reflect")
    x = torch.randn(1, 4, 12, 12)
    assert_close(layer(x), conv(x), **TOLERANCES_VS_FLOAT64[torch.float32])
    conv1d = nn.Conv1d(4, 6, 2, dilation=4, bias=False)
    causal = fastdl.nn.DilatedConv1d.from_conv1d(conv1d, causal=True)
    assert causal.weight is conv1d.weight and causal.bias is None and causal.causal
    x = torch.randn(1, 4, 12)
    assert_close(causal(x), conv1d(F.pad(x, (4, 0))), **TOLERANCES_VS_FLOAT64[torch.float32])


class ASPP(nn.Module):
    """DeepLab's atrous spatial pyramid pooling head, small: a 1x1 branch and 3x3 branches
    at dilations 6, 12, 18, concatenated and projected."""

    def __init__(self, cin=8, cout=4):
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(cin, cout, 1)] + [
            nn.Conv2d(cin, cout, 3, padding=d, dilation=d, bias=False) for d in (6, 12, 18)])
        self.project = nn.Conv2d(4 * cout, cout, 1)

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


def test_convert_swaps_the_dilated_branches_of_aspp():
    torch.manual_seed(0)
    model = ASPP().double()
    converted, report = fastdl.convert(model)
    assert [name for name, _, _ in report.swapped] == ["branches.1", "branches.2", "branches.3"]
    assert report.swapped[0][1:] == ("nn.Conv2d(dilation=(6, 6))", "fastdl.nn.DilatedConv2d")
    assert type(converted.branches[0]) is nn.Conv2d and type(converted.project) is nn.Conv2d
    x = torch.randn(2, 8, 20, 20, dtype=torch.float64)
    assert_close(converted(x), model(x))


def test_convert_swaps_a_wavenet_stack():
    torch.manual_seed(0)
    model = WaveNetStack(4, [1, 2, 4, 8], fastdl_layers=False)
    converted, report = fastdl.convert(model)
    assert [name for name, _, _ in report.swapped] == ["dilated.1", "dilated.2", "dilated.3"]
    assert all(new == "fastdl.nn.DilatedConv1d" for _, _, new in report.swapped)
    assert type(converted.dilated[0]) is nn.Conv1d                    # dilation 1: torch's
    x = torch.randn(2, 4, 30, dtype=torch.float64, requires_grad=True)
    out, expected = converted(x), model(x)
    assert_close(out, expected)
    (g1,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad(expected.sum(), x)
    assert_close(g1, g2)


def test_convert_priority_between_depthwise_and_dilated():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),
                          nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
                          nn.Conv2d(8, 8, 3, groups=4))
    converted, report = fastdl.convert(model)
    assert type(converted[0]) is fastdl.nn.DepthwiseConv2d
    assert type(converted[1]) is fastdl.nn.DilatedConv2d
    assert type(converted[2]) is nn.Conv2d and [n for n, _, _ in report.skipped] == ["2"]
    only_dilated, _ = fastdl.convert(model, families=["dilated"])
    assert type(only_dilated[0]) is fastdl.nn.DilatedConv2d
    x = torch.randn(1, 8, 10, 10)
    assert_close(only_dilated(x), model(x), **TOLERANCES_VS_FLOAT64[torch.float32])


def test_under_torch_compile():
    torch.manual_seed(0)
    layer = fastdl.nn.DilatedConv2d(4, 6, 3, padding="same", dilation=2)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 10, 9, requires_grad=True)
    out = compiled(x)
    assert_close(out, F.conv2d(x, layer.weight, layer.bias, padding="same", dilation=2),
                 **TOLERANCES_VS_FLOAT64[torch.float32])
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_state_dict_round_trip():
    layer = fastdl.nn.DilatedConv2d(4, 6, 3, padding=2, dilation=2, groups=2)
    reference = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
    assert list(layer.state_dict()) == list(reference.state_dict()) == ["weight", "bias"]
    reference.load_state_dict(layer.state_dict())
    back = fastdl.nn.DilatedConv2d(4, 6, 3, padding=2, dilation=2, groups=2)
    back.load_state_dict(reference.state_dict())
    assert torch.equal(back.weight, layer.weight) and torch.equal(back.bias, layer.bias)
    causal = fastdl.nn.DilatedConv1d(4, 6, 2, dilation=4, causal=True)
    assert list(causal.state_dict()) == ["weight", "bias"]
    nn.Conv1d(4, 6, 2, dilation=4).load_state_dict(causal.state_dict())
