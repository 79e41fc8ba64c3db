// The inner loop of the CPU binary convolution: mismatch counts between a tile of
// gathered receptive fields and weight rows, compiled once per popcount method
// (xnor_conv2d_cpu_{scalar,avx2,avx512}.cpp include xnor_conv2d_cpu_kernels.inc
// with their own `Bits`) and chosen at run time by xnor_conv2d_cpu.cpp.
//
// The tile is lane-interleaved: one vector holds the same word of kLanes
// consecutive pixels, so a vector of popcounts is kLanes finished (pixel, channel)
// sums with no horizontal reduction, and a weight word is broadcast to all lanes.
// Word k of pixel p = v * lanes + l is tile[(v * words + k) * lanes + l].
#pragma once

#include <cstdint>

namespace fastdl::xnor {

// Pixels per vector of the widest kernel set (AVX-512): tiles are padded to it.
constexpr int64_t kMaxLanes = 8;

// Member list of each kernel set.
#define FASTDL_XNOR_KERNEL_LIST                                                              \
  /* Pixels per vector: the tile layout this set reads. */                                    \
  static int64_t lanes();                                                                     \
  /* counts[c * ld + p] = sum over k < words of popcount(pixel p's word k XOR               */ \
  /* weight[c * weight_stride + k]) for p < vectors * lanes(), c < channels. */               \
  static void mismatch_counts(const uint64_t* tile, int64_t vectors, int64_t words,           \
                              const uint64_t* weight, int64_t weight_stride, int64_t channels, \
                              int32_t* counts, int64_t ld);                                    \
  /* out[f] = set bits of words [f * field_words, (f + 1) * field_words), f < fields */       \
  static void word_popcounts(const uint64_t* words, int64_t fields, int64_t field_words,      \
                             int32_t* out);

struct ScalarKernels {  // SWAR popcount: any x86-64 (POPCNT is not in the baseline)
  FASTDL_XNOR_KERNEL_LIST
};
struct Avx2Kernels {  // nibble lookup with vpshufb, summed with vpsadbw
  FASTDL_XNOR_KERNEL_LIST
};
struct Avx512Kernels {  // AVX-512 VPOPCNTDQ: 8 words per instruction
  FASTDL_XNOR_KERNEL_LIST
};

#define FASTDL_XNOR_DEFINE_KERNELS(Set, impl)                                                \
  int64_t Set::lanes() { return impl::Bits::kLanes; }                                        \
  void Set::mismatch_counts(const uint64_t* tile, int64_t vectors, int64_t words,            \
                            const uint64_t* weight, int64_t weight_stride, int64_t channels, \
                            int32_t* counts, int64_t ld) {                                   \
    impl::mismatch_counts(tile, vectors, words, weight, weight_stride, channels, counts, ld); \
  }                                                                                          \
  void Set::word_popcounts(const uint64_t* words, int64_t fields, int64_t field_words,       \
                           int32_t* out) {                                                   \
    impl::word_popcounts(words, fields, field_words, out);                                   \
  }

}  // namespace fastdl::xnor
