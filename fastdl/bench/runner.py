"""Glue between the cases and pytest-benchmark (used by every benchmarks/bench_*.py)."""

import torch

from .timing import synchronize


def benchmark_case(benchmark, case, device: torch.device, impl: str) -> None:
    """Time one side ("fastdl" or "reference") of `case`; results are grouped per case
    so `benchmarks/report.py` can pair them into a ratio."""
    inputs = case.make_inputs(device)
    fn = case.run if impl == "fastdl" else case.run_reference
    assert case.same(case.run(*inputs), case.run_reference(*inputs)), f"{case.title}: parity failed"
    benchmark.group = f"{case.title} [{device}]"
    benchmark.extra_info.update(op=case.op, case=case.name, device=str(device), impl=impl,
                                reference=case.reference_name, flops=case.flops)

    def call():  # synchronised, so a CUDA call is timed to its end
        out = fn(*inputs)
        synchronize(device)
        return out

    benchmark(call)
