"""Binary (XNOR) convolution: fastdl's packed-bit kernels vs float32 F.conv2d (oneDNN
on CPU, cuDNN on CUDA) on XNOR-Net AlexNet and ResNet-18 layer shapes, batch 1 and 16,
with and without the input's binarisation and packing.

    pytest benchmarks/bench_xnor_conv2d.py --benchmark-only --benchmark-json=xnor.json
    python benchmarks/report.py xnor.json

The CPU kernels run the popcount path of fastdl.ops.xnor_cpu_kernel_path(); force
another with FASTDL_ISA=avx2 or FASTDL_ISA=scalar.
"""

import pytest

from fastdl.bench.cases import cases_for
from fastdl.bench.runner import benchmark_case


@pytest.mark.parametrize("impl", ["fastdl", "reference"])
@pytest.mark.parametrize("case", cases_for("xnor_conv2d"), ids=lambda c: c.title)
def test_xnor_conv2d(benchmark, device, case, impl):
    benchmark_case(benchmark, case, device, impl)
