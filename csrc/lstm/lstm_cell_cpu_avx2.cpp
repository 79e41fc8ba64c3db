// The LSTM cell kernels compiled for AVX2 + FMA (see csrc/common/simd/README.md).
// Everything with inline code of its own is included before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/aligned_vector.h"
#include "common/thread_scratch.h"
#include "lstm/lstm_cell_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastdl::lstm {
namespace avx2_impl {
#include "common/simd/avx2.inc"
#include "common/simd/loops.inc"
#include "common/simd/tile_product.inc"
#include "common/simd/activations.inc"
#include "lstm/lstm_cell_cpu_kernels.inc"
}  // namespace avx2_impl

FASTDL_LSTM_DEFINE_KERNELS(Avx2Kernels, avx2_impl, float)

}  // namespace fastdl::lstm

#pragma GCC pop_options
