"""GRU: fastdl.nn.GRU vs nn.GRU (char-LM, batch-1 inference), forward and
forward+backward.

    pytest benchmarks/bench_gru.py --benchmark-only --benchmark-json=gru.json
    python benchmarks/report.py gru.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("gru"), ids=lambda c: c.title)
def test_gru(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
