"""LSTM cell: fastdl.nn.LSTMCell vs nn.LSTMCell, one step,
char-LM sizes (batch 1 and 64, hidden 256-1024), forward and forward+backward.

    pytest benchmarks/bench_lstm_cell.py --benchmark-only --benchmark-json=lstm.json
    python benchmarks/report.py lstm.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("lstm_cell"), ids=lambda c: c.title)
def test_lstm_cell(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
