"""fastdl.ops.batch_norm and the fused batch norm layers: parity with
F.batch_norm (+ residual add) + activation, forward, all gradients and running
statistics, over layouts, ranks, activations and dtypes; large-mean data, edge
shapes, gradcheck, opcheck, drop-in layers, torch.compile, SyncBatchNorm on two gloo
processes, fold_bn, bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdl
from conftest import TOLERANCES, TOLERANCES_VS_FLOAT64, requires_cuda
from parity import assert_close
from workers import run_worker

OPS = torch.ops.fastdl
ACTIVATIONS = ["none", "relu", "relu6", "silu", "leaky_relu"]
SLOPE = 0.2


def activate(z, activation):
    return {"none": lambda: z, "relu": lambda: F.relu(z), "relu6": lambda: F.relu6(z),
            "silu": lambda: F.silu(z), "leaky_relu": lambda: F.leaky_relu(z, SLOPE)}[activation]()


def reference(x, running_mean, running_var, weight, bias, training, momentum, eps, activation,
              residual):
    z = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return activate(z if residual is None else z + residual, activation)


# (shape, memory format): NCHW and channels_last, 1-D and 3-D batch norm inputs,
# (N, C, 1, 1), and planes / row counts large enough to split into several pieces.
LAYOUTS = {
    "nchw": ((2, 5, 7, 9), torch.contiguous_format),
    "channels_last": ((2, 5, 7, 9), torch.channels_last),
    "nc": ((6, 19), torch.contiguous_format),
    "ncl": ((3, 4, 11), torch.contiguous_format),
    "ncdhw": ((2, 3, 3, 4, 5), torch.contiguous_format),
    "channels_last_3d": ((2, 3, 3, 4, 5), torch.channels_last_3d),
    "spatial_1x1": ((5, 17, 1, 1), torch.contiguous_format),
}
LARGE_LAYOUTS = {
    # Many channels of few rows (as ResNet's last stage): rows spanning a page.
    "channels_last_wide_rows": ((32, 1024, 7, 7), torch.channels_last),
    "nchw_many_pieces": ((2, 3, 150, 230), torch.contiguous_format),
    "channels_last_many_blocks": ((4, 3, 100, 120), torch.channels_last),
}


def make_inputs(shape, memory_format, dtype, device, mean=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + mean)
    residual = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    bias = torch.rand(channels, generator=g, dtype=torch.float64) - 0.5
    running_mean = torch.randn(channels, generator=g, dtype=torch.float64)
    running_var = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5

    def to(t):
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=memory_format) if t.dim() == len(shape) and t.dim() > 3 else t

    return [to(t) for t in (x, residual, grad, weight, bias, running_mean, running_var)]


def check_against_reference(device, dtype, shape, memory_format, activation, with_residual,
                            training):
    x, residual, grad, weight, bias, running_mean, running_var = make_inputs(
        shape, memory_format, dtype, device)
    residual = residual if with_residual else None
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)] + (
        [residual.detach().requires_grad_()] if with_residual else [])
    ours_stats = (running_mean.clone(), running_var.clone())
    out = fastdl.ops.batch_norm(leaves[0], *ours_stats, leaves[1], leaves[2], training, 0.1, 1e-5,
                                activation, SLOPE, leaves[3] if with_residual else None)
    ours = [out, *torch.autograd.grad(out, leaves, grad)]

    # The reference in float64, from the same values.
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_stats = (running_mean.double(), running_var.double())
    ref_out = reference(ref_leaves[0], *ref_stats, ref_leaves[1], ref_leaves[2], training, 0.1,
                        1e-5, activation, ref_leaves[3] if with_residual else None)
    expected = [ref_out, *torch.autograd.grad(ref_out, ref_leaves, grad.double())]

    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=memory_format)
    tolerance = TOLERANCES_VS_FLOAT64[dtype]
    for name, actual, wanted in zip(["output", "grad_input", "grad_weight", "grad_bias",
                                     "grad_residual"], ours, expected):
        assert_close(actual.double(), wanted, **tolerance, msg=lambda m: f"{name}: {m}")
    for actual, wanted in zip(ours_stats, ref_stats):
        assert_close(actual.double(), wanted, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_matches_torch(device, layout, activation, with_residual, dtype):
    shape, memory_format = LAYOUTS[layout]
    check_against_reference(device, dtype, shape, memory_format, activation, with_residual, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc"])
def test_half_precision_inputs_with_float32_statistics(device, layout, training, dtype):
    shape, memory_format = LAYOUTS[layout]
    check_against_reference(device, dtype, shape, memory_format, "relu", True, training)
    mean, var = OPS.batch_norm_stats(torch.ones(2, 3, 4, dtype=dtype, device=device))
    assert mean.dtype == var.dtype == torch.float32


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_matches_torch(device, layout, activation, with_residual):
    shape, memory_format = LAYOUTS[layout]
    check_against_reference(device, torch.float32, shape, memory_format, activation,
                            with_residual, False)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", list(LARGE_LAYOUTS))
def test_large_inputs_split_into_pieces_match_torch(device, layout, training):
    shape, memory_format = LARGE_LAYOUTS[layout]
    check_against_reference(device, torch.float32, shape, memory_format, "relu", True, training)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_large_mean_statistics_are_exact(device, memory_format):
    """Inputs with mean 1e4 and std 1: no cancellation in the variance."""
    x = (torch.randn(4, 8, 30, 30, dtype=torch.float64) + 1e4)
    mean, var = OPS.batch_norm_stats(x.float().to(device).contiguous(memory_format=memory_format))
    expected = x.float().double()
    assert_close(mean.double().cpu(), expected.mean((0, 2, 3)), rtol=1e-7, atol=0)
    assert_close(var.double().cpu(), expected.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)


def test_statistics_are_deterministic_across_thread_counts():
    x, residual, grad, weight, bias, *_ = make_inputs((3, 6, 70, 80), torch.contiguous_format,
                                                      torch.float32, "cpu")
    threads = torch.get_num_threads()
    results = []
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        mean, var = OPS.batch_norm_stats(x)
        sums = OPS.batch_norm_act_backward_reduce(grad, x, mean, var, weight, bias, residual, 1e-5,
                                                  "relu", 0.0)
        results.append((mean, var, *sums[:2]))
    torch.set_num_threads(threads)
    for a, b in zip(results[0], results[-1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape, memory_format", [
    ((4, 12, 5, 6), torch.contiguous_format),
    ((8, 1024, 3, 3), torch.channels_last),
])
def test_one_op_passes_match_the_separate_ops(device, shape, memory_format):
    """batch_norm_act_train and batch_norm_act_backward (what autograd calls) against
    batch_norm_stats + batch_norm_act and the backward_reduce + backward_input pair
    (what SyncBatchNorm calls)."""
    x, residual, grad, weight, bias, *_ = make_inputs(shape, memory_format, torch.float32, device)
    epilogue = (1e-5, "relu", 0.0)
    out, mean, var = OPS.batch_norm_act_train(x, weight, bias, residual, *epilogue)
    mean2, var2 = OPS.batch_norm_stats(x)
    tolerance = TOLERANCES_VS_FLOAT64[torch.float32]
    assert_close(mean, mean2, **tolerance)
    assert_close(var, var2, **tolerance)
    assert_close(out, OPS.batch_norm_act(x, mean, var, weight, bias, residual, *epilogue),
                 **tolerance)
    grads = OPS.batch_norm_act_backward(grad, x, mean, var, weight, bias, residual, *epilogue,
                                        True, [True, True, True, True])
    sum_dz, sum_dz_xmu, dz = OPS.batch_norm_act_backward_reduce(
        grad, x, mean, var, weight, bias, residual, *epilogue, True)
    count = x.numel() // x.shape[1]
    grad_input, _ = OPS.batch_norm_act_backward_input(
        dz, x, mean, var, weight, bias, None, sum_dz / count, sum_dz_xmu / count, 1e-5, "none",
        0.0, [True, False])
    expected = [grad_input, sum_dz_xmu * torch.rsqrt(var + 1e-5), sum_dz, dz]
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted, **tolerance)


def test_empty_batch_leaves_running_stats(device):
    x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
    running_mean, running_var = torch.zeros(4, device=device), torch.ones(4, device=device)
    out = fastdl.ops.batch_norm(x, running_mean, running_var, training=True, activation="relu")
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(running_mean, torch.zeros(4, device=device))
    assert torch.equal(running_var, torch.ones(4, device=device))


def test_one_value_per_channel_fails_like_torch(device):
    x = torch.randn(1, 8, 1, 1, device=device)
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when "
                                         r"training, got input size \(1, 8, 1, 1\)"):
        fastdl.ops.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        F.batch_norm(x.cpu(), None, None, training=True)


def test_non_contiguous_inputs(device):
    x, residual, grad, weight, bias, *_ = make_inputs((3, 8, 6, 10), torch.contiguous_format,
                                                      torch.float32, device)
    x_view, residual_view = x[:, ::2, :, 1:8], residual[:, ::2, :, 1:8]
    out = fastdl.ops.batch_norm(x_view, None, None, weight[::2], bias[::2], True,
                                activation="relu", residual=residual_view)
    expected = reference(x_view, None, None, weight[::2], bias[::2], True, 0.1, 1e-5, "relu",
                         residual_view)
    assert_close(out, expected, **TOLERANCES_VS_FLOAT64[torch.float32])


@pytest.mark.parametrize("activation", ["none", "silu", "leaky_relu", "relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(device, training, activation):
    x, residual, _, weight, bias, running_mean, running_var = make_inputs(
        (3, 2, 3, 2), torch.contiguous_format, torch.float64, device, seed=1)
    leaves = [t.requires_grad_() for t in (x, weight, bias, residual)]

    def fn(x, weight, bias, residual):
        return fastdl.ops.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias,
                                     training, 0.1, 1e-5, activation, SLOPE, residual)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_opcheck(device, memory_format):
    x, residual, grad, weight, bias, mean, var = make_inputs((2, 3, 4, 5), memory_format,
                                                             torch.float32, device)
    epilogue = (1e-5, "leaky_relu", SLOPE)
    torch.library.opcheck(OPS.batch_norm_stats.default, (x,))
    torch.library.opcheck(OPS.batch_norm_act.default,
                          (x.requires_grad_(), mean, var, weight.requires_grad_(),
                           bias.requires_grad_(), residual.requires_grad_(), *epilogue))
    torch.library.opcheck(OPS.batch_norm_act_train.default,
                          (x, weight, bias, residual, *epilogue))
    x, weight, bias, residual = (t.detach() for t in (x, weight, bias, residual))
    for write_dz in (False, True):
        torch.library.opcheck(OPS.batch_norm_act_backward_reduce.default,
                              (grad, x, mean, var, weight, bias, residual, *epilogue, write_dz))
    sums = OPS.batch_norm_act_backward_reduce(grad, x, mean, var, weight, bias, residual,
                                              *epilogue)[:2]
    for batch_stats in (True, False):
        for mask in ([True, True, True, True], [True, False, False, False],
                     [False, True, True, False], [False, False, False, True]):
            torch.library.opcheck(OPS.batch_norm_act_backward.default,
                                  (grad, x, mean, var, weight, bias, residual, *epilogue,
                                   batch_stats, mask))
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(OPS.batch_norm_act_backward_input.default,
                              (grad, x, mean, var, weight, bias, residual, *sums, *epilogue, mask))
    torch.library.opcheck(OPS.batch_norm_act_backward_input.default,
                          (grad, x, mean, var, None, None, None, None, None, *epilogue,
                           [True, False]))


# ---- layers ----

LAYER_PAIRS = [
    (fastdl.nn.BatchNorm1d, nn.BatchNorm1d, (6, 4)),
    (fastdl.nn.BatchNorm1d, nn.BatchNorm1d, (3, 4, 7)),
    (fastdl.nn.BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 6)),
    (fastdl.nn.BatchNorm3d, nn.BatchNorm3d, (2, 4, 3, 4, 5)),
    (fastdl.nn.SyncBatchNorm, nn.SyncBatchNorm, (3, 4, 5, 6)),
]


@pytest.mark.parametrize("options", [dict(), dict(momentum=None), dict(affine=False),
                                     dict(track_running_stats=False)],
                         ids=["default", "cumulative", "no_affine", "no_running_stats"])
@pytest.mark.parametrize("ours_cls, torch_cls, shape", LAYER_PAIRS,
                         ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_layer_is_a_drop_in(device, ours_cls, torch_cls, shape, options):
    theirs = torch_cls(4, **options).to(device)
    ours = ours_cls(4, activation="relu", **options).to(device)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
    assert ours.load_state_dict(theirs.state_dict()) is not None
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(3):  # training steps: outputs and running statistics
        x = torch.randn(shape, device=device) * (step + 1) + step
        assert_close(ours(x), F.relu(theirs(x)), **TOLERANCES_VS_FLOAT64[torch.float32])
    for name, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[name], value, **TOLERANCES_VS_FLOAT64[torch.float32])
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, device=device)
    assert_close(ours(x), F.relu(theirs(x)), **TOLERANCES_VS_FLOAT64[torch.float32])


def test_layer_residual_argument_and_repr():
    layer = fastdl.nn.BatchNorm2d(3, activation="leaky_relu", negative_slope=0.3)
    assert "activation='leaky_relu', negative_slope=0.3" in repr(layer)
    assert "activation" not in repr(fastdl.nn.BatchNorm2d(3))
    x, residual = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    reference_layer = nn.BatchNorm2d(3)
    assert_close(layer(x, residual), F.leaky_relu(reference_layer(x) + residual, 0.3),
                 **TOLERANCES_VS_FLOAT64[torch.float32])
    assert isinstance(layer, nn.BatchNorm2d)


def test_layer_from_batch_norm_shares_parameters_and_buffers():
    bn = nn.BatchNorm2d(3).eval()
    layer = fastdl.nn.BatchNorm2d.from_batch_norm(bn, activation="relu6")
    assert layer.weight is bn.weight and layer.running_var is bn.running_var
    assert not layer.training and layer.activation == "relu6"
    x = torch.randn(2, 3, 4, 4) * 5
    assert_close(layer(x), F.relu6(bn(x)))


def test_layer_rejects_unknown_activation():
    with pytest.raises(ValueError, match="BatchNorm2d: activation must be one of 'none', "
                                         "'relu', 'relu6', 'silu', 'leaky_relu', got 'gelu'"):
        fastdl.nn.BatchNorm2d(3, activation="gelu")


def test_layer_checks_input_rank_like_torch():
    with pytest.raises(ValueError, match="expected 4D input"):
        fastdl.nn.BatchNorm2d(3)(torch.randn(3, 4, 4))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_under_torch_compile(device, training):
    layer = fastdl.nn.BatchNorm2d(4, activation="silu").to(device).train(training)
    reference_layer = nn.BatchNorm2d(4).to(device).train(training)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    residual = torch.randn(3, 4, 5, 5, device=device)
    out = compiled(x, residual)
    expected = F.silu(reference_layer(x) + residual)
    assert_close(out, expected, **TOLERANCES_VS_FLOAT64[torch.float32])
    grad, = torch.autograd.grad(out.sum(), x)
    expected_grad, = torch.autograd.grad(expected.sum(), x)
    assert_close(grad, expected_grad, **TOLERANCES_VS_FLOAT64[torch.float32])
    assert_close(layer.running_mean, reference_layer.running_mean)


def test_sync_batch_norm_on_two_gloo_processes_equals_batch_norm_on_the_whole_batch(tmp_path):
    """Two processes each run SyncBatchNorm on half the batch; outputs, input
    gradients and running statistics equal one BatchNorm over the whole batch, and
    the per-process weight gradients sum to the whole batch's."""
    worker = run_worker("sync_batch_norm_worker", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, residual, grad, weight, bias = worker.inputs()
    layer = nn.BatchNorm2d(5).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    x.requires_grad_()
    residual.requires_grad_()
    out = F.leaky_relu(layer(x) + residual, 0.2)
    out.backward(grad)

    tolerance = TOLERANCES[torch.float64]
    assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **tolerance)
    assert_close(torch.cat([r["grad_input"] for r in ranks]), x.grad, **tolerance)
    assert_close(torch.cat([r["grad_residual"] for r in ranks]), residual.grad, **tolerance)
    assert_close(ranks[0]["grad_weight"] + ranks[1]["grad_weight"], layer.weight.grad, **tolerance)
    assert_close(ranks[0]["grad_bias"] + ranks[1]["grad_bias"], layer.bias.grad, **tolerance)
    for r in ranks:
        assert_close(r["running_mean"], layer.running_mean, **tolerance)
        assert_close(r["running_var"], layer.running_var, **tolerance)


