"""Dilated (atrous) convolution, dense or grouped: ``F.conv2d`` / ``F.conv1d`` with any
``dilation``, ``stride``, ``groups`` and zero padding, plus causal 1-D convolution
(WaveNet, TCN: output ``t`` sees inputs ``<= t``) without a padded copy of the input.

The kernels are implicit GEMMs whose taps are offsets into the input rows, so a
dilation costs no more than a dense kernel, and deterministic (no atomics) forward and
backward. On CPU, wide 3x3 layers at stride 1 (ASPP: 128+ channels in and out) take
Winograd F(2x2, 3x3) on the dilated grid instead: 16 products per 2x2 outputs where the
direct kernel takes 36; in float32 its weight gradient's rounding error is up to ~2.5x
the direct kernel's (still ~1e-6 of the gradient's size).

Inputs NCHW or channels_last (2-D; computed in NCHW, channels_last converted on the
way in and out; the output is channels_last when the input or the weight is, as with
``F.conv2d``). dtypes: float32 and float64 on CPU and
CUDA; float16 and bfloat16 on CUDA and on CPU (computed in float32). Differentiable: to
any order in reverse mode (the backward ops' derivatives are these ops again), and once
in forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``, ``torch.autograd.forward_ad``;
not forward over forward).
"""

import torch
from torch import Tensor
from ._utils import (call_op, check_device, conv_memory_format, pair, register_autocast,
                     register_autograd, register_conv_derivatives, save_for_both_modes)


def _side_padding(op: str, padding, kernel: int, dilation: int) -> tuple[int, int]:
    """(begin, end) zero padding along one dimension from an int, a (begin, end) pair,
    'valid' or 'same' (PyTorch's rule: an odd total puts the extra zero at the end)."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        return padding, padding
    sides = tuple(padding) if isinstance(padding, (list, tuple)) else ()
    if len(sides) != 2 or not all(isinstance(p, int) for p in sides):
        raise ValueError(f"fastdl.{op}: padding must be an int, a (begin, end) pair, 'same' or "
                         f"'valid', got {padding!r}")
    return sides


def _refuse_strided_same(op: str, padding, stride) -> None:
    if padding == "same" and any(s != 1 for s in stride):
        raise ValueError(f"fastdl.{op}: padding='same' is not supported for strided convolutions "
                         f"(as F.conv2d), got stride {tuple(stride)}")


def dilated_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                   padding=0, dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d(input, weight, bias, stride, padding, dilation, groups)``.

    ``padding``: an int or a pair (symmetric, as ``F.conv2d``), ``'same'``, ``'valid'``, or
    per side ``((top, bottom), (left, right))``.
    """
    op = "dilated_conv2d"
    check_device(op, input=input, weight=weight, **({} if bias is None else dict(bias=bias)))
    stride, dilation = pair(op, "stride", stride), pair(op, "dilation", dilation)
    if weight.dim() != 4:
        raise ValueError(f"fastdl.{op}: weight must have shape (out_channels, C / groups, kH, kW), "
                         f"got {tuple(weight.shape)}")
    _refuse_strided_same(op, padding, stride)
    if isinstance(padding, (str, int)):
        per_dim = [padding, padding]
    else:
        per_dim = list(padding) if isinstance(padding, (list, tuple)) else []
        if len(per_dim) != 2:
            raise ValueError(f"fastdl.{op}: padding must be an int, a pair, 'same', 'valid' or "
                             f"((top, bottom), (left, right)), got {padding!r}")
    sides = [_side_padding(op, p, k, d) for p, k, d in zip(per_dim, weight.shape[2:], dilation)]
    return call_op(
        torch.ops.fastdl.dilated_conv2d.default, input, weight, bias, stride,
        [sides[0][0], sides[1][0]], [sides[0][1], sides[1][1]], dilation, groups)


