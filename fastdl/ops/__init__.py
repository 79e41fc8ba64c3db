"""Functional API over the compiled ops (``torch.ops.fastdl.*``)."""

from .nms import batched_nms, nms

__all__ = ["nms", "batched_nms"]