def test_sync_batch_norm_without_process_group_is_batch_norm():
    layer = fastdl.nn.SyncBatchNorm(3, activation="relu")
    x = torch.randn(4, 3, 5, 5)
    assert_close(layer(x), F.relu(nn.BatchNorm2d(3)(x)), **TOLERANCES_VS_FLOAT64[torch.float32])


def _sync_conversion_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        fastdl.nn.BatchNorm2d(4, activation="leaky_relu", negative_slope=0.2),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False)),
        fastdl.nn.SyncBatchNorm(4, activation="silu", momentum=None),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6, track_running_stats=False),
    ).double()
    model[1].eval()  # the train/eval mode of each layer is kept
    for _ in range(2):  # non-trivial running statistics
        model(torch.randn(3, 3, 5, 5, dtype=torch.float64))
    return model


def test_convert_sync_batchnorm_keeps_activations_parameters_and_buffers():
    model = _sync_conversion_model()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    expected = copy.deepcopy(model)(x)
    group = object()  # passed through as is (no process group is initialised here)
    converted = fastdl.nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
    assert converted is model
    norms = [model[1], model[2][1], model[3], model[6]]
    assert all(type(bn) is fastdl.nn.SyncBatchNorm for bn in norms)
    assert [bn.activation for bn in norms] == ["leaky_relu", "none", "silu", "none"]
    assert norms[0].negative_slope == 0.2 and norms[2].momentum is None
    assert [bn.training for bn in norms] == [False, True, True, True]
    assert all(bn.process_group is group for bn in norms)
    assert [id(p) for p in model.parameters()] == parameters  # shared, as torch's does
    assert list(model.state_dict()) == list(state)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    # no process group initialised: each layer is a plain fused batch norm
    assert_close(model(x), expected, **TOLERANCES_VS_FLOAT64[torch.float64])


