"""GRU: one step (``fastdl.ops.gru_cell``, as ``nn.GRUCell``) and one layer over a
sequence in one direction (``fastdl.ops.gru_layer``), PyTorch's gate order (reset,
update, new).

The projections are GEMMs (PyTorch's BLAS); the pointwise cell (two sigmoids, a tanh
and the blend with h) is one fastdl kernel each way. The layer runs its recurrence in
C++: the input projection of all timesteps as one GEMM, then per step one GEMM with
W_hh and the fused cell; its backward through time computes the weight, bias and
input gradients as GEMMs over all timesteps. ``fastdl.nn.GRU`` stacks these layers.
dtypes: float32 and float64 everywhere, float16 and bfloat16 (CPU: through float32
copies).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import (call_op, check_device, mark_saved_outputs, register_autocast,
                     register_autograd)


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """``h'`` for ``input`` (B, I), ``hx`` (B, H), ``w_ih`` (3H, I), ``w_hh`` (3H, H),
    optional biases (3H,): the result of ``nn.GRUCell``."""
    check_device("gru_cell", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh)
    h, _ = call_op(torch.ops.fastdl.gru_cell.default, F.linear(input, w_ih, b_ih),
                   F.linear(hx, w_hh, b_hh), hx)
    return h


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
              b_hh: Tensor | None = None, reverse: bool = False,
              batch_sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(output (T, B, H), h_n (B, H))`` of one direction of an ``nn.GRU`` layer for
    ``input`` (T, B, I) from ``hx`` (B, H); ``reverse`` runs from the last timestep to
    the first (the ``_reverse`` half of a bidirectional layer). ``batch_sizes``: a
    ``PackedSequence``'s, as in :func:`fastdl.ops.lstm_layer`."""
    check_device("gru_layer", input=input, hx=hx, w_ih=w_ih, w_hh=w_hh)
    # b_hh stays apart from b_ih: the reset gate scales (h W_hn^T + b_hn) alone.
    b_ih = w_ih.new_zeros(w_ih.shape[0]) if b_ih is None else b_ih
    b_hh = w_hh.new_zeros(w_hh.shape[0]) if b_hh is None else b_hh
    output, h_n, _ = call_op(torch.ops.fastdl.gru_layer.default, input, hx, w_ih, w_hh, b_ih,
                             b_hh, reverse, batch_sizes)
    return output, h_n


@torch.library.register_fake("fastdl::gru_cell")
def _gru_cell_fake(x_gates, h_gates, h_prev):
    batch, three_hidden = x_gates.shape
    hidden = three_hidden // 3
    return x_gates.new_empty((batch, hidden)), x_gates.new_empty((batch, 4 * hidden))


@torch.library.register_fake("fastdl::gru_cell_backward")
def _gru_cell_backward_fake(grad_h, saved, h_prev):
    batch, four_hidden = saved.shape
    three = (batch, 3 * (four_hidden // 4))
    return saved.new_empty(three), saved.new_empty(three), h_prev.new_empty(h_prev.shape)


@torch.library.register_fake("fastdl::gru_layer")
def _gru_layer_fake(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes=None):
    steps, batch, _ = input.shape
    hidden = h0.shape[1]
    return (input.new_empty((steps, batch, hidden)), h0.new_empty(h0.shape),
            input.new_empty((steps, batch, 4 * hidden)))


@torch.library.register_fake("fastdl::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_h_n, input, h0, w_ih, w_hh, output, saved,
                             reverse, batch_sizes=None):
    # Contiguous, as the kernels return them (a batch_first layer's input is a transposed
    # view: empty_like kept its strides and inductor's check of the real result failed).
    return tuple(t.new_empty(shape) for t, shape in (
        (input, input.shape), (h0, h0.shape), (w_ih, w_ih.shape), (w_hh, w_hh.shape),
        (w_ih, w_ih.shape[:1]), (w_hh, w_hh.shape[:1])))


def _cell_setup_context(ctx, inputs, output):
    _, _, h_prev = inputs
    h, saved = output
    ctx.save_for_backward(saved, h_prev)
    mark_saved_outputs(ctx, saved)


def _cell_backward(ctx, grad_h, _grad_saved):
    saved, h_prev = ctx.saved_tensors
    grad_h = torch.zeros_like(h_prev) if grad_h is None else grad_h
    return torch.ops.fastdl.gru_cell_backward.default(grad_h, saved, h_prev)


def _layer_setup_context(ctx, inputs, output):
    input, h0, w_ih, w_hh, _, _, reverse, batch_sizes = inputs
    out, _, saved = output
    ctx.save_for_backward(input, h0, w_ih, w_hh, out, saved, batch_sizes)
    mark_saved_outputs(ctx, saved)
    ctx.reverse = reverse


def _layer_backward(ctx, grad_output, grad_h_n, _grad_saved):
    input, h0, w_ih, w_hh, out, saved, batch_sizes = ctx.saved_tensors
    grad_output = torch.zeros_like(out) if grad_output is None else grad_output
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grads = torch.ops.fastdl.gru_layer_backward.default(grad_output, grad_h_n, input, h0, w_ih,
                                                       w_hh, out, saved, ctx.reverse,
                                                       batch_sizes)
    return *grads, None, None


register_autograd("fastdl::gru_cell", _cell_backward,
                  setup_context=_cell_setup_context)
register_autograd("fastdl::gru_layer", _layer_backward,
                  setup_context=_layer_setup_context)
register_autocast("fastdl::gru_cell", "fastdl::gru_cell_backward", "fastdl::gru_layer",
                  "fastdl::gru_layer_backward")
