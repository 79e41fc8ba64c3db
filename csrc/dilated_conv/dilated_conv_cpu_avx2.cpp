// The dilated convolution kernels compiled for AVX2 + FMA (see csrc/common/simd/README.md).
// Everything with inline code of its own is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "dilated_conv/dilated_conv_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastdl::dilated_conv {
namespace avx2_impl {
#include "common/simd/avx2.inc"
#include "common/simd/loops.inc"
#include "dilated_conv/dilated_conv_cpu_kernels.inc"
#include "dilated_conv/dilated_conv_cpu_winograd.inc"
}  // namespace avx2_impl

FASTDL_DILATED_CONV_DEFINE_KERNELS(Avx2Kernels, avx2_impl, float)

}  // namespace fastdl::dilated_conv

#pragma GCC pop_options
