"""The benchmark cases: one list used by ``benchmarks/`` and ``python -m fastdl``.

Each case runs fastdl and the best PyTorch path on the same inputs. Shapes come from
real models (for NMS: detector proposal counts, COCO's 80 classes).
"""

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import ops
from .inputs import detection_boxes


@dataclass(frozen=True)
class Case:
    op: str  # the fastdl op, e.g. "nms"
    name: str  # what the shape is, e.g. "5k boxes, IoU 0.5"
    reference_name: str  # the path it is compared with
    make_inputs: Callable[[torch.device], tuple]
    run: Callable  # fastdl, called as run(*inputs)
    run_reference: Callable  # the reference, same arguments
    same: Callable = torch.equal  # do the two outputs agree?
    default: bool = False  # shown by plain `python -m fastdl`
    devices: tuple = field(default=("cpu", "cuda"))

    @property
    def title(self) -> str:
        return f"{self.op}: {self.name}"


class ReferenceUnavailable(RuntimeError):
    """The reference op lives in a package that is not installed."""


def _torchvision_ops():
    try:
        import torchvision.ops
    except ImportError as e:  # an optional dependency: only the comparison needs it
        raise ReferenceUnavailable("torchvision is not installed (pip install torchvision)") from e
    return torchvision.ops


def _nms_case(n: int, threshold: float, default: bool = False) -> Case:
    def make_inputs(device):
        boxes, scores, _ = detection_boxes(n, seed=n, device=device)
        return boxes, scores, threshold

    return Case(
        op="nms",
        name=f"{n // 1000}k boxes, IoU {threshold}",
        reference_name="torchvision.ops.nms",
        make_inputs=make_inputs,
        run=ops.nms,
        run_reference=lambda *a: _torchvision_ops().nms(*a),
        default=default,
    )


def _batched_nms_case(n: int, num_classes: int, threshold: float, default: bool = False) -> Case:
    def make_inputs(device):
        boxes, scores, classes = detection_boxes(n, seed=n, device=device, num_classes=num_classes)
        return boxes, scores, classes, threshold

    return Case(
        op="batched_nms",
        name=f"{n // 1000}k boxes, {num_classes} classes, IoU {threshold}",
        reference_name="torchvision.ops.batched_nms",
        make_inputs=make_inputs,
        run=ops.batched_nms,
        run_reference=lambda *a: _torchvision_ops().batched_nms(*a),
        default=default,
    )


CASES = [
    _nms_case(1000, 0.5),
    _nms_case(5000, 0.5, default=True),
    _nms_case(20000, 0.5),
    _nms_case(5000, 0.7),
    _batched_nms_case(5000, 80, 0.5, default=True),
    _batched_nms_case(20000, 80, 0.5),
    _batched_nms_case(20000, 4, 0.5),
]


def cases_for(*op_names: str) -> list[Case]:
    return [case for case in CASES if case.op in op_names]
