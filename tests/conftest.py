"""Shared test setup: dtype tolerances, device and CPU-ISA parametrisation."""

import pytest
import torch

import fastdl

# Tolerances for float comparisons with a reference op, stated once for every test.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
}

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]

_ISA_ORDER = ["scalar", "avx2", "avx512"]
CPU_ISAS = _ISA_ORDER[: _ISA_ORDER.index(fastdl._C.best_cpu_isa()) + 1]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Run the test once per CPU vector path this machine has."""
    previous = fastdl._C.cpu_isa()
    fastdl._C.set_cpu_isa(request.param)
    yield request.param
    fastdl._C.set_cpu_isa(previous)
