"""The benchmark cases: one list used by ``benchmarks/`` and ``python -m fastdl``.

Each case runs fastdl and the best PyTorch path on the same inputs. Shapes come from
real models (for NMS: detector proposal counts, COCO's 80 classes).
"""

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

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
    ]
    return [
        _depthwise_case(model, batch, channels, size, kernel, stride, channels_last, backward,
                        default=(channels, batch, channels_last, backward) == (144, 32, False, False))
        for model, channels, size, kernel, stride, batches in shapes
        for batch in batches
        for channels_last in (False, True)
        for backward in (False, True)
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
]


def cases_for(*op_names: str) -> list[Case]:
    return [case for case in CASES if case.op in op_names]
