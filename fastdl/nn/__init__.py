"""Drop-in ``torch.nn`` layers backed by fastdl kernels."""

from .attention import MultiheadAttention
from .batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from .depthwise import DepthwiseConv2d
from .dilated import CausalConvQueue, DilatedConv1d, DilatedConv2d
from .gru import GRU, GRUCell
from .lstm import LSTM, LSTMCell
from .xnor import BinaryLinear, XNORConv2d

__all__ = ["DepthwiseConv2d", "DilatedConv2d", "DilatedConv1d", "CausalConvQueue", "BatchNorm1d",
           "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LSTMCell", "LSTM", "GRUCell", "GRU", "XNORConv2d", "BinaryLinear",
           "MultiheadAttention"]
