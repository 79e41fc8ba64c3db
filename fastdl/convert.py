"""Model-level helpers: ``convert`` (swap torch layers for fastdl layers) and
``fold_bn`` (fold batch norm into the convolution before it)."""

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from . import nn as fastdl_nn

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_ACTIVATION_MODULES = {
    "relu": lambda slope: nn.ReLU(),
    "relu6": lambda slope: nn.ReLU6(),
    "silu": lambda slope: nn.SiLU(),
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
}


def fold_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm | None = None,
            inplace: bool = False) -> nn.Module:
    """Folds an inference-mode batch norm into the convolution (or linear layer) that
    feeds it: returns a copy of ``conv`` whose output equals ``bn(conv(x))`` with
    ``bn``'s running statistics, to float rounding.

    ``fold_bn(model)`` (no ``bn``) folds every such pair that follows each other in an
    ``nn.Sequential`` of ``model`` (a copy, unless ``inplace``), the batch norm then
    becoming ``nn.Identity`` (or its activation). Batch norms in training mode are
    left alone: their statistics are not fixed yet. Call it on an ``eval()`` model.

    ``W' = W * gamma / sqrt(running_var + eps)`` per output channel and
    ``b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta``, computed in
    float64 and stored in ``conv``'s dtype. Works for ``nn.Conv1d/2d/3d`` (any groups,
    including :class:`fastdl.nn.DepthwiseConv2d`) and ``nn.Linear``. A fastdl batch
    norm with an activation gives ``nn.Sequential(folded_conv, activation)``.
    The inputs are not modified.
    """
    if bn is None:
        model = conv if inplace else copy.deepcopy(conv)
        _fold_sequentials(model)
        return model
    if not isinstance(conv, _FOLDABLE):
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


def _fold_sequentials(module: nn.Module) -> None:
    for child in module.children():
        _fold_sequentials(child)
    if not isinstance(module, nn.Sequential):
        return
    keys = list(module._modules)
    for first, second in zip(keys, keys[1:]):
        conv, bn = module._modules[first], module._modules[second]
        foldable = (isinstance(conv, _FOLDABLE) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                    and not bn.training and bn.running_mean is not None
                    and bn.num_features == (conv.out_features if isinstance(conv, nn.Linear)
                                            else conv.out_channels))
        if not foldable:
            continue
        folded = fold_bn(conv, bn)
        if isinstance(folded, nn.Sequential):  # the batch norm's activation comes along
            module._modules[first], module._modules[second] = folded[0], folded[1]
        else:
            module._modules[first], module._modules[second] = folded, nn.Identity()


# ---- convert ----

FAMILIES = ("depthwise", "dilated", "batch_norm", "lstm", "gru", "attention")

_BATCH_NORMS = {
    nn.BatchNorm1d: fastdl_nn.BatchNorm1d,
    nn.BatchNorm2d: fastdl_nn.BatchNorm2d,
    nn.BatchNorm3d: fastdl_nn.BatchNorm3d,
    nn.SyncBatchNorm: fastdl_nn.SyncBatchNorm,
}

# The recurrent families: torch layer -> fastdl layer.
_RECURRENT = {
    "lstm": {nn.LSTM: fastdl_nn.LSTM, nn.LSTMCell: fastdl_nn.LSTMCell},
    "gru": {nn.GRU: fastdl_nn.GRU, nn.GRUCell: fastdl_nn.GRUCell},
}

_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.LeakyReLU: "leaky_relu"}


@dataclass
class ConversionReport:
    """What ``convert`` did: ``swapped`` holds (module name, torch layer, fastdl layer),
    ``skipped`` (module name, layer, why not)."""

    swapped: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fastdl.convert: {len(self.swapped)} layers swapped, "
                 f"{len(self.skipped)} left as they are"]
        lines += [f"  swapped {name or '(model)'}: {old} -> {new}" for name, old, new in self.swapped]
        lines += [f"  kept    {name or '(model)'}: {layer} ({why})" for name, layer, why in self.skipped]
        return "\n".join(lines)


