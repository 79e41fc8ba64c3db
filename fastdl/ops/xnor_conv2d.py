"""Binary (XNOR-Net) convolution on sign bits packed 64 to a word.

``xnor_conv2d(input, weight, ...)`` equals ``F.conv2d(sign(input), sign(weight), bias,
stride, padding, dilation, groups)`` exactly, where ``sign(x) = +1 if x >= 0 else -1``
(so ``sign(0) = +1`` and NaN reads as -1) and the zero padding adds exactly 0, as in
the float op: the kernel multiplies signs with XOR and adds them with popcount.

Bit format (:func:`pack_signs`): an int64 tensor ``(N, H, W, groups * ceil(Cg / 64))``
holding, per pixel and channel group, the sign bits of the group's ``Cg`` channels
(bit set = -1); bits past ``Cg`` in a group's last word are zero. Weights
``(O, Cg, kH, kW)`` pack to ``(O, kH, kW, ceil(Cg / 64))``. :func:`xnor_conv2d_packed`
convolves packed tensors, for chaining binary layers and for weights packed once.

Gradients of :func:`xnor_conv2d` are the straight-through estimator of BinaryNet and
XNOR-Net: the gradient of ``sign`` is taken as 1 where ``|x| <= 1`` and 0 elsewhere,
for the input and the weight alike. The backward is a float convolution of the
gradient with the +-1 tensors, computed by ``aten.convolution_backward`` (the
gradients are float, so there is nothing binary to exploit); our kernels are the
forward.

dtypes: float32, float64, float16, bfloat16 inputs (CPU and CUDA); the packed
convolution writes any of them (``dtype``), computing ``dot * scale + bias`` in float
(double for float64).
"""

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from .. import _C
from ._utils import call_op, check_device, pair, register_autocast, register_autograd


def pack_signs(input: Tensor, groups: int = 1) -> Tensor:
    """Packs the signs of ``input`` (N, C, H, W) along channels, per group of
    ``C // groups`` channels, into int64 words: ``(N, H, W, groups * ceil(C / groups / 64))``.
    """
    check_device("pack_signs", input=input)
    return torch.ops.fastdl.pack_signs.default(input, groups)


def xnor_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d(sign(input), sign(weight), bias, stride, padding, dilation, groups)``,
    exactly, on packed bits. Differentiable by the straight-through estimator (see the
    module docstring). The output has the input's dtype and memory format."""
    tensors = dict(input=input, weight=weight) | ({} if bias is None else dict(bias=bias))
    check_device("xnor_conv2d", **tensors)
    return call_op(
        torch.ops.fastdl.xnor_conv2d.default, input, weight, bias,
        pair("xnor_conv2d", "stride", stride), pair("xnor_conv2d", "padding", padding),
        pair("xnor_conv2d", "dilation", dilation), groups)


def xnor_conv2d_packed(input_bits: Tensor, weight_bits: Tensor, in_channels: int,
                       scale: Tensor | None = None, bias: Tensor | None = None, stride=1,
                       padding=0, dilation=1, groups: int = 1, dtype=torch.float32,
                       channels_last: bool = False) -> Tensor:
    """The binary convolution of packed signs (from :func:`pack_signs`):
    ``dot * scale[o] + bias[o]`` for each output, ``dot`` being the convolution of the
    +-1 tensors over ``in_channels`` channels. Output ``(N, O, out_H, out_W)`` in
    ``dtype``, channels_last if asked. Differentiable with respect to ``scale`` and
    ``bias`` (so a packed layer's bias can be fine-tuned); the bits are integers."""
    tensors = dict(input_bits=input_bits, weight_bits=weight_bits)
    tensors |= {name: t for name, t in (("scale", scale), ("bias", bias)) if t is not None}
    check_device("xnor_conv2d_packed", **tensors)
    op = "xnor_conv2d_packed"
    return call_op(
        torch.ops.fastdl.xnor_conv2d_packed.default, input_bits, weight_bits, in_channels, scale,
        bias, pair(op, "stride", stride), pair(op, "padding", padding),
        pair(op, "dilation", dilation), groups, dtype, channels_last)


