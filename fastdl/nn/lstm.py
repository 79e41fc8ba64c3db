"""``LSTMCell`` and ``LSTM``: drop-ins for ``nn.LSTMCell`` and ``nn.LSTM`` on the fused
fastdl cell kernel and the C++ sequence loop."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from . import _packed
from ._fx import leaf_forward
from ._recurrent_checks import check_cell, check_layer


class LSTMCell(nn.LSTMCell):
    """``nn.LSTMCell`` whose pointwise step (gates, c', h') is one fastdl kernel each
    way. The same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``,
    ``bias_hh``), initialisation and ``state_dict``; batched (B, I) or unbatched (I,)
    input; ``hx=None`` means zeros. Returns ``(h', c')``.
    """

    @leaf_forward
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
        check_cell(input, hx, self.input_size, self.hidden_size)
        h, c = ops.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class LSTM(nn.LSTM):
    """``nn.LSTM`` on fastdl's layer op (``fastdl.ops.lstm_layer``): the same
    constructor, parameters (``weight_ih_l0``, ..., ``_reverse``), initialisation,
    ``state_dict`` and outputs ``(output, (h_n, c_n))``: any number of layers,
    bidirectional, ``batch_first``, dropout between layers in training, initial states,
    unbatched (T, I) input, ``PackedSequence`` input (variable lengths; the output is a
    ``PackedSequence`` too, and ``h_n``/``c_n`` hold each sequence's last state),
    ``proj_size > 0`` (``weight_hr_l*``: h = W_hr (o * tanh(c)), P features).

    Under ``torch.no_grad()`` the layers keep none of their steps but the output (no
    saved gates or cells). ``torch.compile`` traces it in one graph once
    ``torch._dynamo.config.allow_rnn = True`` (dynamo skips ``nn.LSTM`` subclasses
    otherwise, as it does ``nn.LSTM``).
    """

    @leaf_forward
    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        check_layer(self, input, hx, unbatched)
        if unbatched:
            input = input.unsqueeze(1)
            hx = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        elif self.batch_first:
            input = input.transpose(0, 1)
        if hx is None:
            hx = self._zero_state(input, input.shape[1])
        output, h_n, c_n = self._run_layers(input, hx, None)
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _forward_packed(self, packed: PackedSequence, hx):
        """The packed data, padded to (T, B, I) in its sorted order, through the layers
        with the batch sizes; the same permutations of hx and h_n/c_n as nn.LSTM."""
        if hx is not None:
            self.check_forward_args(packed.data, tuple(hx), packed.batch_sizes)
        data, positions = _packed.padded(packed)
        hx = (self._zero_state(data, data.shape[1]) if hx is None
              else tuple(_packed.sorted_state(packed, h) for h in hx))
        output, h_n, c_n = self._run_layers(data, hx, packed.batch_sizes)
        return (_packed.repacked(packed, output, positions),
                (_packed.caller_order(packed, h_n), _packed.caller_order(packed, c_n)))

    def _zero_state(self, like: Tensor, batch: int):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return like.new_zeros(layers, batch, h_size), like.new_zeros(layers, batch, self.hidden_size)

    def _run_layers(self, input: Tensor, hx, batch_sizes):
        directions = 2 if self.bidirectional else 1
        h0, c0 = hx
        layer_input, h_n, c_n = input, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self, f"{name}{suffix}", None)
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
                index = layer * directions + direction
                out, (h, c) = ops.lstm_layer(layer_input, (h0[index], c0[index]), *weights[:4],
                                             reverse=bool(direction), batch_sizes=batch_sizes,
                                             w_hr=weights[4])
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=2) if directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)
