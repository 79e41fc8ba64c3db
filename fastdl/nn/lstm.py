"""``LSTMCell`` and ``LSTM``: drop-ins for ``nn.LSTMCell`` and ``nn.LSTM`` on the fused
fastdl cell kernel and the C++ sequence loop."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops


class LSTMCell(nn.LSTMCell):
    """``nn.LSTMCell`` whose pointwise step (gates, c', h') is one fastdl kernel each
    way. The same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``,
    ``bias_hh``), initialisation and ``state_dict``; batched (B, I) or unbatched (I,)
    input; ``hx=None`` means zeros. Returns ``(h', c')``.
    """

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        elif unbatched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = ops.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class LSTM(nn.LSTM):
    """``nn.LSTM`` on fastdl's layer op (``fastdl.ops.lstm_layer``): the same
    constructor, parameters (``weight_ih_l0``, ..., ``_reverse``), initialisation,
    ``state_dict`` and outputs ``(output, (h_n, c_n))``: any number of layers,
    bidirectional, ``batch_first``, dropout between layers in training, initial states,
    unbatched (T, I) input.

    Not supported yet (a clear ``NotImplementedError``): ``PackedSequence`` input and
    ``proj_size > 0``.
    """

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        if isinstance(input, PackedSequence):
            raise NotImplementedError("fastdl.nn.LSTM: PackedSequence input is not supported "
                                      "yet; pad the batch (or use nn.LSTM for it)")
        if self.proj_size > 0:
            raise NotImplementedError("fastdl.nn.LSTM: proj_size > 0 is not supported yet")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
            hx = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        elif self.batch_first:
            input = input.transpose(0, 1)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = input.new_zeros(self.num_layers * directions, input.shape[1], self.hidden_size)
            hx = (zeros, zeros)
        h0, c0 = hx
        layer_input, h_n, c_n = input, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self, f"{name}{suffix}", None)
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                index = layer * directions + direction
                out, (h, c) = ops.lstm_layer(layer_input, (h0[index], c0[index]), *weights,
                                             reverse=bool(direction))
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=2) if directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output, h_n, c_n = layer_input, torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)
