"""``DilatedConv2d`` and ``DilatedConv1d``: drop-ins for ``nn.Conv2d`` / ``nn.Conv1d``
with any dilation (atrous, DeepLab ASPP; WaveNet, TCN), and incremental causal
inference (``DilatedConv1d.step``, the "queue" method of fast WaveNet generation,
Paine et al. 2016)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._fx import leaf_forward


class DilatedConv2d(nn.Conv2d):
    """2-D convolution with any dilation, stride and groups on fastdl kernels.

    The same module as ``nn.Conv2d`` with the same arguments: same parameters, same
    initialisation, same ``state_dict`` keys, so weights load in either direction and
    give the same output; it *is* an ``nn.Conv2d`` (a subclass).

    ``padding`` an int, a pair, ``'same'`` or ``'valid'``; ``'same'`` with an even
    dilated extent (e.g. ``kernel_size=2``) goes to the kernel as uneven per-side
    padding, without a padded copy. A ``padding_mode`` other than ``'zeros'`` pads with
    ``F.pad`` first (as ``nn.Conv2d`` does). Batched ``(N, C, H, W)`` or unbatched
    ``(C, H, W)`` input, NCHW or channels_last (as with ``nn.Conv2d``, the output is
    channels_last when the input or the weight is).
    """

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "DilatedConv2d":
        """A DilatedConv2d with ``conv``'s configuration and (shared) parameters."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device="meta")
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        return layer

    @leaf_forward
    def forward(self, input: Tensor) -> Tensor:
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = ops.dilated_conv2d(input, self.weight, self.bias, self.stride, padding,
                                 self.dilation, self.groups)
        return out.squeeze(0) if unbatched else out


class CausalConvQueue:
    """The inputs one causal ``DilatedConv1d`` still needs, per batch element, for
    step-by-step inference.

    A ring buffer ``buffer`` of shape ``(N, C_in, dilation * (k - 1) + 1)``, preallocated
    and zeroed (the causal zero padding before the first step), and ``position``, the
    slot the next input goes to. Slot ``(position + i) % L`` holds the ``i``-th oldest of
    the last ``L`` inputs. ``taps[p]`` are the slots of the ``k`` inputs a new output reads
    once the newest input is in slot ``p``, oldest first (precomputed on the device, so a
    step makes no index tensor and no host sync). Made by
    :meth:`DilatedConv1d.init_state`; one per layer and generated sequence batch.
    """

    def __init__(self, batch: int, channels: int, kernel_size: int, dilation: int,
                 device=None, dtype=None):
        length = dilation * (kernel_size - 1) + 1
        self.buffer = torch.zeros(batch, channels, length, device=device, dtype=dtype)
        self.position = 0
        slots = torch.arange(length).unsqueeze(1) + 1 + dilation * torch.arange(kernel_size)
        self.taps = (slots % length).to(self.buffer.device)

    def push(self, x: Tensor) -> Tensor:
        """Stores one input step ``x`` (N, C_in) and returns the ``(N, C_in, k)`` inputs the
        new output reads."""
        slot = self.position
        self.buffer[:, :, slot] = x
        self.position = (slot + 1) % self.buffer.shape[2]
        return self.buffer.index_select(2, self.taps[slot])

    def extend(self, x: Tensor) -> Tensor:
        """Appends ``x`` (N, C_in, T) and returns it after the last ``L - 1`` stored
        inputs, in time order: ``(N, C_in, L - 1 + T)``, what a valid convolution needs."""
        length = self.buffer.shape[2]
        order = (torch.arange(1, length, device=self.buffer.device) + self.position) % length
        window = torch.cat([self.buffer.index_select(2, order), x], dim=2)
        self.buffer.copy_(window[:, :, -length:])
        self.position = 0
        return window


