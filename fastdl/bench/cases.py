"""The benchmark cases: one list used by ``benchmarks/`` and ``python -m fastdl``.

Each case runs fastdl and the best PyTorch path on the same inputs. Shapes come from
real models (for NMS: detector proposal counts, COCO's 80 classes).
"""

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .. import nn as fastdl_nn
from .. import ops
from .inputs import detection_boxes


@dataclass(frozen=True)
class Case:
    op: str  # the fastdl op, e.g. "nms"
    name: str  # what the shape is, e.g. "5k boxes, IoU 0.5"
    reference_name: str  # the path it is compared with
    make_inputs: Callable[[torch.device], tuple]
    run: Callable  # fastdl, called as run(*inputs)
    run_reference: Callable  # the reference, same arguments
    same: Callable = torch.equal  # do the two outputs agree?
    default: bool = False  # shown by plain `python -m fastdl`
    devices: tuple = field(default=("cpu", "cuda"))
    flops: float = 0.0  # arithmetic per call (0: not stated), for the GFLOP/s column

    @property
    def title(self) -> str:
        return f"{self.op}: {self.name}"


class ReferenceUnavailable(RuntimeError):
    """The reference op lives in a package that is not installed."""


def _torchvision_ops():
    try:
        import torchvision.ops
    except ImportError as e:  # an optional dependency: only the comparison needs it
        raise ReferenceUnavailable("torchvision is not installed (pip install torchvision)") from e
    return torchvision.ops


def _nms_case(n: int, threshold: float, default: bool = False) -> Case:
    def make_inputs(device):
        boxes, scores, _ = detection_boxes(n, seed=n, device=device)
        return boxes, scores, threshold

    return Case(
        op="nms",
        name=f"{n // 1000}k boxes, IoU {threshold}",
        reference_name="torchvision.ops.nms",
        make_inputs=make_inputs,
        run=ops.nms,
        run_reference=lambda *a: _torchvision_ops().nms(*a),
        default=default,
    )


def _batched_nms_case(n: int, num_classes: int, threshold: float, default: bool = False) -> Case:
    def make_inputs(device):
        boxes, scores, classes = detection_boxes(n, seed=n, device=device, num_classes=num_classes)
        return boxes, scores, classes, threshold

    return Case(
        op="batched_nms",
        name=f"{n // 1000}k boxes, {num_classes} classes, IoU {threshold}",
        reference_name="torchvision.ops.batched_nms",
        make_inputs=make_inputs,
        run=ops.batched_nms,
        run_reference=lambda *a: _torchvision_ops().batched_nms(*a),
        default=default,
    )


def _outputs_close(actual, expected) -> bool:
    """Float results (a tensor or a tuple of them) agree to float32 rounding."""
    if isinstance(actual, torch.Tensor):
        actual, expected = (actual,), (expected,)
    return all(
        torch.allclose(a.float(), e.float(), rtol=1e-3, atol=1e-3 * max(1.0, e.abs().max().item()))
        for a, e in zip(actual, expected)
    )


def _forward_and_backward(conv):
    """conv's forward then the gradients of all inputs, as one timed call."""

    def run(x, weight, bias, grad_out, *args):
        out = conv(x, weight, bias, *args)
        return torch.autograd.grad(out, (x, weight, bias), grad_out)

    return run


def _gradient_penalty(conv):
    """One gradient-penalty step through a layer (WGAN-GP, double backprop): the input's
    gradient of out.square().sum() with create_graph=True, then the weight's gradient of
    that gradient's squared norm, which differentiates the convolution's backward; one
    timed call, returning the weight's gradient."""

    def run(x, weight, *args):
        x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
        out = conv(x, weight, *args)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        (grad_weight,) = torch.autograd.grad(grad_x.square().sum(), weight)
        return grad_weight

    return run


def _penalty_case(op: str, name: str, reference_name: str, make_inputs: Callable, conv: Callable,
                  torch_conv: Callable) -> Case:
    return Case(op=op, name=f"{name}, gradient penalty", reference_name=reference_name,
                make_inputs=make_inputs, run=_gradient_penalty(conv),
                run_reference=_gradient_penalty(torch_conv), same=_outputs_close)


