// The dilated convolution kernels for CPUs without AVX2, and for float64 everywhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "dilated_conv/dilated_conv_cpu_kernels.h"

namespace fastdl::dilated_conv {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "dilated_conv/dilated_conv_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_DILATED_CONV_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_DILATED_CONV_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::dilated_conv
