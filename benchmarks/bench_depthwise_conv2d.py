"""Depthwise convolution: fastdl vs F.conv2d(groups=C) on MobileNetV2 and ConvNeXt
shapes, NCHW and channels_last, forward and forward+backward, batch 1 and 32.

    pytest benchmarks/bench_depthwise_conv2d.py --benchmark-only --benchmark-json=dw.json
    python benchmarks/report.py dw.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("depthwise_conv2d"), ids=lambda c: c.title)
def test_depthwise_conv2d(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
