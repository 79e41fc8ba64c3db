"""Drop-in ``torch.nn`` layers backed by fastdl kernels."""

from .depthwise import DepthwiseConv2d

__all__ = ["DepthwiseConv2d"]
