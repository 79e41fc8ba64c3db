"""``DepthwiseConv2d``: a drop-in for ``nn.Conv2d(C, C * m, k, groups=C)``."""

import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._fx import leaf_forward


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise 2-D convolution on fastdl kernels.

    The same module as ``nn.Conv2d(in_channels, in_channels * depth_multiplier,
    kernel_size, stride, padding, dilation, groups=in_channels, bias, padding_mode)``:
    same parameters (``weight`` of shape ``(C * m, 1, kH, kW)``, ``bias``), same
    initialisation, same ``state_dict`` keys, so weights load in either direction and
    give the same output. It *is* an ``nn.Conv2d`` (a subclass), so code that looks for
    convolutions finds it.

    Accepts ``padding`` as an int, a pair, ``'same'`` or ``'valid'``, and every
    ``padding_mode`` of ``nn.Conv2d``; batched ``(N, C, H, W)`` or unbatched ``(C, H, W)``
    input, NCHW or channels_last (as with ``nn.Conv2d``, the output is channels_last when
    the input or the weight is, e.g. after ``module.to(memory_format=torch.channels_last)``).
    """

    def __init__(self, in_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, depth_multiplier: int = 1, padding_mode: str = "zeros",
                 device=None, dtype=None):
        if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
            raise ValueError(
                f"DepthwiseConv2d: depth_multiplier must be a positive int, got {depth_multiplier!r}"
            )
        super().__init__(in_channels, in_channels * depth_multiplier, kernel_size, stride, padding,
                         dilation, groups=in_channels, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self.depth_multiplier = depth_multiplier

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        """A DepthwiseConv2d with ``conv``'s configuration and (shared) parameters."""
        if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels != 0:
            raise ValueError(
                "DepthwiseConv2d.from_conv2d: conv must have groups == in_channels and "
                f"out_channels a multiple of in_channels, got {conv}"
            )
        layer = cls(conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.bias is not None, conv.out_channels // conv.in_channels, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        return layer

    @leaf_forward
    def forward(self, input: Tensor) -> Tensor:
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        padding = self.padding
        if self.padding_mode != "zeros" or (padding == "same" and self._asymmetric_same()):
            # F.pad materialises the padded input (what nn.Conv2d does too): only for
            # non-zero padding modes and for 'same' with an even kernel extent.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size))
        elif padding == "valid":
            padding = (0, 0)
        out = ops.depthwise_conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation)
        return out.squeeze(0) if unbatched else out

    def _asymmetric_same(self) -> bool:
        return any(d * (k - 1) % 2 for d, k in zip(self.dilation, self.kernel_size))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depth_multiplier={self.depth_multiplier}"
