// The LSTM cell kernels compiled for AVX-512 (see csrc/common/simd/README.md).
// Everything with inline code of its own is included before the target pragma.
// GCC 12's own AVX-512 headers trip -W(maybe-)uninitialized (_mm512_undefined_ps).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/aligned_vector.h"
#include "common/thread_scratch.h"
#include "lstm/lstm_cell_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")

namespace fastdl::lstm {
namespace avx512_impl {
#include "common/simd/avx512.inc"
#include "common/simd/loops.inc"
#include "common/simd/tile_product.inc"
#include "common/simd/activations.inc"
#include "lstm/lstm_cell_cpu_kernels.inc"
}  // namespace avx512_impl

FASTDL_LSTM_DEFINE_KERNELS(Avx512Kernels, avx512_impl, float)

}  // namespace fastdl::lstm

#pragma GCC pop_options
