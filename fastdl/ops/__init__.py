"""Functional API over the compiled ops (``torch.ops.fastdl.*``)."""

from .batch_norm import batch_norm
from .depthwise_conv2d import depthwise_conv2d
from .lstm import lstm_layer
from .lstm_cell import lstm_cell
from .nms import batched_nms, nms

__all__ = ["nms", "batched_nms", "depthwise_conv2d", "batch_norm", "lstm_cell",
           "lstm_layer"]