def _output_and_grads(forward: Callable, wrt, backward: bool, grad_output=None):
    """forward() under no_grad, or (with backward) forward()'s output and the gradients of
    ``wrt`` for ``grad_output`` (default ones), as one timed call."""
    if not backward:
        with torch.no_grad():
            return forward()
    out = forward()
    grad = torch.ones_like(out) if grad_output is None else grad_output
    return (out, *torch.autograd.grad(out, wrt, grad))


def _depthwise_case(model: str, batch: int, channels: int, size: int, kernel: int, stride: int,
                    channels_last: bool, backward: bool, default: bool = False) -> Case:
    padding = kernel // 2

    def make_inputs(device):
        g = torch.Generator().manual_seed(channels * size + kernel)
        x = torch.randn(batch, channels, size, size, generator=g).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(channels, 1, kernel, kernel, generator=g).to(device)
        bias = torch.randn(channels, generator=g).to(device)
        if not backward:
            return x, weight, bias, stride, padding
        out_size = (size + 2 * padding - kernel) // stride + 1
        grad_out = torch.randn(batch, channels, out_size, out_size, generator=g).to(device)
        if channels_last:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        return (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), grad_out,
                stride, padding)

    def fastdl_conv(x, weight, bias, stride, padding):
        return ops.depthwise_conv2d(x, weight, bias, stride, padding)

    def torch_conv(x, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])

    layout = "channels_last" if channels_last else "NCHW"
    return Case(
        op="depthwise_conv2d",
        name=(f"{model} {channels}x{size}x{size} {kernel}x{kernel} s{stride}, batch {batch}, "
              f"{layout}, {'fwd+bwd' if backward else 'fwd'}"),
        reference_name="F.conv2d(groups=C)",
        make_inputs=make_inputs,
        run=_forward_and_backward(fastdl_conv) if backward else fastdl_conv,
        run_reference=_forward_and_backward(torch_conv) if backward else torch_conv,
        same=_outputs_close,
        default=default,
    )


