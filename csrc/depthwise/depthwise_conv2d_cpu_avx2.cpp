// The depthwise kernels compiled for AVX2 (see csrc/common/simd/README.md).
// Everything with inline code of its own is included before the target pragma.
#include <immintrin.h>

#include "depthwise/depthwise_conv2d_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastdl::depthwise {
namespace avx2_impl {
#include "common/simd/avx2.inc"
#include "depthwise/depthwise_conv2d_cpu_kernels.inc"
}  // namespace avx2_impl

FASTDL_DEPTHWISE_DEFINE_KERNELS(Avx2Kernels, avx2_impl, float)

}  // namespace fastdl::depthwise

#pragma GCC pop_options
