// The batch norm kernels for CPUs without AVX2, and for float64 everywhere.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "batch_norm/batch_norm_cpu_kernels.h"

namespace fastdl::batch_norm {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "batch_norm/batch_norm_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_BATCH_NORM_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_BATCH_NORM_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::batch_norm
