"""One LSTM step: ``(h', c') = nn.LSTMCell(input, (h, c))`` with PyTorch's gate order
(input, forget, cell, output).

The two projections are GEMMs (``F.linear``, PyTorch's BLAS); the pointwise cell
(four activations, c' and h') is one fastdl kernel, and so is its backward, instead
of the dozen elementwise ops PyTorch's CPU path runs. dtypes: float32 and float64
everywhere, float16 and bfloat16 (CPU: through float32 copies).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import (call_op, check_device, mark_saved_outputs, register_autocast,
                     register_autograd)


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(h', c')`` for ``input`` (B, I), ``hx = (h, c)`` each (B, H), ``w_ih`` (4H, I),
    ``w_hh`` (4H, H), optional biases (4H,): the result of ``nn.LSTMCell``."""
    h, c = hx
    check_device("lstm_cell", input=input, h=h, c=c, w_ih=w_ih, w_hh=w_hh)
    gates = F.linear(input, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    h_new, c_new, _ = call_op(torch.ops.fastdl.lstm_cell.default, gates, c)
    return h_new, c_new


@torch.library.register_fake("fastdl::lstm_cell")
def _lstm_cell_fake(gates, c_prev):
    batch, four_hidden = gates.shape
    return (gates.new_empty((batch, four_hidden // 4)), gates.new_empty((batch, four_hidden // 4)),
            gates.new_empty((batch, four_hidden)))


@torch.library.register_fake("fastdl::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_h, grad_c, activated_gates, c_prev, c):
    # Contiguous, as the kernel returns them (empty_like kept a transposed c_prev's strides).
    return activated_gates.new_empty(activated_gates.shape), c_prev.new_empty(c_prev.shape)


def _setup_context(ctx, inputs, output):
    _, c_prev = inputs
    _, c, activated = output
    ctx.save_for_backward(activated, c_prev, c)
    mark_saved_outputs(ctx, activated)


def _backward(ctx, grad_h, grad_c, _grad_activated):
    activated, c_prev, c = ctx.saved_tensors
    grad_h = torch.zeros_like(c) if grad_h is None else grad_h
    grad_c = torch.zeros_like(c) if grad_c is None else grad_c
    return torch.ops.fastdl.lstm_cell_backward.default(grad_h, grad_c, activated, c_prev, c)


register_autograd("fastdl::lstm_cell", _backward, setup_context=_setup_context)
register_autocast("fastdl::lstm_cell", "fastdl::lstm_cell_backward")