def test_convert_sync_batchnorm_converts_a_lone_layer():
    bn = fastdl.nn.BatchNorm1d(5, activation="relu6")
    converted = fastdl.nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(converted) is fastdl.nn.SyncBatchNorm and converted.activation == "relu6"
    assert converted.weight is bn.weight and converted.running_var is bn.running_var
    x = torch.randn(4, 5) * 4
    assert_close(converted(x), F.relu6(nn.BatchNorm1d(5)(x)), **TOLERANCES_VS_FLOAT64[torch.float32])


def test_convert_sync_batchnorm_reads_activations_of_fastdl_layers_only():
    """Another library's batch norm subclass may have an `activation` field of its own
    (here a name fastdl does not know); it converts as torch's converter converts it,
    with no activation."""

    class NormWithActivation(nn.BatchNorm2d):
        def __init__(self, features):
            super().__init__(features)
            self.activation = "gelu"

    model = nn.Sequential(nn.BatchNorm2d(2), NormWithActivation(2))
    fastdl.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(m) for m in model] == [fastdl.nn.SyncBatchNorm] * 2
    assert model[1].activation == "none"


def test_convert_sync_batchnorm_refuses_uninitialised_lazy_norms():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(nn.LazyBatchNorm2d()))
    with pytest.raises(ValueError, match=r"convert_sync_batchnorm: module: expected batch "
                                         r"norms of known size, got an uninitialised "
                                         r"LazyBatchNorm2d at '1.0'"):
        fastdl.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[0]) is nn.BatchNorm2d  # nothing converted
    model(torch.randn(2, 3, 4, 4))  # initialised: converts
    fastdl.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[1][0]) is fastdl.nn.SyncBatchNorm and model[1][0].num_features == 3