def convert(model: nn.Module, families=None, inplace: bool = False, binary: bool = False):
    """Replaces every layer of ``model`` that fastdl serves with its fastdl layer and
    returns ``(model, report)``.

    - ``nn.Conv2d`` with ``groups == in_channels`` (depthwise, any multiplier) ->
      :class:`fastdl.nn.DepthwiseConv2d` (family ``"depthwise"``);
    - ``nn.Conv2d`` and ``nn.Conv1d`` with a dilation above 1 (any groups, stride,
      padding, padding mode) -> :class:`fastdl.nn.DilatedConv2d` /
      :class:`fastdl.nn.DilatedConv1d` (family ``"dilated"``; ``causal`` stays False: a
      model's own ``F.pad`` before the convolution is kept). A dilated depthwise
      convolution goes to ``DepthwiseConv2d`` while the ``"depthwise"`` family is on;
      ``families=["dilated"]`` sends it to ``DilatedConv2d``;
    - ``nn.LSTM`` and ``nn.LSTMCell`` -> :class:`fastdl.nn.LSTM` /
      :class:`fastdl.nn.LSTMCell` (family ``"lstm"``);
    - ``nn.GRU`` and ``nn.GRUCell`` -> :class:`fastdl.nn.GRU` /
      :class:`fastdl.nn.GRUCell` (family ``"gru"``; the fastdl GRU rejects
      ``PackedSequence`` input);
    - ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` -> their fastdl layers (family
      ``"batch_norm"``); inside an ``nn.Sequential`` (where the data flow is known to be
      a chain), a batch norm directly followed by ``ReLU``, ``ReLU6``, ``SiLU`` or
      ``LeakyReLU`` absorbs it (``activation=...``) and the activation module becomes
      ``nn.Identity``. Elsewhere (e.g. ResNet blocks, whose ReLU module is called
      twice) the activation is left alone;
    - ``nn.MultiheadAttention`` -> :class:`fastdl.nn.MultiheadAttention` (family
      ``"attention"``), also as the ``self_attn``/``multihead_attn`` of
      ``nn.TransformerEncoderLayer``/``DecoderLayer``, whose inference fast paths (the
      fused encoder-layer kernel, and ``nn.TransformerEncoder``'s nested tensors) would
      bypass it: the encoder layer's is declined by the fastdl layer, the encoder's is
      turned off (``use_nested_tensor = False``, reported).

    Parameters and buffers are shared with the layers they replace (after a deep copy
    of the model unless ``inplace``), so the converted model keeps its weights,
    running statistics, train/eval mode, device and dtype, and gives the same outputs
    to float rounding. ``families``: a subset of ``fastdl.convert.FAMILIES`` (default:
    all). The report lists what was swapped, and what fastdl could serve but did not,
    with the reason (e.g. a grouped convolution that is not depthwise).
    """
    families = set(FAMILIES if families is None else families)
    unknown = families - set(FAMILIES)
    if unknown:
        raise ValueError(f"fastdl.convert: unknown families {sorted(unknown)}; "
                         f"choose from {list(FAMILIES)}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    if _swap(model, "", families, report) is not None:
        raise TypeError("fastdl.convert: the model itself is a single layer; convert the "
                        "module that contains it, or build the fastdl layer directly")
    if binary:
        _binarize(model, report)
    return model, report


def _binarize(model: nn.Module, report: ConversionReport) -> None:
    named = list(model.named_modules())
    convs = [name for name, m in named if type(m) is nn.Conv2d]
    linears = [name for name, m in named if type(m) is nn.Linear]
    keep = {convs[0] if convs else None: "the first convolution stays float (XNOR-Net)",
            linears[-1] if linears else None: "the last linear layer stays float (XNOR-Net)"}
    modules = dict(named)
    for name in convs + linears:
        layer = modules[name]
        if name in keep:
            report.skipped.append((name, f"nn.{type(layer).__name__}", keep[name]))
            continue
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or (layer.groups > 1 and layer.groups == layer.in_channels):
                report.skipped.append((name, "nn.Conv2d", "depthwise or non-zero padding mode: "
                                       "not binarised"))
                continue
            new, kind = fastdl_nn.XNORConv2d.from_conv2d(layer), "XNORConv2d"
        else:
            new, kind = fastdl_nn.BinaryLinear.from_linear(layer), "BinaryLinear"
        _set_module(model, name, new)
        report.swapped.append((name, f"nn.{type(layer).__name__}", f"fastdl.nn.{kind}"))
    for name, layer in model.named_modules():
        if not isinstance(layer, (fastdl_nn.XNORConv2d, fastdl_nn.BinaryLinear)) or layer.packed:
            continue
        if layer.training:
            report.skipped.append((name, type(layer).__name__, "in training mode, so not packed "
                                   "(packing is for inference: call model.eval() first)"))
            continue
        layer.pack()
        report.swapped.append((name, type(layer).__name__, "packed (weights stored as bits)"))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _swap(module: nn.Module, name: str, families: set, report: ConversionReport):
    """The fastdl layer for ``module`` (recording it), or None after converting its
    children in place."""
    kind = type(module)
    if kind in (nn.Conv1d, nn.Conv2d):
        return _swap_conv(module, name, families, report)
    if "batch_norm" in families and kind in _BATCH_NORMS:
        layer = _BATCH_NORMS[kind].from_batch_norm(module)
        report.swapped.append((name, f"nn.{kind.__name__}", f"fastdl.nn.{kind.__name__}"))
        return layer
    for family, layers in _RECURRENT.items():
        if family in families and kind in layers:
            return _swap_recurrent(module, layers[kind], name, report)
    if "attention" in families and kind is nn.MultiheadAttention:
        report.swapped.append((name, "nn.MultiheadAttention", "fastdl.nn.MultiheadAttention"))
        return fastdl_nn.MultiheadAttention.from_torch(module)
    children = list(module.named_children())
    for child_name, child in children:
        full = f"{name}.{child_name}" if name else child_name
        replacement = _swap(child, full, families, report)
        if replacement is not None:
            setattr(module, child_name, replacement)
    if isinstance(module, nn.Sequential):
        _absorb_activations(module, name, report)
    if isinstance(module, nn.TransformerEncoder) and module.use_nested_tensor and any(
            isinstance(layer.self_attn, fastdl_nn.MultiheadAttention) for layer in module.layers):
        # Its nested-tensor path hands the layers a NestedTensor meant for the fused
        # encoder-layer kernel, which fastdl's self_attn declines.
        module.use_nested_tensor = False
        report.swapped.append((name, "nn.TransformerEncoder(enable_nested_tensor=True)",
                               "use_nested_tensor=False (fastdl self_attn runs instead)"))
    return None


def _swap_conv(conv: nn.Module, name: str, families: set, report: ConversionReport):
    """nn.Conv2d / nn.Conv1d -> DepthwiseConv2d (first: its kernel is the one made for
    groups == C, dilated or not), else DilatedConv2d/1d for dilation > 1 (any groups),
    else None (dense convolutions without dilation stay torch's)."""
    kind = type(conv).__name__
    depthwise = (kind == "Conv2d" and conv.groups > 1 and conv.groups == conv.in_channels
                 and conv.out_channels % conv.in_channels == 0)
    dilated = any(d > 1 for d in conv.dilation)
    if "depthwise" in families and depthwise:
        report.swapped.append((name, "nn.Conv2d(groups=C)", "fastdl.nn.DepthwiseConv2d"))
        return fastdl_nn.DepthwiseConv2d.from_conv2d(conv)
    if "dilated" in families and dilated:
        dilation = conv.dilation[0] if kind == "Conv1d" else conv.dilation
        report.swapped.append((name, f"nn.{kind}(dilation={dilation})",
                               f"fastdl.nn.Dilated{kind}"))
        if kind == "Conv1d":
            return fastdl_nn.DilatedConv1d.from_conv1d(conv)
        return fastdl_nn.DilatedConv2d.from_conv2d(conv)
    if conv.groups > 1 and not depthwise and families & {"depthwise", "dilated"}:
        why = ("the 'dilated' family, which serves it, is off" if dilated
               else "and not dilated: left to torch")
        report.skipped.append((name, f"nn.{kind}", f"grouped ({conv.groups} groups) but not "
                               f"depthwise, {why}"))
    return None


def _swap_recurrent(module: nn.Module, fastdl_kind: type, name: str, report: ConversionReport):
    """nn.LSTM / nn.LSTMCell / nn.GRU / nn.GRUCell -> ``fastdl_kind`` with the same
    configuration and the same (shared) parameters."""
    kind = type(module).__name__
    if isinstance(module, nn.RNNBase):
        extra = dict(proj_size=module.proj_size) if isinstance(module, nn.LSTM) else {}
        layer = fastdl_kind(module.input_size, module.hidden_size, module.num_layers,
                            module.bias, module.batch_first, module.dropout,
                            module.bidirectional, device="meta", **extra)
        names = module._flat_weights_names
    else:
        layer = fastdl_kind(module.input_size, module.hidden_size, module.bias, device="meta")
        names = [n for n, _ in module.named_parameters(recurse=False)]
    for parameter in names:  # nn.RNNBase.__setattr__ keeps its flat weight list in step
        setattr(layer, parameter, getattr(module, parameter))
    layer.train(module.training)
    report.swapped.append((name, f"nn.{kind}", f"fastdl.nn.{kind}"))
    return layer


def _absorb_activations(sequential: nn.Sequential, name: str, report: ConversionReport) -> None:
    """Batch norm then activation, consecutive in a Sequential: the activation moves
    into the fastdl batch norm's kernel."""
    keys = list(sequential._modules)
    for first, second in zip(keys, keys[1:]):
        bn, act = sequential._modules[first], sequential._modules[second]
        if not isinstance(bn, fastdl_nn.batch_norm._FusedBatchNorm) or bn.activation != "none":
            continue
        if type(act) not in _ACTIVATIONS:
            continue
        bn.activation = _ACTIVATIONS[type(act)]
        if isinstance(act, nn.LeakyReLU):
            bn.negative_slope = float(act.negative_slope)
        sequential._modules[second] = nn.Identity()
        full = f"{name}.{second}" if name else second
        report.swapped.append((full, f"nn.{type(act).__name__}",
                               f"activation={bn.activation!r} of the batch norm before it"))