def _depthwise_cases() -> list[Case]:
    shapes = [  # (model, channels, size, kernel, stride, batches)
        ("MobileNetV2", 32, 112, 3, 1, (1, 32)),
        ("MobileNetV2", 96, 112, 3, 2, (1, 32)),
        ("MobileNetV2", 144, 56, 3, 1, (1, 32)),
        ("MobileNetV2", 384, 14, 3, 1, (1, 32)),
        ("MobileNetV2", 960, 7, 3, 1, (1, 32)),
        ("ConvNeXt-T", 96, 56, 7, 1, (1, 32)),
        ("ConvNeXt-T", 384, 14, 7, 1, (1, 32)),
        # a large kernel: RepLKNet-31B's first stage (batch 1 only: PyTorch's NCHW path
        # takes ~0.2 s a forward on CPU)
        ("RepLKNet-31B", 128, 56, 31, 1, (1,)),
    ]

    def penalty_inputs(channels_last):
        def make_inputs(device):
            g = torch.Generator().manual_seed(144)
            x = torch.randn(32, 144, 56, 56, generator=g).to(device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            return x, torch.randn(144, 1, 3, 3, generator=g).to(device)
        return make_inputs

    return [
        *[_depthwise_case(model, batch, channels, size, kernel, stride, channels_last, backward,
                          default=(channels, batch, channels_last, backward) == (144, 32, False, False))
          for model, channels, size, kernel, stride, batches in shapes
          for batch in batches
          for channels_last in (False, True)
          for backward in (False, True)],
        *[_penalty_case("depthwise_conv2d",
                        f"MobileNetV2 144x56x56 3x3 s1, batch 32, {'channels_last' if cl else 'NCHW'}",
                        "F.conv2d(groups=C)", penalty_inputs(cl),
                        lambda x, w: ops.depthwise_conv2d(x, w, None, 1, 1),
                        lambda x, w: F.conv2d(x, w, None, 1, 1, 1, w.shape[0]))
          for cl in (False, True)],
    ]


def _batch_norm_case(name: str, shape: tuple, channels_last: bool, kind: str,
                     default: bool = False) -> Case:
    """``kind``: "train" (BN+ReLU forward+backward), "train_residual" (BN+add+ReLU),
    "eval" (BN+ReLU inference) or "eval_vs_copy" (the same against ``x.clone()``, one
    read and one write of the tensor: the ratio is the fraction of copy bandwidth).

    Training results are checked against float64, not against PyTorch's float32: on
    CPU, PyTorch's channels_last batch norm backward sums in float32 and is off by up
    to ~0.8 in grad_input on 32x256x56x56 (fastdl: ~3e-7).
    """
    channels = shape[1]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    training = kind.startswith("train")
    float64_results = {}  # device type -> the training step in float64

    def make_inputs(device):
        g = torch.Generator().manual_seed(channels)
        x = (torch.randn(shape, generator=g) * 2 + 1).to(device, memory_format=memory_format)
        residual = torch.randn(shape, generator=g).to(device, memory_format=memory_format)
        grad = torch.randn(shape, generator=g).to(device, memory_format=memory_format)
        ours = fastdl_nn.BatchNorm2d(channels, activation="relu").to(device).train(training)
        theirs = torch.nn.BatchNorm2d(channels).to(device).train(training)
        with torch.no_grad():
            for layer in (ours, theirs):
                layer.weight.copy_(torch.linspace(0.5, 1.5, channels))
                layer.bias.copy_(torch.linspace(-0.5, 0.5, channels))
                layer.running_var.copy_(torch.linspace(0.5, 2, channels))
        inputs = (x, residual if kind == "train_residual" else None, grad, ours, theirs)
        if training:
            x.requires_grad_()
            float64_results[x.device.type] = torch_bn(*_float64_copies(inputs))
        return inputs

    def fastdl_bn(x, residual, grad, ours, theirs):
        if not training:
            with torch.no_grad():
                return ours(x)
        out = ours(x, residual)
        return (out, *torch.autograd.grad(out, (x, ours.weight, ours.bias), grad))

    def torch_bn(x, residual, grad, ours, theirs):  # as torchvision's ResNet blocks do
        if kind == "eval_vs_copy":
            return x.clone()
        if not training:
            with torch.no_grad():
                return F.relu(theirs(x), inplace=True)
        out = theirs(x)
        if residual is not None:
            out += residual
        out = F.relu(out, inplace=True)
        return (out, *torch.autograd.grad(out, (x, theirs.weight, theirs.bias), grad))

    def same(actual, expected):
        if kind == "eval_vs_copy":
            return True
        if training:
            expected = float64_results[actual[0].device.type]
        return _outputs_close(actual, expected)

    what = {"train": "BN+ReLU training fwd+bwd", "train_residual": "BN+add+ReLU training fwd+bwd",
            "eval": "BN+ReLU inference", "eval_vs_copy": "BN+ReLU inference vs copy"}[kind]
    reference = ("x.clone() (one read + one write: the memory floor)" if kind == "eval_vs_copy"
                 else "nn.BatchNorm2d, +=, F.relu_")
    return Case(
        op="batch_norm",
        name=(f"{name} {'x'.join(map(str, shape))}, {'channels_last' if channels_last else 'NCHW'}, "
              f"{what}"),
        reference_name=reference,
        make_inputs=make_inputs,
        run=fastdl_bn,
        run_reference=torch_bn,
        same=same,
        default=default,
    )


def _float64_copies(inputs):
    """The batch norm case's inputs in float64, layers included (copies)."""
    x, residual, grad, ours, theirs = inputs
    as64 = lambda t: None if t is None else t.detach().double().requires_grad_(t.requires_grad)
    return (as64(x), as64(residual), grad.double(), ours, copy.deepcopy(theirs).double())


def _batch_norm_cases() -> list[Case]:
    shapes = [("ResNet-50 conv2", (32, 256, 56, 56)), ("ResNet-50 conv5", (32, 2048, 7, 7))]
    return [
        _batch_norm_case(name, shape, channels_last, kind,
                         default=(shape[1], channels_last, kind) == (2048, False, "train_residual"))
        for name, shape in shapes
        for channels_last in (False, True)
        for kind in ("train", "train_residual", "eval", "eval_vs_copy")
    ]


def _lstm_cell_case(batch: int, hidden: int, backward: bool, default: bool = False) -> Case:
    """One nn.LSTMCell step (input size = hidden size), char-LM sizes."""

    def make_inputs(device):
        torch.manual_seed(hidden)
        theirs = torch.nn.LSTMCell(hidden, hidden).to(device)
        ours = fastdl_nn.LSTMCell(hidden, hidden).to(device)
        ours.load_state_dict(theirs.state_dict())
        x, h, c = (torch.randn(batch, hidden, device=device) for _ in range(3))
        if backward:
            x.requires_grad_()
        return x, (h, c), ours, theirs

    def step(layer_index):
        def run(x, hx, ours, theirs):
            layer = (ours, theirs)[layer_index]
            if not backward:
                with torch.no_grad():
                    return layer(x, hx)
            h, c = layer(x, hx)
            return (h, c, *torch.autograd.grad(h.sum() + c.sum(), (x, *layer.parameters())))
        return run

    return Case(
        op="lstm_cell",
        name=f"batch {batch}, hidden {hidden}, {'fwd+bwd' if backward else 'fwd'}",
        reference_name="nn.LSTMCell",
        make_inputs=make_inputs,
        run=step(0),
        run_reference=step(1),
        same=_outputs_close,
        default=default,
    )


def _sequence_case(op: str, name: str, batch: int, steps: int, hidden: int, layers: int,
                   backward: bool, default: bool = False) -> Case:
    """A whole recurrent layer, ``op`` "lstm" (nn.LSTM) or "gru" (nn.GRU), with input
    size = hidden size, over a sequence."""
    torch_layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[op]
    fastdl_layer = {"lstm": fastdl_nn.LSTM, "gru": fastdl_nn.GRU}[op]

    def make_inputs(device):
        torch.manual_seed(hidden)
        theirs = torch_layer(hidden, hidden, num_layers=layers).to(device)
        ours = fastdl_layer(hidden, hidden, num_layers=layers).to(device)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(steps, batch, hidden, device=device, requires_grad=backward)
        return x, ours, theirs

    def run(layer_index):
        def call(x, ours, theirs):
            layer = (ours, theirs)[layer_index]
            return _output_and_grads(lambda: layer(x)[0], (x, *layer.parameters()), backward)
        return call

    return Case(
        op=op,
        name=(f"{name}: batch {batch}, seq {steps}, hidden {hidden}, {layers} layer"
              f"{'s' if layers > 1 else ''}, {'fwd+bwd' if backward else 'fwd'}"),
        reference_name=f"nn.{torch_layer.__name__}",
        make_inputs=make_inputs,
        run=run(0),
        run_reference=run(1),
        same=_outputs_close,
        default=default,
    )


def _xnor_case(model: str, batch: int, channels: int, out_channels: int, size: int,
               with_packing: bool, default: bool = False) -> Case:
    """XNOR-Net layer shapes: the binary convolution (3x3, padding 1) against the float
    convolution it replaces, F.conv2d (oneDNN) on the same +-1 tensors. Weights are
    packed once, as the packed layer does; ``with_packing`` times the input's
    binarisation and packing too."""

    def make_inputs(device):
        g = torch.Generator().manual_seed(channels * size + batch)
        x = torch.randn(batch, channels, size, size, generator=g)
        weight = torch.randn(out_channels, channels, 3, 3, generator=g)
        # +-1 tensors (not Tensor.sign(), which maps 0 to 0), so the float reference
        # computes exactly what the binary kernel does.
        x, weight = (torch.where(t >= 0, 1.0, -1.0).to(device) for t in (x, weight))
        return x, weight, ops.pack_signs(x), ops.pack_signs(weight)

    def fastdl_conv(x, weight, x_bits, weight_bits):
        bits = ops.pack_signs(x) if with_packing else x_bits
        return ops.xnor_conv2d_packed(bits, weight_bits, channels, padding=1)

    def torch_conv(x, weight, x_bits, weight_bits):
        return F.conv2d(x, weight, None, 1, 1)

    return Case(
        op="xnor_conv2d",
        name=(f"{model} {channels}->{out_channels} 3x3 on {size}x{size}, batch {batch}, "
              f"{'pack input + conv' if with_packing else 'conv'}"),
        reference_name="F.conv2d float32",
        make_inputs=make_inputs,
        run=fastdl_conv,
        run_reference=torch_conv,
        default=default,
    )


def _xnor_cases() -> list[Case]:
    shapes = [  # (model, channels, out_channels, size)
        ("AlexNet conv3", 256, 384, 13),
        ("AlexNet conv4", 384, 384, 13),
        ("ResNet-18 layer3", 256, 256, 14),
        ("ResNet-18 layer4", 512, 512, 7),
    ]
    return [
        _xnor_case(model, batch, c_in, c_out, size, with_packing,
                   default=(c_in, batch, with_packing) == (256, 16, True) and size == 14)
        for model, c_in, c_out, size in shapes
        for batch in (1, 16)
        for with_packing in (False, True)
    ]


def _attention_case(model: str, batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int,
                    head_dim: int, causal: bool, backward: bool, *, mask: bool = False,
                    dropout: float = 0.0, cache: bool = False, default: bool = False,
                    devices: tuple = ("cpu", "cuda")) -> Case:
    """Attention heads of real models against F.scaled_dot_product_attention (the backend
    PyTorch picks: flash on CPU and CUDA where it applies). float32 on CPU, float16 on
    CUDA. ``mask``: a key-padding mask (the last eighth of the keys of every other
    sequence masked). ``cache``: keys and values are the first kv_len rows of a longer
    preallocated KV cache (a strided view, as incremental decoding reads them)."""

    def make_inputs(device):
        g = torch.Generator().manual_seed(q_len * heads + head_dim)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        rows = kv_len + (256 if cache else 0)
        q = torch.randn(batch, heads, q_len, head_dim, generator=g)
        k, v = (torch.randn(batch, kv_heads, rows, head_dim, generator=g) for _ in range(2))
        q, k, v = (t.to(device, dtype).requires_grad_(backward) for t in (q, k, v))
        attn_mask = None
        if mask:
            attn_mask = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool, device=device)
            attn_mask[::2, ..., kv_len - kv_len // 8:] = False
        grad = torch.randn(batch, heads, q_len, head_dim, generator=g).to(device, dtype)
        return q, k, v, attn_mask, grad

    def call(attend):
        def run(q, k, v, attn_mask, grad):
            keys, values = (k[:, :, :kv_len], v[:, :, :kv_len]) if cache else (k, v)
            return _output_and_grads(lambda: attend(q, keys, values, attn_mask), (q, k, v),
                                     backward, grad)
        return run

    def fastdl_attention(q, k, v, attn_mask):
        return ops.attention(q, k, v, attn_mask, is_causal=causal, dropout_p=dropout)

    def torch_attention(q, k, v, attn_mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p=dropout,
                                              is_causal=causal, enable_gqa=kv_heads != heads)

    def same_shapes(actual, expected):  # dropout: the two draw different patterns
        return all(a.shape == e.shape and bool(torch.isfinite(a).all())
                   for a, e in zip(actual, expected))

    # FlashAttention's count: 2 products of 2 * Nq * Nk * D each forward (half the pairs
    # when causal and square), 2.5x that again for the backward.
    pairs = q_len * kv_len / (2 if causal and q_len == kv_len else 1)
    flops = 4 * batch * heads * pairs * head_dim * (3.5 if backward else 1.0)
    gqa = f" ({kv_heads} kv heads)" if kv_heads != heads else ""
    what = ("decode 1 query vs KV cache" if q_len == 1 else
            f"N {q_len}" + (" causal" if causal else "") + (" key-padding mask" if mask else "")
            + (f" dropout {dropout}" if dropout else ""))
    return Case(
        op="attention",
        name=(f"{model}: batch {batch}, {heads} heads{gqa}, D {head_dim}, {what}"
              + (f" of {kv_len}" if q_len == 1 else "") + f", {'fwd+bwd' if backward else 'fwd'}"),
        reference_name="F.scaled_dot_product_attention",
        make_inputs=make_inputs,
        run=call(fastdl_attention),
        run_reference=call(torch_attention),
        same=same_shapes if dropout else _outputs_close,
        default=default,
        devices=devices,
        flops=flops,
    )


def _attention_cases() -> list[Case]:
    cases = []
    for backward in (False, True):
        cases += [
            _attention_case("GPT-2", 4, 12, 12, 1024, 1024, 64, True, backward,
                            default=not backward),
            _attention_case("GPT-2", 4, 12, 12, 1024, 1024, 64, False, backward),
            _attention_case("BERT-base", 8, 12, 12, 512, 512, 64, False, backward, mask=True),
            _attention_case("GPT-2 medium", 2, 16, 16, 2048, 2048, 64, True, backward),
            _attention_case("Llama-style GQA", 1, 32, 8, 1024, 1024, 128, True, backward),
        ]
    cases += [
        _attention_case("BERT-base", 8, 12, 12, 512, 512, 64, False, True, mask=True, dropout=0.1),
        _attention_case("GPT-2 medium", 2, 16, 16, 4096, 4096, 64, True, False),
        _attention_case("GPT-2 medium", 2, 16, 16, 8192, 8192, 64, True, False, devices=("cuda",)),
        _attention_case("GPT-2 medium", 2, 16, 16, 8192, 8192, 64, True, True, devices=("cuda",)),
        _attention_case("GPT-2", 4, 12, 12, 1, 1024, 64, False, False, cache=True),
        _attention_case("Llama-style", 1, 32, 32, 1, 4096, 128, False, False, cache=True),
        _attention_case("Llama-style GQA", 4, 32, 8, 1, 4096, 128, False, False, cache=True),
    ]
    return cases



def _dilated_conv2d_case(model: str, batch: int, channels: int, size: int, dilation: int,
                         backward: bool, default: bool = False) -> Case:
    """A 3x3 dilated convolution with padding = dilation (DeepLab's ASPP branches)
    against F.conv2d (oneDNN on CPU, cuDNN on CUDA) on the same inputs; float32 on CPU,
    float16 on CUDA."""

    def make_inputs(device):
        g = torch.Generator().manual_seed(size * dilation)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        x = torch.randn(batch, channels, size, size, generator=g)
        weight = torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels ** 0.5)
        bias = torch.randn(channels, generator=g)
        return tuple(t.to(device, dtype).requires_grad_(backward) for t in (x, weight, bias))

    def call(conv):
        def run(x, weight, bias):
            return _output_and_grads(lambda: conv(x, weight, bias, 1, dilation, dilation),
                                     (x, weight, bias), backward)
        return run

    return Case(
        op="dilated_conv2d",
        name=(f"{model} {channels}x{size}x{size} 3x3 d={dilation}, batch {batch}, "
              f"{'fwd+bwd' if backward else 'fwd'}"),
        reference_name="F.conv2d(dilation=d)",
        make_inputs=make_inputs,
        run=call(ops.dilated_conv2d),
        run_reference=call(F.conv2d),
        same=_outputs_close,
        default=default,
        # every tap, padding included; the backward's two products are twice the forward
        flops=2 * batch * channels * channels * 9 * size * size * (3 if backward else 1),
    )


