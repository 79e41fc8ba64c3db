"""torch.fx.symbolic_trace records a fastdl layer inside a model as one call, as it does
torch's own layers (fastdl/nn/_fx.py): the traced graph gives the model's outputs and
gradients, pickles, and torchvision's feature extractor works on a converted model."""

import pickle

import pytest
import torch
import torch.fx
from torch import nn

import fastdl
from fastdl.nn._fx import call_layer

LAYERS = {
    "DepthwiseConv2d": (lambda: fastdl.nn.DepthwiseConv2d(8, 3, padding=1), [(2, 8, 9, 9)]),
    "DilatedConv2d": (lambda: fastdl.nn.DilatedConv2d(8, 6, 3, padding=2, dilation=2), [(2, 8, 9, 9)]),
    "DilatedConv1d": (lambda: fastdl.nn.DilatedConv1d(8, 6, 2, dilation=2, causal=True), [(2, 8, 30)]),
    "BatchNorm2d": (lambda: fastdl.nn.BatchNorm2d(8, activation="relu"), [(2, 8, 5, 5)]),
    "LSTM": (lambda: fastdl.nn.LSTM(8, 16, 2, batch_first=True), [(3, 5, 8)]),
    "LSTMCell": (lambda: fastdl.nn.LSTMCell(8, 16), [(3, 8)]),
    "GRU": (lambda: fastdl.nn.GRU(8, 16, bidirectional=True), [(5, 3, 8)]),
    "GRUCell": (lambda: fastdl.nn.GRUCell(8, 16), [(3, 8)]),
    "MultiheadAttention": (lambda: fastdl.nn.MultiheadAttention(16, 2), [(5, 3, 16)] * 3),
    "XNORConv2d": (lambda: fastdl.nn.XNORConv2d(8, 6, 3, padding=1), [(2, 8, 9, 9)]),
    "BinaryLinear": (lambda: fastdl.nn.BinaryLinear(8, 4), [(3, 8)]),
}


class One(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class Three(One):
    def forward(self, q, k, v):
        return self.layer(q, k, v)


def traced(name):
    make, shapes = LAYERS[name]
    torch.manual_seed(0)
    model = (Three if len(shapes) == 3 else One)(make())
    inputs = [torch.randn(shape) for shape in shapes]
    return model, torch.fx.symbolic_trace(model), inputs


def leaves(value):
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def assert_same_outputs(model, graph_module, inputs):
    for expected, actual in zip(leaves(model(*inputs)), leaves(graph_module(*inputs)), strict=True):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_is_one_node_of_the_traced_graph(name):
    model, graph_module, inputs = traced(name)
    calls = [node for node in graph_module.graph.nodes if node.op == "call_function"]
    assert [node.target for node in calls[:1]] == [call_layer]
    assert calls[0].args[0].op == "get_attr" and calls[0].args[0].target == "layer"
    assert_same_outputs(model, graph_module, inputs)
    # the graph refers to the model's own layer: the same parameters, which train
    leaves(graph_module(*inputs))[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert_same_outputs(model, pickle.loads(pickle.dumps(graph_module)), inputs)


def test_a_layer_called_on_constants_while_tracing_fails_as_before():
    """With no proxy among its arguments the layer is not recorded, and its forward meets
    its parameters as proxies: FX's TraceError, as before fastdl/nn/_fx.py (not a
    recursion through call_layer). torch's own layers are recorded here."""

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = fastdl.nn.DepthwiseConv2d(4, 3, padding=1)

        def forward(self, x):
            return x + self.layer(torch.ones(1, 4, 5, 5))

    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(Constant())


def test_feature_extraction_from_a_converted_mobilenet():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    converted, _ = fastdl.convert(model)
    nodes = {"features.3": "early", "features.18": "late"}
    x = torch.randn(1, 3, 64, 64)
    ours = create_feature_extractor(converted, return_nodes=nodes)(x)
    expected = create_feature_extractor(model, return_nodes=nodes)(x)
    for key in nodes.values():
        torch.testing.assert_close(ours[key], expected[key])
