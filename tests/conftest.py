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

# Ops whose results are sums over many values (batch norm statistics and gradients)
# compared with a float64 reference: float32 rounding grows with the sums' length.
TOLERANCES_VS_FLOAT64 = {
    torch.float64: TOLERANCES[torch.float64],
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# The CPU kernels reuse per-thread scratch between calls (csrc/common/thread_scratch.h);
# under test it is filled with NaN bytes each time it is handed out, so a kernel that
# reads scratch it did not write fails its parity tests instead of passing on zeros.
fastdl._C.set_scratch_poison(True)

_ISA_ORDER = ["scalar", "avx2", "avx512"]
CPU_ISAS = _ISA_ORDER[: _ISA_ORDER.index(fastdl._C.best_cpu_isa()) + 1]


@pytest.fixture(params=[pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in CPU_ISAS]
                + [pytest.param(("cuda", None), id="cuda", marks=requires_cuda)])
def device(request):
    """The device to test on. On CPU the test runs once per vector path this machine
    has (scalar, avx2, avx512), so every kernel path is covered."""
    device_type, isa = request.param
    previous = fastdl._C.cpu_isa()
    if isa is not None:
        fastdl._C.set_cpu_isa(isa)
    yield torch.device(device_type)
    fastdl._C.set_cpu_isa(previous)
