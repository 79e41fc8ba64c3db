"""``GRUCell`` and ``GRU``: drop-ins for ``nn.GRUCell`` and ``nn.GRU`` on the fused
fastdl cell kernel and the C++ sequence loop."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from . import _packed
from ._fx import leaf_forward
from ._recurrent_checks import check_cell, check_layer


class GRUCell(nn.GRUCell):
    """``nn.GRUCell`` whose pointwise step (gates, h') is one fastdl kernel each way.
    The same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``,
    ``bias_hh``), initialisation and ``state_dict``; batched (B, I) or unbatched (I,)
    input; ``hx=None`` means zeros. Returns ``h'``.
    """

    @leaf_forward
    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = input.new_zeros(input.shape[0], self.hidden_size)
        elif unbatched:
            hx = hx.unsqueeze(0)
        check_cell(input, (hx,), self.input_size, self.hidden_size)
        h = ops.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h.squeeze(0) if unbatched else h


class GRU(nn.GRU):
    """``nn.GRU`` on fastdl's layer op (``fastdl.ops.gru_layer``): the same constructor,
    parameters (``weight_ih_l0``, ..., ``_reverse``), initialisation, ``state_dict``
    and outputs ``(output, h_n)``: any number of layers, bidirectional, ``batch_first``,
    dropout between layers in training, an initial state, unbatched (T, I) input,
    ``PackedSequence`` input (the output is packed too; ``h_n`` holds each sequence's
    last state).
    """

    @leaf_forward
    def forward(self, input, hx: Tensor | None = None):
        if isinstance(input, PackedSequence):
            if hx is not None:
                self.check_forward_args(input.data, hx, input.batch_sizes)
            data, positions = _packed.padded(input)
            h0 = (self._zero_state(data, data.shape[1]) if hx is None
                  else _packed.sorted_state(input, hx))
            output, h_n = self._run_layers(data, h0, input.batch_sizes)
            return _packed.repacked(input, output, positions), _packed.caller_order(input, h_n)
        if input.dim() not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        check_layer(self, input, hx, unbatched)
        if unbatched:
            input = input.unsqueeze(1)
            hx = None if hx is None else hx.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if hx is None:
            hx = self._zero_state(input, input.shape[1])
        output, h_n = self._run_layers(input, hx, None)
        if unbatched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n

    def _zero_state(self, like: Tensor, batch: int) -> Tensor:
        return like.new_zeros(self.num_layers * (2 if self.bidirectional else 1), batch,
                              self.hidden_size)

    def _run_layers(self, input: Tensor, h0: Tensor, batch_sizes):
        directions = 2 if self.bidirectional else 1
        layer_input, h_n = input, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self, f"{name}{suffix}", None)
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                out, h = ops.gru_layer(layer_input, h0[layer * directions + direction], *weights,
                                       reverse=bool(direction), batch_sizes=batch_sizes)
                outputs.append(out)
                h_n.append(h)
            layer_input = torch.cat(outputs, dim=2) if directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n)