# ---- fold_bn ----

FOLDABLE = [
    lambda: nn.Conv2d(3, 6, 3, padding=1),
    lambda: nn.Conv2d(4, 6, 3, groups=2, bias=False),
    lambda: fastdl.nn.DepthwiseConv2d(6, 3, padding=1),
    lambda: nn.Conv1d(3, 6, 5),
    lambda: nn.Conv3d(3, 6, 1),
    lambda: nn.Linear(5, 6),
]


@pytest.mark.parametrize("make_conv", FOLDABLE, ids=["conv2d", "grouped_no_bias", "depthwise",
                                                     "conv1d", "conv3d", "linear"])
def test_fold_bn_is_exact(make_conv):
    torch.manual_seed(0)
    conv = make_conv().double()
    bn = nn.BatchNorm1d(6) if isinstance(conv, (nn.Conv1d, nn.Linear)) else (
        nn.BatchNorm3d(6) if isinstance(conv, nn.Conv3d) else nn.BatchNorm2d(6))
    bn = bn.double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.eval()
    in_shape = {nn.Linear: (4, 5), nn.Conv1d: (2, 3, 9), nn.Conv3d: (2, 3, 3, 4, 4)}.get(type(conv))
    in_shape = in_shape or (2, conv.in_channels, 7, 7)
    x = torch.randn(in_shape, dtype=torch.float64)
    folded = fastdl.fold_bn(conv, bn)
    assert_close(folded(x), bn(conv(x)))
    assert type(folded) is type(conv)


