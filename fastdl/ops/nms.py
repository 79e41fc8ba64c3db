"""Non-maximum suppression: ``nms`` and per-class ``batched_nms``.

Semantics are torchvision's (``torchvision.ops.nms`` / ``batched_nms``):

* boxes are ``(x1, y1, x2, y2)`` with ``0 <= x1 < x2`` and ``0 <= y1 < y2`` expected;
* boxes are visited in order of decreasing score; a box is dropped when its IoU with
  an already kept box is greater than ``iou_threshold`` (strictly);
* the result holds the indices of the kept boxes (int64), by decreasing score.

Ordering rule (deterministic): scores are ordered as ``torch.sort(descending=True,
stable=True)`` orders them. Equal scores are visited lower index first (``-0.0`` equals
``0.0``), and NaN scores count as larger than every number, so NaN-scored boxes come
first, lowest index first.

Degenerate (zero-area) boxes have IoU 0 with everything (0/0 is not greater than any
threshold), so they are never suppressed and never suppress.

IoU is computed in the boxes' dtype (float32 for float16/bfloat16 boxes) and compared
with the threshold exactly, as torchvision's CPU kernel does.

dtypes: float32 and float64 on CPU and CUDA; float16 and bfloat16 on CUDA.
"""

import torch
from torch import Tensor

from ._utils import check_device


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` boxes as ``(x1, y1, x2, y2)``.
        scores: ``(N,)`` scores, same dtype and device as ``boxes``.
        iou_threshold: in ``[0, 1]``; boxes overlapping a kept box with IoU greater than
            this are discarded.

    Returns:
        int64 tensor with the indices of the kept boxes, by decreasing score.
    """
    check_device("nms", boxes=boxes, scores=scores)
    return torch.ops.fastdl.nms.default(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression applied independently per category.

    Boxes of different categories (``idxs``) never suppress each other. The cost is
    the sum over categories of the squared category size, not the square of ``N``.

    Args:
        boxes: ``(N, 4)`` boxes as ``(x1, y1, x2, y2)``.
        scores: ``(N,)`` scores, same dtype and device as ``boxes``.
        idxs: ``(N,)`` int64 (or int32) category of each box.
        iou_threshold: in ``[0, 1]``.

    Returns:
        int64 tensor with the indices of the kept boxes, by decreasing score.
    """
    check_device("batched_nms", boxes=boxes, scores=scores, idxs=idxs)
    return torch.ops.fastdl.batched_nms.default(boxes, scores, idxs, float(iou_threshold))


def _kept_indices_like(boxes: Tensor) -> Tensor:
    # The number of kept boxes depends on the data: an unbacked symbolic size.
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.long)


@torch.library.register_fake("fastdl::nms")
def _nms_fake(boxes, scores, iou_threshold):
    return _kept_indices_like(boxes)


@torch.library.register_fake("fastdl::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _kept_indices_like(boxes)
