"""Dilated convolution: fastdl.ops.dilated_conv2d vs F.conv2d on DeepLab ASPP branches,
and causal fastdl.ops.dilated_conv1d vs F.pad + F.conv1d on WaveNet layers and a
10-layer stack, forward and forward+backward.

    pytest benchmarks/bench_dilated_conv.py --benchmark-only --benchmark-json=dilated.json
    python benchmarks/report.py dilated.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("dilated_conv2d", "dilated_conv1d"), ids=lambda c: c.title)
def test_dilated_conv(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
