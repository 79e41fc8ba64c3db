// The CPU dilated convolution kernels, compiled once per ISA
// (dilated_conv_cpu_{scalar,avx2,avx512}.cpp include dilated_conv_cpu_kernels.inc under
// that ISA's target) and chosen at run time by dilated_conv_cpu.cpp, which owns the
// parallel loops, the backward's weight transposition and the dtypes.
#pragma once

#include <cstdint>

#include "dilated_conv/dilated_conv.h"

namespace fastdl::dilated_conv {

// Output channels per register tile (and input channels per grad_weight tile).
constexpr int64_t kChannelsPerTile = 4;

#define FASTDL_DILATED_CONV_KERNEL_LIST(T)                                                  \
  static void conv_row_block(const Geometry& g, const T* input, const T* weight,            \
                             const T* bias, int64_t o0, int64_t channels, int64_t y,         \
                             int64_t x_begin, int64_t x_end, T* output);                     \
  static void weight_grad_tile(const Geometry& g, const T* grad_output, const T* input,     \
                               int64_t o0, int64_t o_count, int64_t c0, int64_t c_count,     \
                               int64_t kh, int64_t kw, T* out, int64_t o_stride,             \
                               int64_t c_stride);                                            \
  static void bias_grad(const Geometry& g, const T* grad_output, int64_t o0, int64_t count,  \
                        T* out);

struct ScalarKernels {
  FASTDL_DILATED_CONV_KERNEL_LIST(float)
  FASTDL_DILATED_CONV_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_DILATED_CONV_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_DILATED_CONV_KERNEL_LIST(float)
};

#define FASTDL_DILATED_CONV_DEFINE_KERNELS(Set, impl, T)                                    \
  void Set::conv_row_block(const Geometry& g, const T* input, const T* weight, const T* bias, \
                           int64_t o0, int64_t channels, int64_t y, int64_t x_begin,         \
                           int64_t x_end, T* output) {                                       \
    impl::conv_row_block<T>(g, input, weight, bias, o0, channels, y, x_begin, x_end, output); \
  }                                                                                          \
  void Set::weight_grad_tile(const Geometry& g, const T* grad_output, const T* input,       \
                             int64_t o0, int64_t o_count, int64_t c0, int64_t c_count,       \
                             int64_t kh, int64_t kw, T* out, int64_t o_stride,               \
                             int64_t c_stride) {                                             \
    impl::weight_grad_tile<T>(g, grad_output, input, o0, o_count, c0, c_count, kh, kw, out,  \
                              o_stride, c_stride);                                           \
  }                                                                                          \
  void Set::bias_grad(const Geometry& g, const T* grad_output, int64_t o0, int64_t count,    \
                      T* out) {                                                              \
    impl::bias_grad<T>(g, grad_output, o0, count, out);                                      \
  }

}  // namespace fastdl::dilated_conv
