"""Fused batch norm layers: ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` with an optional
activation and residual input, drop-ins for their ``torch.nn`` namesakes."""

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import ops
from ..ops.batch_norm import ACTIVATIONS, update_running_stats
from ._fx import leaf_forward


def _check_activation(cls_name: str, activation: str, negative_slope: float) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{cls_name}: activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {activation!r}")
    if not isinstance(negative_slope, (int, float)):
        raise TypeError(f"{cls_name}: negative_slope must be a number, got {negative_slope!r}")


class _FusedBatchNorm:
    """What BatchNorm1d/2d/3d and SyncBatchNorm add to their torch base class: the
    activation, the residual input and the fused kernels. The running-statistics
    bookkeeping is the base class's own (``nn.modules.batchnorm._BatchNorm.forward``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 activation: str = "none", negative_slope: float = 0.01):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._init_fused(activation, negative_slope)

    def _init_fused(self, activation: str, negative_slope: float) -> None:
        _check_activation(type(self).__name__, activation, negative_slope)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm, activation: str = "none",
                        negative_slope: float = 0.01):
        """A layer with ``bn``'s configuration, (shared) parameters and buffers, and
        ``activation`` applied after it."""
        layer = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                    activation=activation, negative_slope=negative_slope)
        layer.weight, layer.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(layer, name, getattr(bn, name))
        if hasattr(layer, "process_group"):
            layer.process_group = getattr(bn, "process_group", None)
        layer.train(bn.training)
        return layer

    def _statistics_args(self):
        """(use batch statistics?, running_mean, running_var, momentum) as
        ``_BatchNorm.forward`` computes them, num_batches_tracked updated."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return (batch_stats, self.running_mean if keep else None,
                self.running_var if keep else None, momentum)

    @leaf_forward
    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        """``activation(batch_norm(input) + residual)``; ``residual`` is optional and has
        the input's shape."""
        self._check_input_dim(input)
        batch_stats, running_mean, running_var, momentum = self._statistics_args()
        return ops.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                              batch_stats, momentum, self.eps, self.activation,
                              self.negative_slope, residual)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation != "none":
            text += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                text += f", negative_slope={self.negative_slope}"
        return text


_DOC = """Fused batch norm over {what} on fastdl kernels: ``nn.{base}`` followed by an
    optional residual add and activation, in one pass each way.

    Same constructor arguments, parameters, buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``), ``state_dict`` keys, running-statistics update
    (``momentum=None`` gives the cumulative average) and ``train()``/``eval()``
    behaviour as ``nn.{base}``, of which it is a subclass; ``activation`` is one of
    ``'none'``, ``'relu'``, ``'relu6'``, ``'silu'``, ``'leaky_relu'`` (slope
    ``negative_slope``). ``forward(input, residual=None)`` returns
    ``activation(bn(input) + residual)``. float32, float64, float16 and bfloat16
    (float32 statistics) on CPU and CUDA.
    """


class BatchNorm1d(_FusedBatchNorm, nn.BatchNorm1d):
    __doc__ = _DOC.format(what="(N, C) or (N, C, L) input", base="BatchNorm1d")


class BatchNorm2d(_FusedBatchNorm, nn.BatchNorm2d):
    __doc__ = _DOC.format(what="(N, C, H, W) input, NCHW or channels_last", base="BatchNorm2d")


class BatchNorm3d(_FusedBatchNorm, nn.BatchNorm3d):
    __doc__ = _DOC.format(what="(N, C, D, H, W) input", base="BatchNorm3d")


