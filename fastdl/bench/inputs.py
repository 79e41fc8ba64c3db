"""Deterministic input generators, shared by tests, benchmarks and ``python -m fastdl``."""

import torch


def detection_boxes(n: int, *, seed: int = 0, dtype=torch.float32, device="cpu", num_classes=1):
    """Detector-like proposals: ``n`` boxes jittered around ``n // 20`` objects.

    Returns ``(boxes, scores, classes)``. Scores are a permutation of distinct values,
    so there are no ties (exact for float32/float64 up to 2**24 boxes).
    """
    g = torch.Generator().manual_seed(seed)
    num_objects = max(1, n // 20)
    centers = torch.rand(num_objects, 2, generator=g, dtype=torch.float64) * 1000
    sizes = 16 + torch.rand(num_objects, 2, generator=g, dtype=torch.float64) * 240
    owner = torch.randint(num_objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.15
    center = centers[owner] + jitter[:, :2] * sizes[owner]
    half = sizes[owner] * torch.exp(jitter[:, 2:]) / 2
    boxes = torch.cat([center - half, center + half], dim=1)
    scores = (torch.randperm(n, generator=g, dtype=torch.float64) + 0.5) / max(n, 1)
    classes = torch.randint(num_classes, (n,), generator=g)
    return boxes.to(device, dtype), scores.to(device, dtype), classes.to(device)


def uniform_boxes(n: int, *, seed: int = 0, dtype=torch.float32, device="cpu", max_size=100.0):
    """Boxes with uniform corners in [0, 1000) and sides in (0, max_size]; distinct scores."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
    side = (1 - torch.rand(n, 2, generator=g, dtype=torch.float64)) * max_size
    boxes = torch.cat([corner, corner + side], dim=1)
    scores = (torch.randperm(n, generator=g, dtype=torch.float64) + 0.5) / max(n, 1)
    return boxes.to(device, dtype), scores.to(device, dtype)
