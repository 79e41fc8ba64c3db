"""Fused batch norm: fastdl BatchNorm2d(activation="relu") vs nn.BatchNorm2d + (add) + ReLU
on ResNet-50 stage shapes, NCHW and channels_last, training and inference.

    pytest benchmarks/bench_batch_norm.py --benchmark-only --benchmark-json=bn.json
    python benchmarks/report.py bn.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("batch_norm"), ids=lambda c: c.title)
def test_batch_norm(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
