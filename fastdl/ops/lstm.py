"""One LSTM layer over a sequence, one direction: ``fastdl.ops.lstm_layer``.

The forward runs in C++. On CPU without projection or packing the threads split the
batch rows or the hidden units once, keep the weights packed for the whole sequence,
and compute the gates and the cell of their share per step (above 8 rows in register
tiles over [x_t | h] that include the input projection; up to 8 rows the input
projection is one GEMM and a step a GEMV per row). Otherwise the
input projection of all timesteps is one GEMM, then one GEMM with W_hh and the fused
fastdl cell per step. The backward through time runs the fused cell backward per step;
on CPU without projection or packing each step's h and input gradients come from the
same register tiles as the forward's, elsewhere from GEMMs (the input gradient as one
GEMM over all timesteps). The weight gradients are one product over all timesteps each
(fastdl's tiles on CPU, the device's GEMM elsewhere). ``fastdl.nn.LSTM`` stacks these
layers.
"""

import torch
from torch import Tensor

from ._utils import (call_op, check_device, mark_saved_outputs, needs_grad, register_autocast,
                     register_autograd)


def lstm_layer(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None = None, b_hh: Tensor | None = None,
               reverse: bool = False, batch_sizes: Tensor | None = None,
               w_hr: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``(output (T, B, H), (h_n, c_n))`` of one direction of an ``nn.LSTM`` layer for
    ``input`` (T, B, I) from ``hx = (h0, c0)`` each (B, H); ``reverse`` runs from the last
    timestep to the first (the ``_reverse`` half of a bidirectional layer).

    ``batch_sizes`` (int64, on the CPU): a ``PackedSequence``'s, with ``input`` its data
    padded to (T, B, I) in the packed (sorted) order; step t then runs rows
    ``[0, batch_sizes[t])`` only, the output is zero past each sequence's end, and
    ``h_n``/``c_n`` hold each sequence's own last state.

    ``w_hr`` (P, H): ``nn.LSTM``'s ``proj_size``: h = w_hr (o * tanh(c)), so ``h0``,
    ``h_n`` and the output have P features and ``w_hh`` is (4H, P)."""
    h0, c0 = hx
    check_device("lstm_layer", input=input, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh)
    if b_ih is None and b_hh is None:
        bias = w_hh.new_zeros(w_hh.shape[0])
    else:
        bias = (b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh)
    # Without a gradient to compute, the op keeps none of its steps but the output.
    need_backward = needs_grad(input, h0, c0, w_ih, w_hh, bias, w_hr)
    output, h_n, c_n, _, _, _ = call_op(
        torch.ops.fastdl.lstm_layer.default, input, h0, c0, w_ih, w_hh, bias, reverse,
        batch_sizes, w_hr, need_backward)
    return output, (h_n, c_n)


@torch.library.register_fake("fastdl::lstm_layer")
def _lstm_layer_fake(input, h0, c0, w_ih, w_hh, bias, reverse, batch_sizes=None, w_hr=None,
                     need_backward=True):
    steps, batch, _ = input.shape
    hidden = c0.shape[1]

    def saved(*shape):  # what the backward needs, or nothing
        return input.new_empty(shape if need_backward else (0,))

    return (input.new_empty((steps, batch, h0.shape[1])), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape), saved(steps, batch, 4 * hidden), saved(steps, batch, hidden),
            saved(steps, batch, hidden) if w_hr is not None else input.new_empty(0))


@torch.library.register_fake("fastdl::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, output,
                              activated_gates, cells, reverse, batch_sizes=None, w_hr=None,
                              unprojected=None):
    # Contiguous, as the kernel returns them (a batch_first layer's input is a transposed
    # view: empty_like kept its strides and inductor's check of the real result failed).
    return (input.new_empty(input.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]),
            w_hr.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, h0, c0, w_ih, w_hh, _, reverse, batch_sizes, w_hr, need_backward = inputs
    out, _, _, activated, cells, unprojected = output
    ctx.need_backward = need_backward
    ctx.save_for_backward(input, h0, c0, w_ih, w_hh, out, activated, cells, batch_sizes, w_hr,
                          unprojected)
    mark_saved_outputs(ctx, activated, cells, unprojected)
    ctx.reverse = reverse


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_activated, _grad_cells,
              _grad_unprojected):
    if not ctx.need_backward:
        raise RuntimeError("fastdl.lstm_layer: the forward ran with need_backward=False, so it "
                           "kept no gates for a backward; call it with need_backward=True "
                           "(fastdl.ops.lstm_layer decides this from grad mode)")
    input, h0, c0, w_ih, w_hh, out, activated, cells, batch_sizes, w_hr, unprojected = \
        ctx.saved_tensors
    grads = [torch.zeros_like(like) if g is None else g
             for g, like in ((grad_output, out), (grad_h_n, h0), (grad_c_n, c0))]
    projected = w_hr is not None
    *result, grad_w_hr = torch.ops.fastdl.lstm_layer_backward.default(
        *grads, input, h0, c0, w_ih, w_hh, out, activated, cells, ctx.reverse, batch_sizes, w_hr,
        unprojected if projected else None)
    return *result, None, None, grad_w_hr if projected else None, None


register_autograd("fastdl::lstm_layer", _backward, setup_context=_setup_context)
register_autocast("fastdl::lstm_layer", "fastdl::lstm_layer_backward")
