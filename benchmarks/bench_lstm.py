"""LSTM: fastdl.nn.LSTMCell vs nn.LSTMCell (one step) and fastdl.nn.LSTM vs nn.LSTM
(char-LM, batch-1 inference), forward and forward+backward.

    pytest benchmarks/bench_lstm.py --benchmark-only --benchmark-json=lstm.json
    python benchmarks/report.py lstm.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("lstm_cell", "lstm"), ids=lambda c: c.title)
def test_lstm(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
