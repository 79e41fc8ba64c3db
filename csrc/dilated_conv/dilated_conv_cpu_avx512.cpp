// The dilated convolution kernels compiled for AVX-512 (see csrc/common/simd/README.md).
// Everything with inline code of its own is included before the target pragma.
// GCC 12's own AVX-512 headers trip -W(maybe-)uninitialized (_mm512_undefined_ps).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "dilated_conv/dilated_conv_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")

namespace fastdl::dilated_conv {
namespace avx512_impl {
#include "common/simd/avx512.inc"
#include "common/simd/loops.inc"
#include "dilated_conv/dilated_conv_cpu_kernels.inc"
#include "dilated_conv/dilated_conv_cpu_winograd.inc"
}  // namespace avx512_impl

FASTDL_DILATED_CONV_DEFINE_KERNELS(Avx512Kernels, avx512_impl, float)

}  // namespace fastdl::dilated_conv

#pragma GCC pop_options