def _causal_stack_case(channels: int, length: int, dilations: tuple, backward: bool,
                       default: bool = False) -> Case:
    """A WaveNet-style stack of causal k=2 convolutions with residual adds: fastdl's
    causal dilated_conv1d (no padded copy) against F.pad + F.conv1d, the way PyTorch
    code writes a causal convolution."""

    def make_inputs(device):
        g = torch.Generator().manual_seed(length + len(dilations))
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        x = torch.randn(1, channels, length, generator=g)
        weights = [torch.randn(channels, channels, 2, generator=g) / (2 * channels) ** 0.5
                   for _ in dilations]
        return tuple(t.to(device, dtype).requires_grad_(backward) for t in (x, *weights))

    def fastdl_layer(x, weight, d):
        return ops.dilated_conv1d(x, weight, dilation=d, causal=True)

    def torch_layer(x, weight, d):
        return F.conv1d(F.pad(x, (d, 0)), weight, dilation=d)

    def call(layer):
        def run(x, *weights):
            def forward():
                h = x
                for weight, d in zip(weights, dilations):
                    h = h + layer(h, weight, d)
                return h
            return _output_and_grads(forward, (x, *weights), backward)
        return run

    span = f"d={dilations[0]}" if len(dilations) == 1 else f"{len(dilations)} layers d={dilations[0]}..{dilations[-1]}"
    return Case(
        op="dilated_conv1d",
        name=f"WaveNet causal k=2, {channels} ch, length {length}, {span}, {'fwd+bwd' if backward else 'fwd'}",
        reference_name="F.pad + F.conv1d(dilation=d)",
        make_inputs=make_inputs,
        run=call(fastdl_layer),
        run_reference=call(torch_layer),
        same=_outputs_close,
        default=default,
        flops=2 * channels * channels * 2 * length * len(dilations) * (3 if backward else 1),
    )


