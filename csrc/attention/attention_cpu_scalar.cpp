// The attention kernels for CPUs without AVX2, and for float64 everywhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attention/attention_cpu_kernels.h"

namespace fastdl::attention {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "attention/attention_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_ATTENTION_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_ATTENTION_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::attention
