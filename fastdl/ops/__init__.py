"""Functional API over the compiled ops (``torch.ops.fastdl.*``)."""

from .attention import attention
from .batch_norm import batch_norm
from .depthwise_conv2d import depthwise_conv2d
from .dilated_conv import dilated_conv1d, dilated_conv2d
from .gru import gru_cell, gru_layer
from .lstm import lstm_layer
from .lstm_cell import lstm_cell
from .nms import batched_nms, nms
from .xnor_conv2d import pack_signs, xnor_conv2d, xnor_conv2d_packed, xnor_cpu_kernel_path

__all__ = ["nms", "batched_nms", "depthwise_conv2d", "batch_norm", "lstm_cell",
           "lstm_layer", "gru_cell", "gru_layer", "pack_signs", "xnor_conv2d",
           "xnor_conv2d_packed", "xnor_cpu_kernel_path", "attention", "dilated_conv2d",
           "dilated_conv1d"]