def xnor_cpu_kernel_path() -> str:
    """The popcount method the CPU kernels use now: ``'avx512-vpopcntdq'``,
    ``'avx2-pshufb'`` or ``'scalar-swar'`` (set by the CPU and ``fastdl._C.set_cpu_isa``)."""
    return _C.xnor_cpu_kernel_path()


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _words(channels):
    return (channels + 63) // 64


@torch.library.register_fake("fastdl::pack_signs")
def _pack_signs_fake(input, groups=1):
    n, c, h, w = input.shape
    return input.new_empty((n, h, w, groups * _words(c // groups)), dtype=torch.int64)


@torch.library.register_fake("fastdl::xnor_conv2d_packed")
def _xnor_conv2d_packed_fake(input_bits, weight_bits, in_channels, scale, bias, stride, padding,
                             dilation, groups, dtype, channels_last):
    n, h, w, _ = input_bits.shape
    out_h = _output_size(h, weight_bits.shape[1], stride[0], padding[0], dilation[0])
    out_w = _output_size(w, weight_bits.shape[2], stride[1], padding[1], dilation[1])
    return torch.empty((n, weight_bits.shape[0], out_h, out_w), dtype=dtype,
                       device=input_bits.device,
                       memory_format=torch.channels_last if channels_last
                       else torch.contiguous_format)


@torch.library.register_fake("fastdl::xnor_conv2d")
def _xnor_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = input.shape
    out_h = _output_size(h, weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _output_size(w, weight.shape[3], stride[1], padding[1], dilation[1])
    return torch.empty((n, weight.shape[0], out_h, out_w), dtype=input.dtype, device=input.device,
                       memory_format=suggest_memory_format(input))


def _signs(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward.default(
        grad_output, _signs(input), _signs(weight), [weight.shape[0]], stride, padding, dilation,
        False, [0, 0], groups, mask,
    )
    # Straight-through estimator: d sign(x) / dx taken as 1 on [-1, 1], 0 outside.
    if grad_input is not None:
        grad_input = torch.where(input.abs() <= 1, grad_input, 0.0)
    if grad_weight is not None:
        grad_weight = torch.where(weight.abs() <= 1, grad_weight, 0.0)
    return grad_input, grad_weight, grad_bias, None, None, None, None


register_autograd("fastdl::xnor_conv2d", _backward, setup_context=_setup_context)


def _packed_setup_context(ctx, inputs, output):
    input_bits, weight_bits, in_channels, scale, bias, *conv_args, dtype, channels_last = inputs
    ctx.save_for_backward(input_bits, weight_bits)
    ctx.in_channels, ctx.conv_args = in_channels, conv_args
    ctx.channels_last = channels_last
    ctx.scale_dtype = None if scale is None else scale.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _packed_backward(ctx, grad_output):
    # out = dot * scale[o] + bias[o]: the gradients are per-channel sums over (N, H, W).
    # dot is not saved (it would double the forward's memory); it is recomputed by the
    # packed kernel itself, in float64 for float64 gradients (float32 holds it exactly
    # up to 2^24 taps x channels).
    input_bits, weight_bits = ctx.saved_tensors
    grad_scale = grad_bias = None
    if ctx.needs_input_grad[3]:
        dtype = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
        dot = torch.ops.fastdl.xnor_conv2d_packed.default(
            input_bits, weight_bits, ctx.in_channels, None, None, *ctx.conv_args, dtype,
            ctx.channels_last)
        grad_scale = (grad_output.to(dtype) * dot).sum((0, 2, 3)).to(ctx.scale_dtype)
    if ctx.needs_input_grad[4]:
        grad_bias = grad_output.sum((0, 2, 3)).to(ctx.bias_dtype)
    return None, None, None, grad_scale, grad_bias, None, None, None, None, None, None


register_autograd("fastdl::xnor_conv2d_packed", _packed_backward,
                  setup_context=_packed_setup_context)
register_autocast("fastdl::xnor_conv2d", "fastdl::xnor_conv2d_packed")