class SyncBatchNorm(_FusedBatchNorm, nn.modules.batchnorm._BatchNorm):
    """Fused batch norm whose training statistics are those of the whole batch across
    the processes of ``process_group`` (``torch.distributed``, any backend: gloo on CPU,
    NCCL on CUDA): the same kernels, with per-process statistics and gradient sums
    all-reduced in between. Outside an initialised process group, or with one process,
    or in ``eval()``, it is :class:`BatchNorm2d`-like. ``forward(input, residual=None)``.

    Same constructor, parameters, buffers and ``state_dict`` as ``nn.SyncBatchNorm``,
    but not a subclass of it: ``DistributedDataParallel`` refuses CPU modules that
    contain an ``nn.SyncBatchNorm``, and this one works on CPU.

    To make a model's batch norms synchronous, use
    :meth:`SyncBatchNorm.convert_sync_batchnorm` (this class's), not
    ``nn.SyncBatchNorm.convert_sync_batchnorm``: torch's turns every batch norm,
    fastdl's included, into an ``nn.SyncBatchNorm`` and so drops a fastdl layer's
    activation, without a word.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None, activation: str = "none",
                 negative_slope: float = 0.01):
        # _BatchNorm's own constructor (this one also takes process_group), not the mixin's.
        nn.modules.batchnorm._BatchNorm.__init__(self, num_features, eps, momentum, affine,
                                                 track_running_stats, device, dtype)
        self.process_group = process_group
        self._init_fused(activation, negative_slope)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """``module`` with every batch norm in it (``nn.BatchNorm1d/2d/3d``,
        ``nn.SyncBatchNorm`` and fastdl's layers) replaced by a fastdl
        ``SyncBatchNorm`` over ``process_group``, the way
        ``nn.SyncBatchNorm.convert_sync_batchnorm`` does it (same parameters and
        buffers, shared; the train/eval mode and ``qconfig`` kept; children converted
        too) but keeping a fastdl layer's activation and ``negative_slope``. Returns
        ``module`` itself, converted in place below it, unless ``module`` is a batch
        norm. Raises ``ValueError``, converting nothing, where a lazy batch norm is not
        yet initialised (run one forward first): its size is not known yet."""
        for name, sub in module.named_modules():
            if (isinstance(sub, nn.modules.batchnorm._BatchNorm)
                    and isinstance(sub, nn.modules.lazy.LazyModuleMixin)):
                raise ValueError(
                    "fastdl.SyncBatchNorm.convert_sync_batchnorm: module: expected batch "
                    f"norms of known size, got an uninitialised {type(sub).__name__} at "
                    f"{name or 'the top'!r} (run a forward pass first)")
        return cls._convert(module, process_group)

    @classmethod
    def _convert(cls, module: nn.Module, process_group) -> nn.Module:
        converted = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            fused = isinstance(module, _FusedBatchNorm)  # other subclasses' fields are theirs
            activation = module.activation if fused else "none"
            negative_slope = module.negative_slope if fused else 0.01
            converted = cls.from_batch_norm(module, activation, negative_slope)
            converted.process_group = process_group
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls._convert(child, process_group))
        return converted

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _process_group(self):
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    @leaf_forward
    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        self._check_input_dim(input)
        group = self._process_group()
        batch_stats, running_mean, running_var, momentum = self._statistics_args()
        if group is None or not batch_stats:
            return ops.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                  batch_stats, momentum, self.eps, self.activation,
                                  self.negative_slope, residual)
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, residual, running_mean,
                                            running_var, momentum, self.eps, self.activation,
                                            self.negative_slope, group)


def _all_gather(tensor: Tensor, group) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return torch.stack(parts)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Statistics gathered from every process and merged exactly (count-weighted
    means, then m2 + count * (mean_p - mean)^2), so the result is that of the
    concatenated batch; in backward the two gradient sums are all-reduced. Weight and
    bias gradients stay per-process, as in ``nn.SyncBatchNorm`` (DDP averages them)."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, momentum, eps,
                activation, negative_slope, group):
        mean, var = torch.ops.fastdl.batch_norm_stats.default(input)
        count = input.numel() // input.shape[1]
        local = torch.cat([mean.new_tensor([count]).double(), mean.double(),
                           var.double() * count])
        gathered = _all_gather(local, group)
        counts, means, m2s = gathered[:, :1], gathered[:, 1:1 + mean.numel()], \
            gathered[:, 1 + mean.numel():]
        total = int(counts.sum().item())
        if total == 1:
            raise ValueError("fastdl.SyncBatchNorm: expected more than 1 value per channel when "
                             f"training, got {total} across the process group")
        global_mean = (counts * means).sum(0) / max(total, 1)
        global_var = (m2s + counts * (means - global_mean) ** 2).sum(0) / max(total, 1)
        mean, var = global_mean.to(mean.dtype), global_var.to(var.dtype)
        update_running_stats(running_mean, running_var, mean, var, total, momentum)
        output = torch.ops.fastdl.batch_norm_act.default(input, mean, var, weight, bias,
                                                         residual, eps, activation,
                                                         negative_slope)
        ctx.save_for_backward(input, weight, bias, residual, mean, var)
        ctx.args = (eps, activation, negative_slope)
        ctx.group, ctx.total = group, total
        return output

    @staticmethod
    def backward(ctx, grad_output):
        # The two backward passes as separate ops, the sums all-reduced in between
        # (single-process autograd runs both inside batch_norm_act_backward).
        input, weight, bias, residual, mean, var = ctx.saved_tensors
        eps, activation, negative_slope = ctx.args
        need_input, need_weight, need_bias, need_residual = ctx.needs_input_grad[:4]
        # With a residual, the first pass also writes dz: the residual's gradient, and
        # all the second pass needs of grad_output and residual.
        write_dz = residual is not None and (need_input or need_residual)
        sum_dz, sum_dz_xmu, dz = torch.ops.fastdl.batch_norm_act_backward_reduce.default(
            grad_output, input, mean, var, weight, bias, residual, eps, activation,
            negative_slope, write_dz)
        grad_weight = grad_bias = grad_input = None
        if need_weight and weight is not None:
            grad_weight = (sum_dz_xmu * torch.rsqrt(var + eps)).to(weight.dtype)
        if need_bias and bias is not None:
            grad_bias = sum_dz.to(bias.dtype)
        if need_input:
            sums = torch.cat([sum_dz, sum_dz_xmu])
            dist.all_reduce(sums, group=ctx.group)
            mean_dz, mean_dz_xmu = (sums / ctx.total).chunk(2)
            grad_input, _ = torch.ops.fastdl.batch_norm_act_backward_input.default(
                dz if write_dz else grad_output, input, mean, var, weight, bias,
                None if write_dz else residual, mean_dz, mean_dz_xmu, eps,
                "none" if write_dz else activation, negative_slope, [True, False])
        grad_residual = dz if need_residual and residual is not None else None
        return (grad_input, grad_weight, grad_bias, grad_residual,
                None, None, None, None, None, None, None)