def test_fold_bn_keeps_the_activation():
    conv, bn = nn.Conv2d(3, 4, 3), fastdl.nn.BatchNorm2d(4, activation="relu6").eval()
    x = torch.randn(2, 3, 6, 6) * 4
    folded = fastdl.fold_bn(conv, bn)
    assert isinstance(folded, nn.Sequential) and isinstance(folded[1], nn.ReLU6)
    assert_close(folded(x), bn(conv(x)), **TOLERANCES_VS_FLOAT64[torch.float32])


@pytest.mark.parametrize("conv, bn, error, message", [
    (nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4), TypeError, "transposed convolutions"),
    (nn.Conv2d(3, 4, 3), nn.LayerNorm(4), TypeError, "bn must be a batch norm layer"),
    (nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5), ValueError, "bn has 5 features but conv has 4"),
    (nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), ValueError,
     "no running statistics"),
])
def test_fold_bn_bad_arguments(conv, bn, error, message):
    with pytest.raises(error, match=message):
        fastdl.fold_bn(conv, bn)


# ---- bad input ----

def _args(**changes):
    x, residual, _, weight, bias, mean, var = make_inputs((2, 3, 4, 4), torch.contiguous_format,
                                                          torch.float32, "cpu")
    args = dict(input=x, mean=mean, var=var, weight=weight, bias=bias, residual=residual,
                eps=1e-5, activation="relu", negative_slope=0.0)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, error, message", [
    (dict(input=torch.randn(5)), ValueError,
     r"fastdl.batch_norm_act: input must have shape \(N, C, \*\) with at least 2 dimensions, "
     r"got \(5,\)"),
    (dict(input=torch.randn(2, 0, 3)), ValueError, "input must have at least one channel"),
    (dict(input=torch.ones(2, 3, 4, 4, dtype=torch.int32)), TypeError,
     "input must be torch.float32, torch.float64, torch.float16 or torch.bfloat16, "
     "got torch.int32"),
    (dict(mean=torch.zeros(4)), ValueError,
     r"mean must have shape \(C,\) with C = input.size\(1\), got \(4,\)"),
    (dict(var=torch.ones(3, 1)), ValueError, r"var must have shape \(C,\)"),
    (dict(var=torch.ones(3, dtype=torch.int64)), TypeError,
     "var must be a floating-point tensor, got torch.int64"),
    (dict(weight=torch.ones(2)), ValueError, r"weight must have shape \(C,\)"),
    (dict(bias=torch.ones(5)), ValueError, r"bias must have shape \(C,\)"),
    (dict(residual=torch.randn(2, 3, 4, 5)), ValueError,
     r"residual must have the input's shape \(2, 3, 4, 4\), got \(2, 3, 4, 5\)"),
    (dict(residual=torch.randn(2, 3, 4, 4, dtype=torch.float64)), TypeError,
     "input and residual must have the same dtype"),
    (dict(eps=-1.0), ValueError, "eps must be a finite number >= 0, got -1"),
    (dict(negative_slope=float("nan")), ValueError, "negative_slope must be finite"),
    (dict(activation="gelu"), ValueError,
     "activation must be one of 'none', 'relu', 'relu6', 'silu', 'leaky_relu', got 'gelu'"),
])
def test_bad_input(changes, error, message):
    with pytest.raises(error, match=message):
        OPS.batch_norm_act(**_args(**changes))


