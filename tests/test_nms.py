"""fastdl.ops.nms / batched_nms: parity with torchvision, edge cases, bad input, opcheck."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch

import fastdl
from fastdl.bench.inputs import detection_boxes, uniform_boxes
from conftest import CPU_ISAS, requires_cuda
from parity import assert_same_indices

torchvision_ops = pytest.importorskip("torchvision.ops")


def torchvision_nms(boxes, scores, iou_threshold):
    """torchvision's CPU NMS, fastdl's reference on every device. (torchvision's CUDA
    kernel rounds the threshold to float, so it differs when an IoU is within float
    rounding of the threshold.)"""
    return torchvision_ops.nms(boxes.cpu(), scores.cpu(), iou_threshold).to(boxes.device)


def torchvision_batched_nms(boxes, scores, idxs, iou_threshold):
    return torchvision_ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), iou_threshold).to(boxes.device)

FLOAT_DTYPES = [torch.float32, torch.float64]
THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def reference_nms(boxes, scores, iou_threshold):
    """The documented rule, written plainly: stable descending sort (NaN first), greedy."""
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices.tolist()
    b = boxes.cpu().double().tolist()
    kept = []
    for i in order:
        x1, y1, x2, y2 = b[i]
        suppressed = False
        for k in kept:
            kx1, ky1, kx2, ky2 = b[k]
            w = max(0.0, min(kx2, x2) - max(kx1, x1))
            h = max(0.0, min(ky2, y2) - max(ky1, y1))
            inter = w * h
            union = (kx2 - kx1) * (ky2 - ky1) + (x2 - x1) * (y2 - y1) - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)


# ---------------------------------------------------------------- parity with torchvision


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 255, 256, 257, 1000, 3000])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_nms_matches_torchvision(device, dtype, n, threshold):
    boxes, scores, _ = detection_boxes(n, seed=n, dtype=dtype, device=device)
    expected = torchvision_nms(boxes, scores, threshold)
    assert_same_indices(fastdl.ops.nms(boxes, scores, threshold), expected)


@pytest.mark.parametrize("n", [100, 2000])
@pytest.mark.parametrize("max_size", [5.0, 300.0])
def test_nms_matches_torchvision_uniform_boxes(device, n, max_size):
    boxes, scores = uniform_boxes(n, seed=1, device=device, max_size=max_size)
    for threshold in (0.1, 0.5):
        expected = torchvision_nms(boxes, scores, threshold)
        assert_same_indices(fastdl.ops.nms(boxes, scores, threshold), expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, num_classes", [(1, 1), (50, 3), (1000, 80), (6000, 2), (9000, 1)])
def test_batched_nms_matches_torchvision(device, dtype, n, num_classes):
    boxes, scores, classes = detection_boxes(
        n, seed=n, dtype=dtype, device=device, num_classes=num_classes
    )
    expected = torchvision_batched_nms(boxes, scores, classes, 0.5)
    assert_same_indices(fastdl.ops.batched_nms(boxes, scores, classes, 0.5), expected)


def test_batched_nms_class_ids_any_int64_and_int32(device):
    boxes, scores, classes = detection_boxes(500, seed=3, device=device, num_classes=7)
    odd_ids = torch.tensor([-(2**62), -5, 0, 3, 2**40, 2**62, 99], device=device)[classes]
    # torchvision's default path offsets boxes by class id in float, which loses the
    # boxes for ids this large; its per-class path is the exact reference.
    from torchvision.ops.boxes import _batched_nms_vanilla

    expected = _batched_nms_vanilla(boxes.cpu(), scores.cpu(), odd_ids.cpu(), 0.5).to(device)
    assert_same_indices(fastdl.ops.batched_nms(boxes, scores, odd_ids, 0.5), expected)
    as_int32 = fastdl.ops.batched_nms(boxes, scores, classes.int(), 0.5)
    assert_same_indices(as_int32, torchvision_batched_nms(boxes, scores, classes, 0.5))


def test_batched_nms_classes_never_suppress_each_other(device):
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    boxes = box.repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    classes = torch.tensor([0, 1, 0, 1], device=device)
    kept = fastdl.ops.batched_nms(boxes, scores, classes, 0.5)
    assert kept.tolist() == [0, 1]


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_half_precision_on_cuda(dtype):
    boxes, scores, classes = detection_boxes(2000, seed=5, device="cuda", num_classes=10)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    # Compared with the documented rule on the same (rounded) inputs: half-precision
    # scores have ties, which torchvision's CUDA sort does not order stably.
    assert_same_indices(fastdl.ops.nms(boxes, scores, 0.5), reference_nms(boxes, scores, 0.5))
    assert fastdl.ops.batched_nms(boxes, scores, classes, 0.5).numel() > 0


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_boxes(device, dtype):
    boxes = torch.empty(0, 4, dtype=dtype, device=device)
    scores = torch.empty(0, dtype=dtype, device=device)
    for kept in (
        fastdl.ops.nms(boxes, scores, 0.5),
        fastdl.ops.batched_nms(boxes, scores, torch.empty(0, dtype=torch.long, device=device), 0.5),
    ):
        assert kept.shape == (0,) and kept.dtype == torch.long and kept.device == device


def test_one_box(device):
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]], device=device)
    scores = torch.tensor([0.3], device=device)
    assert fastdl.ops.nms(boxes, scores, 0.5).tolist() == [0]
    assert fastdl.ops.batched_nms(boxes, scores, torch.tensor([7], device=device), 0.5).tolist() == [0]


@pytest.mark.parametrize("n", [5, 40])
def test_identical_boxes(device, n):
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0]], device=device).repeat(n, 1)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)
    best = int(scores.argmax())
    assert fastdl.ops.nms(boxes, scores, 0.5).tolist() == [best]
    assert fastdl.ops.nms(boxes, scores, 0.0).tolist() == [best]
    # IoU is exactly 1, which is not greater than 1: nothing is suppressed.
    kept = fastdl.ops.nms(boxes, scores, 1.0)
    assert_same_indices(kept, torch.sort(scores, descending=True, stable=True).indices)


def test_degenerate_boxes_are_never_suppressed_and_never_suppress(device):
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # normal box
            [5.0, 5.0, 5.0, 5.0],  # a point inside it
            [0.0, 0.0, 10.0, 0.0],  # a zero-height line on its edge
            [5.0, 5.0, 5.0, 5.0],  # the same point again
            [0.0, 0.0, 10.0, 10.0],  # duplicate of the first
        ],
        device=device,
    )
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7, 0.4], device=device)
    kept = fastdl.ops.nms(boxes, scores, 0.0)
    assert kept.tolist() == [1, 2, 3, 0]
    assert_same_indices(kept, torchvision_nms(boxes, scores, 0.0))


def test_threshold_zero_suppresses_any_overlap(device):
    boxes = torch.tensor([[0.0, 0, 10, 10], [9.9, 9.9, 20, 20], [10.0, 0, 20, 10]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    # Box 2 only touches box 0 along an edge: zero intersection, kept.
    assert fastdl.ops.nms(boxes, scores, 0.0).tolist() == [0, 2]


def test_threshold_is_compared_strictly_and_exactly(device):
    # IoU of these two boxes is exactly 0.5 in binary floating point.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    assert fastdl.ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert fastdl.ops.nms(boxes, scores, math.nextafter(0.5, 0.0)).tolist() == [0]
    # 1/3 in float32 is above the double 1/3: the box goes, as in torchvision.
    third = torch.tensor([[0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]], device=device)
    assert fastdl.ops.nms(third, scores, 1 / 3).tolist() == torchvision_nms(third, scores, 1 / 3).tolist() == [0]


def test_ties_are_broken_by_lower_index(device):
    boxes, _ = uniform_boxes(300, seed=7, device=device, max_size=200)
    scores = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(7)).float().to(device)
    scores[::7] = -0.0  # -0.0 ties with 0.0
    scores[1::7] = 0.0
    kept = fastdl.ops.nms(boxes, scores, 0.3)
    assert_same_indices(kept, reference_nms(boxes, scores, 0.3))
    # Same boxes, every score equal: the visiting order is the index order.
    flat = torch.full_like(scores, 0.5)
    assert_same_indices(fastdl.ops.nms(boxes, flat, 0.3), reference_nms(boxes, flat, 0.3))


@pytest.mark.parametrize("nan", [float("nan"), -float("nan")], ids=["nan", "negative_nan"])
def test_nan_scores_come_first(device, nan):
    # Negative NaN (x86's 0 * inf) too: CUDA's radix sort would otherwise put it last.
    boxes, scores = uniform_boxes(200, seed=11, device=device, max_size=150)
    scores[[3, 50, 120]] = nan
    kept = fastdl.ops.nms(boxes, scores, 0.5)
    assert kept[:3].tolist() == [3, 50, 120]
    assert_same_indices(kept, reference_nms(boxes, scores, 0.5))
    classes = torch.zeros(200, dtype=torch.long, device=device)
    assert_same_indices(fastdl.ops.batched_nms(boxes, scores, classes, 0.5), kept)


def test_non_contiguous_inputs(device):
    boxes, scores, classes = detection_boxes(800, seed=2, device=device, num_classes=5)
    strided_boxes = torch.empty(4, 800, device=device).t()  # column-major view
    strided_boxes.copy_(boxes)
    strided_scores = torch.stack([scores, scores], dim=1)[:, 1]
    strided_classes = torch.stack([classes, classes], dim=1)[:, 0]
    assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
    assert_same_indices(
        fastdl.ops.nms(strided_boxes, strided_scores, 0.5), torchvision_nms(boxes, scores, 0.5)
    )
    assert_same_indices(
        fastdl.ops.batched_nms(strided_boxes, strided_scores, strided_classes, 0.5),
        torchvision_batched_nms(boxes, scores, classes, 0.5),
    )


def test_every_cpu_path_keeps_the_same_boxes():
    boxes, scores, classes = detection_boxes(4000, seed=9, num_classes=3)
    per_isa = []
    for isa in CPU_ISAS:
        fastdl._C.set_cpu_isa(isa)
        per_isa.append((fastdl.ops.nms(boxes, scores, 0.6), fastdl.ops.batched_nms(boxes, scores, classes, 0.6)))
    fastdl._C.set_cpu_isa(fastdl._C.best_cpu_isa())
    for kept, kept_batched in per_isa[1:]:
        assert_same_indices(kept, per_isa[0][0])
        assert_same_indices(kept_batched, per_isa[0][1])


# ---------------------------------------------------------------- bad input


def _valid(device="cpu"):
    boxes, scores, classes = detection_boxes(10, device=device, num_classes=2)
    return boxes, scores, classes


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda b, s, c: (b[:, :3], s, c), ValueError,
         r"fastdl.nms: boxes must have shape \(N, 4\), got \(10, 3\)"),
        (lambda b, s, c: (torch.zeros(10, 5), s, c), ValueError,
         r"fastdl.nms: boxes must have shape \(N, 4\), got \(10, 5\)"),
        (lambda b, s, c: (b.reshape(-1), s, c), ValueError,
         r"fastdl.nms: boxes must have shape \(N, 4\), got \(40,\)"),
        (lambda b, s, c: (b, s[:, None], c), ValueError,
         r"fastdl.nms: scores must have shape \(N,\), got \(10, 1\)"),
        (lambda b, s, c: (b, s[:9], c), ValueError,
         r"fastdl.nms: boxes and scores must have the same number of entries along dimension 0, "
         r"got 10 and 9"),
        (lambda b, s, c: (b, s.double(), c), TypeError,
         r"fastdl.nms: boxes and scores must have the same dtype, got torch.float32 and torch.float64"),
        (lambda b, s, c: (b.half(), s.half(), c), TypeError,
         r"fastdl.nms: boxes must be torch.float32 or torch.float64 on CPU, got torch.float16"),
        (lambda b, s, c: (b.long(), s.long(), c), TypeError,
         r"fastdl.nms: boxes must be torch.float32 or torch.float64 on CPU, got torch.int64"),
    ],
)
def test_nms_bad_input(mutate, error, message):
    boxes, scores, classes = mutate(*_valid())
    with pytest.raises(error, match=message):
        fastdl.ops.nms(boxes, scores, 0.5)
    with pytest.raises(error, match=message.replace("fastdl.nms", "fastdl.batched_nms")):
        fastdl.ops.batched_nms(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.long), 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_threshold(threshold):
    boxes, scores, classes = _valid()
    with pytest.raises(ValueError, match=r"fastdl.nms: iou_threshold must be in \[0, 1\], got"):
        fastdl.ops.nms(boxes, scores, threshold)
    with pytest.raises(ValueError, match=r"fastdl.batched_nms: iou_threshold must be in \[0, 1\]"):
        fastdl.ops.batched_nms(boxes, scores, classes, threshold)


@pytest.mark.parametrize(
    "idxs, error, message",
    [
        (torch.zeros(10), TypeError,
         r"fastdl.batched_nms: idxs must be torch.int64 or torch.int32, got torch.float32"),
        (torch.zeros(10, 1, dtype=torch.long), ValueError,
         r"fastdl.batched_nms: idxs must have shape \(N,\), got \(10, 1\)"),
        (torch.zeros(9, dtype=torch.long), ValueError,
         r"fastdl.batched_nms: boxes and idxs must have the same number of entries along "
         r"dimension 0, got 10 and 9"),
    ],
)
def test_batched_nms_bad_idxs(idxs, error, message):
    boxes, scores, _ = _valid()
    with pytest.raises(error, match=message):
        fastdl.ops.batched_nms(boxes, scores, idxs, 0.5)


def test_tensors_on_different_devices():
    boxes, scores, classes = _valid()
    with pytest.raises(RuntimeError, match="fastdl.nms: boxes and scores must be on the same "
                       "device, got cpu and meta"):
        fastdl.ops.nms(boxes, scores.to("meta"), 0.5)
    with pytest.raises(RuntimeError, match="fastdl.batched_nms: boxes and idxs must be on the "
                       "same device, got cpu and meta"):
        fastdl.ops.batched_nms(boxes, scores, classes.to("meta"), 0.5)


def test_cuda_tensors_without_cuda_kernels():
    if fastdl._C.cuda_compiled or not torch.cuda.is_available():
        pytest.skip("needs a CUDA device and a build without CUDA kernels")
    boxes, scores, _ = _valid("cuda")
    with pytest.raises(RuntimeError, match="fastdl.nms: boxes is on cuda:0, but this fastdl build "
                       "has no CUDA kernels"):
        fastdl.ops.nms(boxes, scores, 0.5)


def test_direct_dispatcher_call_checks_devices_too():
    # Checks live in the kernels as well, for callers of torch.ops.fastdl.* directly.
    boxes, scores, _ = _valid()
    with pytest.raises(ValueError, match=r"fastdl.nms: boxes must have shape \(N, 4\)"):
        torch.ops.fastdl.nms(boxes[:, :2], scores, 0.5)


# ---------------------------------------------------------------- op registration, compile


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_opcheck(device, dtype):
    boxes, scores, classes = detection_boxes(300, seed=4, dtype=dtype, device=device, num_classes=4)
    torch.library.opcheck(torch.ops.fastdl.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.fastdl.batched_nms.default, (boxes, scores, classes, 0.5))


def test_torch_compile_fullgraph(device):
    def detect(boxes, scores, classes):
        keep = fastdl.ops.batched_nms(boxes, scores, classes, 0.5)
        return boxes[keep], scores[keep]

    compiled = torch.compile(detect, fullgraph=True, backend="aot_eager")
    boxes, scores, classes = detection_boxes(600, seed=8, device=device, num_classes=3)
    actual = compiled(boxes, scores, classes)
    expected = detect(boxes, scores, classes)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_torch_compile_inductor_cpu():
    compiled = torch.compile(lambda b, s: b[fastdl.ops.nms(b, s, 0.5)] * 2, fullgraph=True)
    boxes, scores, _ = detection_boxes(300, seed=10)
    torch.testing.assert_close(compiled(boxes, scores), boxes[fastdl.ops.nms(boxes, scores, 0.5)] * 2)


# ---------------------------------------------------------------- environment and versions


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)


def test_fastdl_isa_env_forces_a_path():
    done = _python("import fastdl; print(fastdl._C.cpu_isa())", FASTDL_ISA="scalar")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scalar"


def test_fastdl_isa_env_rejects_unknown_path():
    done = _python("import fastdl", FASTDL_ISA="sse9")
    assert done.returncode != 0
    assert "fastdl: CPU ISA must be one of scalar, avx2, avx512, got 'sse9'" in done.stderr


def test_set_cpu_isa_rejects_unknown_path():
    with pytest.raises(ValueError, match="fastdl: CPU ISA must be one of scalar, avx2, avx512, got 'neon'"):
        fastdl._C.set_cpu_isa("neon")


def test_import_against_other_torch_names_both_versions(monkeypatch):
    monkeypatch.setattr(fastdl._build_info, "TORCH_VERSION", "2.0.0+other")
    message = f"fastdl was built against torch 2.0.0+other, but torch {torch.__version__} is installed"
    with pytest.raises(ImportError, match=re.escape(message)):
        fastdl._load_extension()
