"""Model-level helpers: folding batch norm into the convolution before it."""

import copy

import torch
from torch import nn

_ACTIVATION_MODULES = {
    "relu": lambda slope: nn.ReLU(),
    "relu6": lambda slope: nn.ReLU6(),
    "silu": lambda slope: nn.SiLU(),
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
}


def fold_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Folds an inference-mode batch norm into the convolution (or linear layer) that
    feeds it: returns a copy of ``conv`` whose output equals ``bn(conv(x))`` with
    ``bn``'s running statistics, to float rounding.

    ``W' = W * gamma / sqrt(running_var + eps)`` per output channel and
    ``b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta``, computed in
    float64 and stored in ``conv``'s dtype. Works for ``nn.Conv1d/2d/3d`` (any groups,
    including :class:`fastdl.nn.DepthwiseConv2d`) and ``nn.Linear``. A fastdl batch
    norm with an activation gives ``nn.Sequential(folded_conv, activation)``.
    The inputs are not modified.
    """
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        raise TypeError("fastdl.fold_bn: conv must be an nn.Conv1d/2d/3d or nn.Linear "
                        f"(transposed convolutions are not supported), got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fastdl.fold_bn: bn must be a batch norm layer, got {type(bn).__name__}")
    out_features = conv.out_features if isinstance(conv, nn.Linear) else conv.out_channels
    if bn.num_features != out_features:
        raise ValueError(f"fastdl.fold_bn: bn has {bn.num_features} features but conv has "
                         f"{out_features} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fastdl.fold_bn: bn has no running statistics "
                         "(track_running_stats=False), so there is nothing fixed to fold")
    with torch.no_grad():
        invstd = torch.rsqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(invstd)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(invstd)
        scale = gamma * invstd
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(invstd)
        bias = (bias - bn.running_mean.double()) * scale + beta
        folded = copy.deepcopy(conv)
        folded.weight = nn.Parameter(weight.to(conv.weight.dtype),
                                     requires_grad=conv.weight.requires_grad)
        folded.bias = nn.Parameter(bias.to(conv.weight.dtype),
                                   requires_grad=conv.weight.requires_grad)
    activation = getattr(bn, "activation", "none")
    if activation == "none":
        return folded
    return nn.Sequential(folded, _ACTIVATION_MODULES[activation](bn.negative_slope))
