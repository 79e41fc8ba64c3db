// The depthwise kernels for CPUs without AVX2, and for float64 everywhere.
#include <cmath>

#include "depthwise/depthwise_conv2d_cpu_kernels.h"

namespace fastdl::depthwise {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "depthwise/depthwise_conv2d_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_DEPTHWISE_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_DEPTHWISE_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::depthwise