def dilated_conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
                   padding=0, dilation: int = 1, groups: int = 1, causal: bool = False) -> Tensor:
    """``F.conv1d(input, weight, bias, stride, padding, dilation, groups)``; ``padding`` an
    int, ``(left, right)``, ``'same'`` or ``'valid'``. ``causal=True`` pads
    ``dilation * (k - 1)`` on the left only (``padding`` must then be 0): output ``t``
    reads inputs ``<= t``, as ``F.conv1d(F.pad(input, (dilation * (k - 1), 0)), ...)``.
    """
    op = "dilated_conv1d"
    check_device(op, input=input, weight=weight, **({} if bias is None else dict(bias=bias)))
    if weight.dim() != 3:
        raise ValueError(f"fastdl.{op}: weight must have shape (out_channels, C / groups, k), "
                         f"got {tuple(weight.shape)}")
    if causal:
        if padding != 0:
            raise ValueError(f"fastdl.{op}: causal=True sets the padding itself; padding must be 0, "
                             f"got {padding!r}")
        left, right = dilation * (weight.shape[2] - 1), 0
    else:
        _refuse_strided_same(op, padding, [stride])
        left, right = _side_padding(op, padding, weight.shape[2], dilation)
    return call_op(torch.ops.fastdl.dilated_conv1d.default, input, weight, bias, stride, left,
                   right, dilation, groups)


def _size(length, kernel, stride, begin, end, dilation):
    return (length + begin + end - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("fastdl::dilated_conv2d")
def _conv2d_fake(input, weight, bias, stride, padding_begin, padding_end, dilation, groups):
    n, _, h, w = input.shape
    out_h = _size(h, weight.shape[2], stride[0], padding_begin[0], padding_end[0], dilation[0])
    out_w = _size(w, weight.shape[3], stride[1], padding_begin[1], padding_end[1], dilation[1])
    return torch.empty((n, weight.shape[0], out_h, out_w), dtype=input.dtype, device=input.device,
                       memory_format=conv_memory_format(input, weight))


@torch.library.register_fake("fastdl::dilated_conv1d")
def _conv1d_fake(input, weight, bias, stride, padding_left, padding_right, dilation, groups):
    n, _, length = input.shape
    out = _size(length, weight.shape[2], stride, padding_left, padding_right, dilation)
    return input.new_empty((n, weight.shape[0], out))


def _backward_fake(grad_output, input, weight, output_mask, memory_format):
    grad_input = (torch.empty(input.shape, dtype=input.dtype, device=input.device,
                              memory_format=memory_format) if output_mask[0] else None)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("fastdl::dilated_conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding_begin, padding_end,
                          dilation, groups, output_mask):
    return _backward_fake(grad_output, input, weight, output_mask,
                          conv_memory_format(input, weight))


@torch.library.register_fake("fastdl::dilated_conv1d_backward")
def _conv1d_backward_fake(grad_output, input, weight, stride, padding_left, padding_right,
                          dilation, groups, output_mask):
    return _backward_fake(grad_output, input, weight, output_mask, torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    input, weight, bias, *conv_args = inputs
    save_for_both_modes(ctx, input, weight)
    ctx.conv_args = conv_args
    ctx.has_bias = bias is not None


def _make_backward(backward_op):
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        grads = call_op(backward_op, grad_output, input, weight, *ctx.conv_args, mask)
        return (*grads, *([None] * len(ctx.conv_args)))
    return backward


for _dims in ("1d", "2d"):
    _forward = getattr(torch.ops.fastdl, f"dilated_conv{_dims}").default
    _backward = getattr(torch.ops.fastdl, f"dilated_conv{_dims}_backward").default
    register_autograd(f"fastdl::dilated_conv{_dims}", _make_backward(_backward),
                      setup_context=_setup_context)
    register_conv_derivatives(_forward, _backward)
del _dims, _forward, _backward
register_autocast("fastdl::dilated_conv2d", "fastdl::dilated_conv2d_backward",
                  "fastdl::dilated_conv1d", "fastdl::dilated_conv1d_backward")