class DilatedConv1d(nn.Conv1d):
    """1-D convolution with any dilation, stride and groups on fastdl kernels, and
    causal convolution (WaveNet, TCN).

    The same module as ``nn.Conv1d`` with the same arguments (parameters, initialisation,
    ``state_dict``; a subclass), plus ``causal``: with ``causal=True`` output ``t`` reads
    inputs ``t - dilation * (k - 1) ... t`` only, i.e. ``conv(F.pad(x, (dilation * (k - 1),
    0)))``, with the padding done in the kernel, not as a copy. Causal layers need
    ``padding=0``, ``stride=1`` and ``padding_mode='zeros'``; their output has the input's
    length. Batched ``(N, C, L)`` or unbatched ``(C, L)`` input.

    Incremental inference (causal layers): ``state = layer.init_state(batch)``, then
    ``layer.step(x_t, state)`` per new time step, ``x_t`` of shape ``(N, C_in)``: the
    state keeps the last ``dilation * (k - 1)`` inputs in a ring buffer
    (:class:`CausalConvQueue`), so a step is one gather of ``k`` taps and one
    matrix-vector product per batch element, whatever the length so far. ``step`` also
    takes a chunk ``(N, C_in, T)`` (e.g. a prompt), convolved after the stored inputs.
    Steps fed one after another give the outputs of the full causal convolution. Meant
    for inference: run it under ``torch.no_grad()`` or ``torch.inference_mode()``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 causal: bool = False, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device=device, dtype=dtype)
        if causal and (self.padding not in ((0,), "valid") or self.stride != (1,)
                       or padding_mode != "zeros"):
            raise ValueError(
                "DilatedConv1d: causal=True pads dilation * (kernel_size - 1) on the left "
                "itself and keeps the length, so it needs padding=0, stride=1 and "
                f"padding_mode='zeros'; got padding={padding!r}, stride={stride!r}, "
                f"padding_mode={padding_mode!r}"
            )
        self.causal = causal

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, causal: bool = False) -> "DilatedConv1d":
        """A DilatedConv1d with ``conv``'s configuration and (shared) parameters.
        ``causal=True`` (for a ``conv`` without padding) drops the ``F.pad`` its model
        did before it: the fastdl layer then pads on the left itself."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, causal=causal, device="meta")
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        return layer

    @leaf_forward
    def forward(self, input: Tensor) -> Tensor:
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(0)
        padding = self.padding if isinstance(self.padding, str) else self.padding[0]
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        out = ops.dilated_conv1d(input, self.weight, self.bias, self.stride[0],
                                 0 if self.causal else padding, self.dilation[0], self.groups,
                                 causal=self.causal)
        return out.squeeze(0) if unbatched else out

    def init_state(self, batch: int, device=None, dtype=None) -> CausalConvQueue:
        """An empty queue for ``batch`` sequences (on the weight's device and dtype unless
        given): as if every earlier input were zero, as in the causal padding."""
        self._check_causal("init_state")
        return CausalConvQueue(batch, self.in_channels, self.kernel_size[0], self.dilation[0],
                               self.weight.device if device is None else device,
                               self.weight.dtype if dtype is None else dtype)

    def step(self, input: Tensor, state: CausalConvQueue) -> Tensor:
        """The outputs for the next time step(s): ``input`` (N, C_in) gives (N, C_out);
        a chunk (N, C_in, T) gives (N, C_out, T). Updates ``state``."""
        self._check_causal("step")
        if input.dim() not in (2, 3) or input.shape[:2] != state.buffer.shape[:2]:
            raise ValueError(
                f"DilatedConv1d.step: input must have shape (N, C_in) or (N, C_in, T) with "
                f"(N, C_in) = {tuple(state.buffer.shape[:2])} (the state's), got "
                f"{tuple(input.shape)}"
            )
        if input.dim() == 3:
            window = state.extend(input)
            return ops.dilated_conv1d(window, self.weight, self.bias, 1, 0, self.dilation[0],
                                      self.groups)
        taps = state.push(input)                        # (N, C_in, k)
        batch, groups = input.shape[0], self.groups
        if groups == 1:
            return F.linear(taps.reshape(batch, -1), self.weight.reshape(self.out_channels, -1),
                            self.bias)
        # Grouped: one (N, C_in/g * k) x (C_in/g * k, C_out/g) product per group.
        weight = self.weight.reshape(groups, self.out_channels // groups, -1)
        out = torch.bmm(taps.reshape(batch, groups, -1).transpose(0, 1), weight.transpose(1, 2))
        out = out.transpose(0, 1).reshape(batch, self.out_channels)
        return out if self.bias is None else out + self.bias

    def _check_causal(self, method: str) -> None:
        if not self.causal:
            raise ValueError(f"DilatedConv1d.{method}: incremental inference needs a causal "
                             "layer (causal=True); output t of this one reads later inputs")

    def extra_repr(self) -> str:
        return super().extra_repr() + (", causal=True" if self.causal else "")
