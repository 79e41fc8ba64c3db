"""Fused batch norm: ``act(F.batch_norm(input, ...) + residual)`` in one op.

Forward, training: one pass computes the batch statistics (per-channel mean and
variance, summed around a per-piece origin and merged in float64, so inputs with a
large mean lose no precision), a second normalises, adds the residual and applies
the activation. Evaluation: the second pass alone. Backward: one pass reduces
``sum(dz)`` and ``sum(dz * (x - mean))`` (``dz = grad * act'(z)``, with ``z``
recomputed from the input, never stored), a second writes grad_input and
grad_residual; weight and bias gradients come from the same sums. PyTorch's
BN -> add -> ReLU makes about 1.5x as many passes over memory.

Activations: ``'none'``, ``'relu'``, ``'relu6'``, ``'silu'``, ``'leaky_relu'`` (with
``negative_slope``). Inputs of shape (N, C, *) in any memory format; the output has
the input's. dtypes: float32, float64, float16 and bfloat16 on CPU and CUDA, with
float32 statistics for the 16-bit types (float64 for float64). On CPU the 16-bit
types run the float32 kernels on float32 copies.
"""

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from ._utils import call_op, check_device, mark_saved_outputs, register_autograd

ACTIVATIONS = ("none", "relu", "relu6", "silu", "leaky_relu")


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, activation: str = "none",
               negative_slope: float = 0.01, residual: Tensor | None = None) -> Tensor:
    """``act(F.batch_norm(input, running_mean, running_var, weight, bias, training,
    momentum, eps) + residual)``.

    Arguments and running-statistics updates are those of ``F.batch_norm``: with
    ``training=True`` the batch statistics are used and, when given, ``running_mean``
    and ``running_var`` are updated in place (unbiased variance, weight ``momentum``);
    otherwise the running statistics are used.
    """
    given = dict(input=input, running_mean=running_mean, running_var=running_var,
                 weight=weight, bias=bias, residual=residual)
    check_device("batch_norm", **{k: v for k, v in given.items() if v is not None})
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("fastdl.batch_norm: running_mean and running_var are required "
                             "when training=False")
        return call_op(
            torch.ops.fastdl.batch_norm_act.default, input, running_mean, running_var, weight,
            bias, residual, eps, activation, negative_slope)
    output, mean, var = call_op(
        torch.ops.fastdl.batch_norm_act_train.default, input, weight, bias, residual, eps,
        activation, negative_slope)
    update_running_stats(running_mean, running_var, mean, var, input.numel() // input.shape[1],
                         momentum)
    return output


def update_running_stats(running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor,
                         var: Tensor, count: int, momentum: float) -> None:
    """PyTorch's update from batch statistics of ``count`` values per channel (an empty
    batch leaves them as they are, as PyTorch does)."""
    if count == 0:
        return
    with torch.no_grad():  # lerp_: (1 - momentum) * running + momentum * batch, one op each
        if running_mean is not None:
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        if running_var is not None:
            unbiased = var * (count / max(count - 1, 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def _stats_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _like_input(input):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=suggest_memory_format(input))


def _channel_vector(input):
    return input.new_empty((input.shape[1],), dtype=_stats_dtype(input))


@torch.library.register_fake("fastdl::batch_norm_stats")
def _stats_fake(input):
    return _channel_vector(input), _channel_vector(input)


@torch.library.register_fake("fastdl::batch_norm_act")
def _act_fake(input, mean, var, weight, bias, residual, eps, activation, negative_slope):
    return _like_input(input)


@torch.library.register_fake("fastdl::batch_norm_act_train")
def _act_train_fake(input, weight, bias, residual, eps, activation, negative_slope):
    return _like_input(input), _channel_vector(input), _channel_vector(input)


@torch.library.register_fake("fastdl::batch_norm_act_backward_reduce")
def _backward_reduce_fake(grad_output, input, mean, var, weight, bias, residual, eps, activation,
                          negative_slope, write_dz=False):
    return (_channel_vector(input), _channel_vector(input),
            _like_input(input) if write_dz else None)


@torch.library.register_fake("fastdl::batch_norm_act_backward")
def _backward_fake(grad_output, input, mean, var, weight, bias, residual, eps, activation,
                   negative_slope, batch_stats, output_mask):
    return (_like_input(input) if output_mask[0] else None,
            torch.empty_like(weight) if output_mask[1] else None,
            torch.empty_like(bias) if output_mask[2] else None,
            _like_input(input) if output_mask[3] else None)


@torch.library.register_fake("fastdl::batch_norm_act_backward_input")
def _backward_input_fake(grad_output, input, mean, var, weight, bias, residual, mean_dz,
                         mean_dz_xmu, eps, activation, negative_slope, output_mask):
    return (_like_input(input) if output_mask[0] else None,
            _like_input(input) if output_mask[1] else None)


def _train_setup_context(ctx, inputs, output):
    input, weight, bias, residual, eps, activation, negative_slope = inputs
    _, mean, var = output
    ctx.save_for_backward(input, weight, bias, residual, mean, var)
    mark_saved_outputs(ctx, mean, var)  # batch statistics for the backward only
    ctx.args = (eps, activation, negative_slope)


def _backward_op(grad_output, input, mean, var, weight, bias, residual, args, needs,
                 batch_stats):
    need_input, need_weight, need_bias, need_residual = needs
    mask = [need_input, need_weight and weight is not None, need_bias and bias is not None,
            need_residual and residual is not None]
    return torch.ops.fastdl.batch_norm_act_backward.default(
        grad_output, input, mean, var, weight, bias, residual, *args, batch_stats, mask)


def _train_backward(ctx, grad_output, _grad_mean, _grad_var):
    if grad_output is None:  # an undefined gradient (gradcheck checks them): zeros in, zeros out
        return (None,) * 7
    input, weight, bias, residual, mean, var = ctx.saved_tensors
    grads = _backward_op(grad_output, input, mean, var, weight, bias, residual, ctx.args,
                         ctx.needs_input_grad[:4], batch_stats=True)
    return *grads, None, None, None


def _eval_setup_context(ctx, inputs, output):
    input, mean, var, weight, bias, residual, eps, activation, negative_slope = inputs
    ctx.save_for_backward(input, mean, var, weight, bias, residual)
    ctx.args = (eps, activation, negative_slope)


def _eval_backward(ctx, grad_output):
    input, mean, var, weight, bias, residual = ctx.saved_tensors
    n = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias, grad_residual = _backward_op(
        grad_output, input, mean, var, weight, bias, residual, ctx.args, (n[0], n[3], n[4], n[5]),
        batch_stats=False)
    return grad_input, None, None, grad_weight, grad_bias, grad_residual, None, None, None


register_autograd("fastdl::batch_norm_act_train", _train_backward,
                  setup_context=_train_setup_context)
register_autograd("fastdl::batch_norm_act", _eval_backward,
                  setup_context=_eval_setup_context)
