// The binary convolution kernels for AVX2 (see csrc/common/simd/README.md for the
// one-file-per-ISA scheme). AVX2 has no vector popcount: each byte's count comes
// from two 4-bit table lookups (vpshufb), and vpsadbw sums the bytes into the four
// 64-bit lanes (Mula's method).
#include <immintrin.h>

#include "xnor/xnor_conv2d_cpu_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,popcnt")

namespace fastdl::xnor {
namespace avx2_impl {

struct Bits {
  using Reg = __m256i;
  static constexpr int64_t kLanes = 4;
  // 8 accumulators + 1 pixel vector + the broadcast word, table, nibble mask and
  // temporaries fit the 16 ymm registers.
  static constexpr int kVectors = 1, kChannels = 8;

  static Reg zero() { return _mm256_setzero_si256(); }
  static Reg load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Reg broadcast(uint64_t word) { return _mm256_set1_epi64x(static_cast<long long>(word)); }
  static Reg accumulate(Reg acc, Reg a, Reg b) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    const __m256i x = _mm256_xor_si256(a, b);
    const __m256i lo = _mm256_and_si256(x, low_nibbles);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
    const __m256i bytes =
        _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
    return _mm256_add_epi64(acc, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
  }
  static void store(int32_t* p, Reg acc) {  // the low halves of the four lanes
    const __m256i low = _mm256_permutevar8x32_epi32(acc, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(low));
  }
  static int64_t popcount(uint64_t word) { return __builtin_popcountll(word); }  // POPCNT
};

#include "xnor/xnor_conv2d_cpu_kernels.inc"

}  // namespace avx2_impl

FASTDL_XNOR_DEFINE_KERNELS(Avx2Kernels, avx2_impl)

}  // namespace fastdl::xnor

#pragma GCC pop_options
