"""Attention: fastdl.ops.attention vs F.scaled_dot_product_attention on GPT-2, BERT and
Llama-style heads (forward, forward+backward, causal, key-padding mask, GQA, dropout)
and KV-cache decoding.

    pytest benchmarks/bench_attention.py --benchmark-only --benchmark-json=attention.json
    python benchmarks/report.py attention.json
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("attention"), ids=lambda c: c.title)
def test_attention(benchmark, device, case, impl):
    if device.type not in case.devices:
        pytest.skip(f"{case.title} runs on {', '.join(case.devices)} only")
    benchmark_case(benchmark, case, device, impl)
