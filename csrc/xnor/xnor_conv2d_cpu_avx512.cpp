// The binary convolution kernels for AVX-512 with VPOPCNTDQ (Ice Lake, Zen 4 and
// later): xor, popcount and add on 8 words per instruction. Chosen only when the
// CPU reports avx512vpopcntdq; other AVX-512 CPUs run the AVX2 kernels.
// GCC 12's own AVX-512 headers trip -W(maybe-)uninitialized (_mm512_undefined_epi32).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "xnor/xnor_conv2d_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,fma,popcnt")

namespace fastdl::xnor {
namespace avx512_impl {

struct Bits {
  using Reg = __m512i;
  static constexpr int64_t kLanes = 8;
  // 24 accumulators + 3 pixel vectors + the broadcast word of the 32 zmm registers.
  static constexpr int kVectors = 3, kChannels = 8;

  static Reg zero() { return _mm512_setzero_si512(); }
  static Reg load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static Reg broadcast(uint64_t word) { return _mm512_set1_epi64(static_cast<long long>(word)); }
  static Reg accumulate(Reg acc, Reg a, Reg b) {
    return _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(a, b)));
  }
  static void store(int32_t* p, Reg acc) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32(acc));
  }
  static int64_t popcount(uint64_t word) { return __builtin_popcountll(word); }  // POPCNT
};

#include "xnor/xnor_conv2d_cpu_kernels.inc"

}  // namespace avx512_impl

FASTDL_XNOR_DEFINE_KERNELS(Avx512Kernels, avx512_impl)

}  // namespace fastdl::xnor

#pragma GCC pop_options
