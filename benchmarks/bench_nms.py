"""NMS: fastdl vs torchvision, same inputs, same process and threads.

    pytest benchmarks/bench_nms.py --benchmark-only --benchmark-json=nms.json
    python benchmarks/report.py nms.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case

pytest.importorskip("torchvision")


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("nms", "batched_nms"), ids=lambda c: c.title)
def test_nms(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
