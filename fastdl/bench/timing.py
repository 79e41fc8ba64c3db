"""Interleaved timing of fastdl against its reference, for ratio tables."""

import statistics
import time
from typing import Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer sees it finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_run(fn: Callable, args: Sequence, iterations: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn(*args)
    synchronize(device)
    return (time.perf_counter() - start) / iterations


def time_pair(fastdl_fn: Callable, reference_fn: Callable, args: Sequence, device: torch.device,
              *, repeats: int = 11, min_run_seconds: float = 0.02) -> tuple[float, float]:
    """Median seconds per call of ``fastdl_fn`` and ``reference_fn`` on the same ``args``.

    Runs alternate (fastdl, reference, fastdl, ...) so that clock boosts, cache state and
    neighbours' load hit both alike. Each run repeats the call enough times to last at
    least ``min_run_seconds``.
    """
    iterations = []
    for fn in (fastdl_fn, reference_fn):
        fn(*args)  # warm up: lazy init, allocator, caches
        single = max(_time_run(fn, args, 1, device), 1e-7)
        iterations.append(max(1, int(min_run_seconds / single)))
    fastdl_times, reference_times = [], []
    for _ in range(repeats):
        fastdl_times.append(_time_run(fastdl_fn, args, iterations[0], device))
        reference_times.append(_time_run(reference_fn, args, iterations[1], device))
    return statistics.median(fastdl_times), statistics.median(reference_times)
