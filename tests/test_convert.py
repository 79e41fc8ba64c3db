"""fastdl.convert and fastdl.fold_bn(model): real torchvision models converted give the
same outputs, gradients and running statistics; the report says what was swapped and
why the rest was not; torch.compile over a converted model; DistributedDataParallel
with the converted SyncBatchNorm on 2 gloo processes equals single-process training."""

import pytest
import torch
from torch import nn

import fastdl
from conftest import TOLERANCES_VS_FLOAT64
from parity import assert_close
from workers import run_worker

torchvision = pytest.importorskip("torchvision")


def randomized_batch_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their defaults, so a
    conversion that lost them would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def relative_close(actual, expected, rtol=1e-4):
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual - expected).abs().max() / scale).item() < rtol


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_mobilenet_v2_converted_gives_the_same_outputs(training):
    torch.manual_seed(0)  # float64: differences are the ops', not float32 rounding's
    model = randomized_batch_norms(torchvision.models.mobilenet_v2()).double().train(training)
    converted, report = fastdl.convert(model)
    kinds = [new for _, _, new in report.swapped]
    assert kinds.count("fastdl.nn.DepthwiseConv2d") == 17
    assert kinds.count("fastdl.nn.BatchNorm2d") == 52
    assert sum("activation='relu6'" in k for k in kinds) == 35
    assert not report.skipped
    assert converted.training == training

    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.manual_seed(1)  # the same dropout mask for both
    out = converted(x)
    torch.manual_seed(1)
    expected = model(x)
    relative_close(out, expected, rtol=1e-10)
    if training:
        out.square().mean().backward()
        expected.square().mean().backward()
        relative_close(converted.features[1].conv[0][0].weight.grad,
                       model.features[1].conv[0][0].weight.grad, rtol=1e-9)
        relative_close(converted.features[18][1].running_var, model.features[18][1].running_var,
                       rtol=1e-10)


def test_resnet_activations_outside_sequentials_stay_modules():
    """ResNet blocks call one ReLU module twice: only what is in a Sequential may be
    absorbed, so their ReLUs are kept."""
    model = randomized_batch_norms(torchvision.models.resnet18()).eval()
    converted, report = fastdl.convert(model)
    assert len(report.swapped) == 20 and all("BatchNorm2d" in new for _, _, new in report.swapped)
    assert isinstance(converted.layer1[0].relu, nn.ReLU)
    x = torch.randn(1, 3, 64, 64)
    relative_close(converted(x), model(x))


def test_report_lists_what_was_not_swapped_and_why():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4), nn.MultiheadAttention(4, 2), nn.Conv2d(8, 8, 3, groups=8))
    converted, report = fastdl.convert(model)
    assert [name for name, _, _ in report.swapped] == ["1", "2"]
    assert isinstance(converted[1], fastdl.nn.MultiheadAttention)
    reasons = dict((name, why) for name, _, why in report.skipped)
    assert list(reasons) == ["0"] and "not depthwise" in reasons["0"]
    assert "2 layers swapped, 1 left as they are" in str(report)
    assert type(model[2]) is nn.Conv2d  # not in place: the original is untouched


def test_families_and_inplace():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4), nn.ReLU())
    same, report = fastdl.convert(model, families=["batch_norm"], inplace=True)
    assert same is model and type(model[0]) is nn.Conv2d
    assert isinstance(model[1], fastdl.nn.BatchNorm2d) and model[1].activation == "relu"
    assert isinstance(model[2], nn.Identity)
    with pytest.raises(ValueError, match="unknown families \\['transposed'\\]"):
        fastdl.convert(model, families=["transposed"])
    with pytest.raises(TypeError, match="the model itself is a single layer"):
        fastdl.convert(nn.BatchNorm2d(3))


def test_converted_model_under_torch_compile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU())
    converted, _ = fastdl.convert(model)
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 12, 12)
    assert_close(compiled(x), model(x), **TOLERANCES_VS_FLOAT64[torch.float32])


def test_fold_bn_over_a_whole_model():
    model = randomized_batch_norms(torchvision.models.mobilenet_v2()).eval()
    converted, _ = fastdl.convert(model)
    folded = fastdl.fold_bn(converted)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == 35
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        relative_close(folded(x), model(x))
    training = fastdl.fold_bn(model.train())  # batch statistics: nothing to fold
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in training.modules()) == 52


def test_ddp_with_converted_sync_batch_norm_equals_single_process(tmp_path):
    worker = run_worker("ddp_worker", tmp_path)
    model, _ = fastdl.convert(worker.make_model())
    single = worker.train(model, worker.batches()).state_dict()
    for rank in range(2):
        distributed = torch.load(tmp_path / f"rank{rank}.pt")
        assert list(distributed) == list(single)
        for name, value in single.items():
            assert_close(distributed[name], value, rtol=1e-9, atol=1e-10, msg=name)


def _small_binary_candidate():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3, padding=1),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Flatten(),
                         nn.Linear(16 * 36, 32), nn.Linear(32, 10))


def test_convert_binary_swaps_hidden_layers_and_packs_in_eval():
    model = _small_binary_candidate()
    converted, report = fastdl.convert(model, families=[], binary=True)
    assert type(converted[0]) is nn.Conv2d and type(converted[6]) is nn.Linear  # first/last stay float
    assert isinstance(converted[2], fastdl.nn.XNORConv2d) and not converted[2].packed
    assert isinstance(converted[5], fastdl.nn.BinaryLinear)
    assert type(converted[3]) is nn.Conv2d  # depthwise: not binarised
    assert converted[2].weight is not model[2].weight and torch.equal(converted[2].weight, model[2].weight)
    assert "in training mode, so not packed" in str(report)
    x = torch.randn(4, 1, 6, 6)
    converted.eval()
    expected = converted(x)
    packed, report = fastdl.convert(converted, families=[], binary=True)
    assert packed[2].packed and packed[5].packed and "2.weight_bits" in packed.state_dict()
    assert "packed (weights stored as bits)" in str(report)
    assert_close(packed(x), expected)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_convert_lstm_shares_parameters_and_matches():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(lstm=nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True,
                                            proj_size=3),
                               cell=nn.LSTMCell(5, 7)))
    original = {name: layer for name, layer in model.items()}
    converted, report = fastdl.convert(model, families=["lstm"], inplace=True)
    assert converted is model and "2 layers swapped" in str(report)
    model = nn.ModuleDict(original)
    assert type(converted["lstm"]) is fastdl.nn.LSTM and type(converted["cell"]) is fastdl.nn.LSTMCell
    assert converted["lstm"].weight_hh_l1_reverse is model["lstm"].weight_hh_l1_reverse
    assert converted["cell"].weight_ih is model["cell"].weight_ih
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(3, 4, 5)
    for actual, expected in zip((converted["lstm"](x)[0], *converted["cell"](x[:, 0])),
                                (model["lstm"](x)[0], *model["cell"](x[:, 0]))):
        assert_close(actual, expected)
