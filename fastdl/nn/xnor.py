"""Binary layers (XNOR-Net): ``XNORConv2d`` and ``BinaryLinear``.

Training form: latent float weights, the same parameters and ``state_dict`` as
``nn.Conv2d`` / ``nn.Linear``; the forward binarises input and weight to +-1 and runs
the packed-bit kernels; gradients use the straight-through estimator (see
:mod:`fastdl.ops.xnor_conv2d`). ``layer.pack()`` turns a trained layer into inference
form: the weight becomes a buffer of packed sign bits (``weight_bits``, about 32x
smaller than the float weight) plus its per-channel scale (``weight_alpha``), and
the forward packs only the input. In a packed layer no gradient flows through the
binary product to the input (its signs are bits); the bias stays a parameter and can
still be fine-tuned.

Scaling (XNOR-Net, Rastegari et al. 2016), both optional:
  - ``weight_scale=True``: alpha[o] = mean |W[o]|, multiplying output channel o;
  - ``input_scale=True``: K = mean over channels of |x|, averaged over each output's
    receptive field (the paper's box filter), multiplying each output pixel.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._fx import leaf_forward


def _register_packed(layer: nn.Module, weight: Tensor, bits: Tensor) -> None:
    """Swaps ``layer.weight`` (a Parameter) for its packed bits and scale (buffers)."""
    alpha = weight.abs().mean(dim=tuple(range(1, weight.dim()))) if layer.weight_scale else None
    del layer.weight
    layer.register_parameter("weight", None)
    layer.register_buffer("weight_bits", bits)
    layer.register_buffer("weight_alpha", alpha)
    layer.packed = True


def _check_floating_input(layer: nn.Module, input: Tensor) -> None:
    if not input.is_floating_point():
        raise TypeError(f"{type(layer).__name__}: input must be a floating-point tensor, got "
                        f"{input.dtype}")


class XNORConv2d(nn.Conv2d):
    """2-D convolution of the signs of input and weight (XNOR-Net), on packed bits.

    Same constructor, parameters and ``state_dict`` as ``nn.Conv2d`` (``padding`` an
    int, a pair, ``'same'`` or ``'valid'``; ``padding_mode`` must be ``'zeros'``: the
    zero padding contributes exactly 0, as in ``F.conv2d`` of the +-1 tensors), plus
    ``weight_scale`` and ``input_scale`` (module docstring). Without scales the output
    equals ``F.conv2d(sign(x), sign(W), bias, ...)`` exactly, with sign(0) = +1
    (``torch.sign`` gives 0 there).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, weight_scale: bool = True, input_scale: bool = False):
        if padding_mode != "zeros":
            raise ValueError("XNORConv2d: padding_mode must be 'zeros' (a +-1 input has no "
                             f"reflection or replication of zeros), got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        self.weight_scale = weight_scale
        self.input_scale = input_scale
        self.packed = False

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, *, weight_scale: bool = True,
                    input_scale: bool = False) -> "XNORConv2d":
        """An XNORConv2d with ``conv``'s configuration and (shared) parameters."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                    weight_scale=weight_scale, input_scale=input_scale)
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        return layer

    @torch.no_grad()
    def pack(self) -> "XNORConv2d":
        """Inference form: the weight becomes ``weight_bits`` (packed signs) and
        ``weight_alpha`` (its scale). Irreversible; returns ``self``. Load a packed
        ``state_dict`` into a layer after calling ``pack()`` on it."""
        if not self.packed:
            _register_packed(self, self.weight, ops.pack_signs(self.weight.detach(), 1))
        return self

    @leaf_forward
    def forward(self, input: Tensor) -> Tensor:
        _check_floating_input(self, input)
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        padding, crop = self._symmetric_padding()
        args = (self.stride, padding, self.dilation, self.groups)
        if self.packed:
            fuse_bias = not self.input_scale and not any(crop)
            out = ops.xnor_conv2d_packed(
                ops.pack_signs(input, self.groups), self.weight_bits, self.in_channels,
                self.weight_alpha, self.bias if fuse_bias else None, *args, dtype=input.dtype,
                channels_last=input.is_contiguous(memory_format=torch.channels_last)
                and not input.is_contiguous())
        else:
            fuse_bias = False
            out = ops.xnor_conv2d(input, self.weight, None, *args)
            if self.weight_scale:
                out = out * self.weight.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
        if self.input_scale:
            box = input.new_full((1, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] *
                                                                  self.kernel_size[1]))
            out = out * F.conv2d(input.abs().mean(1, keepdim=True), box, None, self.stride,
                                 padding, self.dilation)
        out = out[..., crop[0]:, crop[1]:]
        if self.bias is not None and not fuse_bias:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.squeeze(0) if unbatched else out

    def _symmetric_padding(self):
        """(padding, crop): numeric symmetric padding, and the leading rows/columns to
        drop for a 'same' padding whose total is odd (PyTorch pads the extra one on
        the right; padding both sides by the larger half and dropping the first
        output does the same without a padded copy, which would turn zeros into +1)."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding != "same":
            return tuple(self.padding), (0, 0)
        totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        return tuple((t + 1) // 2 for t in totals), tuple(t % 2 for t in totals)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_scale={self.weight_scale}, "
                f"input_scale={self.input_scale}" + (", packed=True" if self.packed else ""))


class BinaryLinear(nn.Linear):
    """Linear layer on the signs of input and weight (XNOR-Net), on packed bits.

    Same constructor, parameters and ``state_dict`` as ``nn.Linear``, plus
    ``weight_scale`` and ``input_scale`` (module docstring; K is mean |x| per row).
    Without scales the output equals ``F.linear(sign(x), sign(W), bias)`` exactly, with
    sign(0) = +1 (``torch.sign`` gives 0 there).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, weight_scale: bool = True, input_scale: bool = False):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_scale = weight_scale
        self.input_scale = input_scale
        self.packed = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, weight_scale: bool = True,
                    input_scale: bool = False) -> "BinaryLinear":
        """A BinaryLinear with ``linear``'s configuration and (shared) parameters."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype,
                    weight_scale=weight_scale, input_scale=input_scale)
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        return layer

    @torch.no_grad()
    def pack(self) -> "BinaryLinear":
        """Inference form, as :meth:`XNORConv2d.pack`."""
        if not self.packed:
            bits = ops.pack_signs(self.weight.detach()[:, :, None, None], 1)
            _register_packed(self, self.weight, bits)
        return self

    @leaf_forward
    def forward(self, input: Tensor) -> Tensor:
        _check_floating_input(self, input)
        if input.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input must have {self.in_features} features in its "
                             f"last dimension, got shape {tuple(input.shape)}")
        leading = input.shape[:-1]
        rows = input.reshape(-1, self.in_features, 1, 1)
        if self.packed:
            fuse_bias = not self.input_scale
            out = ops.xnor_conv2d_packed(ops.pack_signs(rows), self.weight_bits, self.in_features,
                                         self.weight_alpha, self.bias if fuse_bias else None,
                                         dtype=input.dtype)
        else:
            fuse_bias = False
            out = ops.xnor_conv2d(rows, self.weight[:, :, None, None])
            if self.weight_scale:
                out = out * self.weight.abs().mean(dim=1).view(1, -1, 1, 1)
        out = out.reshape(*leading, self.out_features)
        if self.input_scale:
            out = out * input.abs().mean(-1, keepdim=True)
        if self.bias is not None and not fuse_bias:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_scale={self.weight_scale}, "
                f"input_scale={self.input_scale}" + (", packed=True" if self.packed else ""))
