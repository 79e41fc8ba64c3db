"""``LSTMCell``: a drop-in for ``nn.LSTMCell`` on the fused fastdl cell kernel."""

import torch
from torch import Tensor, nn

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
