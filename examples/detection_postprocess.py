"""Detector post-processing, SSD300-style: decode 8732 anchors' box deltas for 80
classes, keep scores above 0.05, then per-class NMS (IoU 0.5) with
fastdl.ops.batched_nms against torchvision.ops.batched_nms: the same kept boxes,
and the time per image of each.

    python examples/detection_postprocess.py            # about ten seconds
    python examples/detection_postprocess.py --quick    # smoke run

Synthetic network outputs (no model, no download): anchors on SSD300's six feature
maps, and deltas/logits drawn so that a few hundred detections per image survive the
score threshold, as with a trained detector.
"""

import argparse
import math
import time

import torch
import torchvision

import fastdl

FEATURE_MAPS = [(38, 4), (19, 6), (10, 6), (5, 6), (3, 4), (1, 4)]  # (size, anchors per cell)
NUM_CLASSES = 80


def ssd_anchors() -> torch.Tensor:
    """(8732, 4) anchors as (cx, cy, w, h) in [0, 1], SSD300's layout."""
    anchors = []
    for k, (size, per_cell) in enumerate(FEATURE_MAPS):
        scale = 0.1 + 0.8 * k / (len(FEATURE_MAPS) - 1)
        ratios = [1.0, 2.0, 0.5, 3.0, 1 / 3][: per_cell - 1]
        for i in range(size):
            for j in range(size):
                cx, cy = (j + 0.5) / size, (i + 0.5) / size
                anchors.append([cx, cy, scale, scale])
                anchors.append([cx, cy, scale * 1.2, scale * 1.2])
                for r in ratios[1:]:
                    anchors.append([cx, cy, scale * math.sqrt(r), scale / math.sqrt(r)])
    return torch.tensor(anchors)


def network_outputs(images: int, anchors: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    deltas = torch.randn(images, anchors, 4, generator=g) * 0.1
    logits = torch.randn(images, anchors, NUM_CLASSES, generator=g) - 6.0
    return deltas, logits


def decode(anchors: torch.Tensor, deltas: torch.Tensor, logits: torch.Tensor):
    """Boxes (x1, y1, x2, y2) in 300x300 pixels, scores and labels above 0.05."""
    cxcy = anchors[:, :2] + deltas[:, :2] * 0.1 * anchors[:, 2:]
    wh = anchors[:, 2:] * torch.exp(deltas[:, 2:] * 0.2)
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=1) * 300
    scores = torch.sigmoid(logits)
    anchor_index, labels = (scores > 0.05).nonzero(as_tuple=True)
    return boxes[anchor_index], scores[anchor_index, labels], labels


def per_class_nms(boxes, scores, labels):
    keep = [index[torchvision.ops.nms(boxes[index], scores[index], 0.5)]
            for index in (torch.nonzero(labels == c).squeeze(1) for c in labels.unique())]
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def same_detections(a, b, scores) -> bool:
    """The same kept boxes in the same score order (boxes of different classes with
    equal scores may come in either order: torchvision sorts with an unstable sort)."""
    return torch.equal(a.sort().values, b.sort().values) and torch.equal(scores[a], scores[b])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two images, one timing run")
    args = parser.parse_args()
    images, repeats = (2, 1) if args.quick else (16, 5)

    anchors = ssd_anchors()
    deltas, logits = network_outputs(images, len(anchors))
    decoded = [decode(anchors, deltas[i], logits[i]) for i in range(images)]
    counts = [len(boxes) for boxes, _, _ in decoded]

    # The definition of batched NMS: NMS within each class. torchvision.ops.batched_nms
    # computes it by offsetting each class's boxes far apart, which rounds their
    # coordinates: a pair at IoU exactly 0.5 can then fall either side of the
    # threshold, so that is compared too, but only reported.
    same, offset_differs = True, 0
    for boxes, scores, labels in decoded:
        ours = fastdl.ops.batched_nms(boxes, scores, labels, 0.5)
        same &= same_detections(ours, per_class_nms(boxes, scores, labels), scores)
        offset_differs += not same_detections(
            ours, torchvision.ops.batched_nms(boxes, scores, labels, 0.5), scores)

    timings = {}
    for name, nms in (("fastdl", fastdl.ops.batched_nms),
                      ("torchvision", torchvision.ops.batched_nms)):
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            for boxes, scores, labels in decoded:
                nms(boxes, scores, labels, 0.5)[:100]
            best = min(best, time.perf_counter() - start)
        timings[name] = best / images

    print(f"{len(anchors)} anchors x {NUM_CLASSES} classes, {images} images, "
          f"{min(counts)}-{max(counts)} detections per image above score 0.05")
    print(f"per-image batched NMS (IoU 0.5): fastdl {timings['fastdl'] * 1e3:.2f} ms, "
          f"torchvision {timings['torchvision'] * 1e3:.2f} ms, "
          f"{timings['torchvision'] / timings['fastdl']:.1f}x")
    print(f"parity: {'ok' if same else 'MISMATCH'} against per-class torchvision.ops.nms "
          "(same kept boxes, same score order); torchvision.ops.batched_nms's class-offset "
          f"rounding gave other boxes on {offset_differs} of {images} images")


if __name__ == "__main__":
    main()