def _dilated_penalty_cases() -> list[Case]:
    def aspp(device):
        g = torch.Generator().manual_seed(65)
        return (torch.randn(1, 256, 65, 65, generator=g).to(device),
                (torch.randn(256, 256, 3, 3, generator=g) / 48).to(device))

    def wavenet(device):
        g = torch.Generator().manual_seed(64)
        return (torch.randn(1, 64, 16000, generator=g).to(device),
                (torch.randn(64, 64, 2, generator=g) / 11).to(device))

    return [
        _penalty_case("dilated_conv2d", "ASPP 256x65x65 3x3 d=12, batch 1", "F.conv2d(dilation=d)",
                      aspp, lambda x, w: ops.dilated_conv2d(x, w, None, 1, 12, 12),
                      lambda x, w: F.conv2d(x, w, None, 1, 12, 12)),
        _penalty_case("dilated_conv1d", "WaveNet causal k=2, 64 ch, length 16000, d=64",
                      "F.pad + F.conv1d(dilation=d)", wavenet,
                      lambda x, w: ops.dilated_conv1d(x, w, dilation=64, causal=True),
                      lambda x, w: F.conv1d(F.pad(x, (64, 0)), w, dilation=64)),
    ]


def _dilated_cases() -> list[Case]:
    wavenet = tuple(2 ** i for i in range(10))
    return [
        *[_dilated_conv2d_case("ASPP", 1, 256, 65, d, backward, default=(d, backward) == (12, False))
          for backward in (False, True) for d in (6, 12, 18)],
        *[_causal_stack_case(64, 16000, (d,), backward) for backward in (False, True)
          for d in (1, 64, 512)],
        *[_causal_stack_case(64, 16000, wavenet, backward, default=not backward)
          for backward in (False, True)],
        *_dilated_penalty_cases(),
    ]