def test_backward_ops_check_their_extra_arguments():
    args = _args()
    grad = torch.randn(2, 3, 4, 5)
    epilogue = (args["weight"], args["bias"], args["residual"], 1e-5, "relu", 0.0)
    with pytest.raises(ValueError, match="fastdl.batch_norm_act_backward_reduce: grad_output "
                                         r"must have the input's shape"):
        OPS.batch_norm_act_backward_reduce(grad, args["input"], args["mean"], args["var"],
                                           *epilogue)
    grad = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="mean_dz and mean_dz_xmu must be given together"):
        OPS.batch_norm_act_backward_input(grad, args["input"], args["mean"], args["var"],
                                          *epilogue[:3], args["mean"], None, *epilogue[3:],
                                          [True, False])
    for mask, missing in [([False, True, False, False], "grad_weight"),
                          ([False, False, True, False], "grad_bias"),
                          ([False, False, False, True], "grad_residual")]:
        with pytest.raises(ValueError, match=f"{missing} was asked for, but"):
            OPS.batch_norm_act_backward(grad, args["input"], args["mean"], args["var"], None, None,
                                        None, *epilogue[3:], True, mask)
    with pytest.raises(ValueError, match="grad_residual was asked for, but residual is None"):
        OPS.batch_norm_act_backward_input(grad, args["input"], args["mean"], args["var"],
                                          args["weight"], args["bias"], None, None, None,
                                          *epilogue[3:], [True, True])


def test_eval_without_running_stats_fails():
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        fastdl.ops.batch_norm(torch.randn(2, 3), None, None, training=False)


@requires_cuda
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="must be on the same device"):
        fastdl.ops.batch_norm(torch.randn(2, 3, device="cuda"), None, None, torch.ones(3), None,
                              training=True)
