"""Depthwise 2-D convolution: ``F.conv2d(input, weight, bias, stride, padding, dilation,
groups=C)`` with ``weight`` of shape ``(C * multiplier, 1, kH, kW)``.

Output channel ``oc`` reads input channel ``oc // multiplier``, exactly as PyTorch's
grouped convolution with ``groups = C`` does. Any kernel size (unrolled kernels for
3x3, 5x5 and 7x7), stride, padding (symmetric, zeros; the nn layer adds 'same' and
padding modes) and dilation. NCHW and channels_last inputs; the output is channels_last
when the input or the weight is, as with ``F.conv2d``. Differentiable in input, weight
and bias: to any order in reverse mode (the backward op's derivative is this op and the
backward op again), and once in forward mode (``torch.func.jvp``, ``jacfwd``,
``hessian``, ``torch.autograd.forward_ad``; not forward over forward).

dtypes: float32, float64, float16 and bfloat16 (on CPU the 16-bit ones through float32
copies, as torch's CPU convolution computes them).
"""

import torch
from torch import Tensor
from ._utils import (call_op, check_device, conv_memory_format, pair, register_autocast,
                     register_autograd, register_conv_derivatives, save_for_both_modes)


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, dilation=1) -> Tensor:
    """Depthwise convolution of ``input`` (N, C, H, W) with ``weight`` (C * m, 1, kH, kW).

    Same result as ``torch.nn.functional.conv2d(..., groups=C)``; ``stride``, ``padding``
    and ``dilation`` are ints or pairs.
    """
    tensors = dict(input=input, weight=weight) | ({} if bias is None else dict(bias=bias))
    check_device("depthwise_conv2d", **tensors)
    return call_op(
        torch.ops.fastdl.depthwise_conv2d.default, input, weight, bias,
        pair("depthwise_conv2d", "stride", stride), pair("depthwise_conv2d", "padding", padding),
        pair("depthwise_conv2d", "dilation", dilation))


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("fastdl::depthwise_conv2d")
def _depthwise_conv2d_fake(input, weight, bias, stride, padding, dilation):
    n, _, h, w = input.shape
    out_h = _output_size(h, weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _output_size(w, weight.shape[3], stride[1], padding[1], dilation[1])
    return torch.empty((n, weight.shape[0], out_h, out_w), dtype=input.dtype, device=input.device,
                       memory_format=conv_memory_format(input, weight))


@torch.library.register_fake("fastdl::depthwise_conv2d_backward")
def _depthwise_conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation,
                                    output_mask):
    grad_input = (torch.empty(input.shape, dtype=input.dtype, device=input.device,
                              memory_format=conv_memory_format(input, weight))
                  if output_mask[0] else None)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format) \
        if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation = inputs
    save_for_both_modes(ctx, input, weight)
    ctx.conv_args = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    grad_input, grad_weight, grad_bias = call_op(
        torch.ops.fastdl.depthwise_conv2d_backward.default, grad_output, input, weight,
        *ctx.conv_args, mask)
    return grad_input, grad_weight, grad_bias, None, None, None


register_autograd("fastdl::depthwise_conv2d", _backward, setup_context=_setup_context)
register_conv_derivatives(torch.ops.fastdl.depthwise_conv2d.default,
                          torch.ops.fastdl.depthwise_conv2d_backward.default)
register_autocast("fastdl::depthwise_conv2d", "fastdl::depthwise_conv2d_backward")