_SEQUENCE_SHAPES = [  # (name, batch, steps, hidden, layers, backward)
    ("char-LM", 64, 100, 256, 2, False),
    ("char-LM", 64, 100, 256, 2, True),
    ("char-LM", 64, 100, 512, 2, False),
    ("char-LM", 64, 100, 512, 2, True),
    ("char-LM", 64, 100, 1024, 2, False),
    ("char-LM", 64, 100, 1024, 2, True),
    ("batch-1 inference", 1, 1000, 256, 1, False),
]

CASES = [
    _nms_case(1000, 0.5),
    _nms_case(5000, 0.5, default=True),
    _nms_case(20000, 0.5),
    _nms_case(5000, 0.7),
    _batched_nms_case(5000, 80, 0.5, default=True),
    _batched_nms_case(20000, 80, 0.5),
    _batched_nms_case(20000, 4, 0.5),
    *_depthwise_cases(),
    *_batch_norm_cases(),
    *[_lstm_cell_case(batch, hidden, backward, default=(batch, hidden, backward) == (64, 512, True))
      for batch, hidden in ((1, 256), (64, 256), (64, 512), (64, 1024))
      for backward in (False, True)],
    *[_sequence_case(op, *shape, default=(op, *shape) == ("lstm", "char-LM", 64, 100, 256, 2, True))
      for op in ("lstm", "gru")
      for shape in _SEQUENCE_SHAPES],
    *_xnor_cases(),
    *_attention_cases(),
    *_dilated_cases(),
]


def cases_for(*op_names: str) -> list[Case]:
    return [case for case in CASES if case.op in op_names]
