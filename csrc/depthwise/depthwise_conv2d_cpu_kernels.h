// The inner loops of the CPU depthwise convolution, compiled once per ISA
// (depthwise_conv2d_cpu_{scalar,avx2,avx512}.cpp include depthwise_conv2d_cpu_kernels.inc
// under that ISA's target) and chosen at run time by depthwise_conv2d_cpu.cpp.
//
// Channels-last kernels vectorise along C. The common shapes (stride 1 or 2, square
// 3x3 / 5x5 / 7x7, no dilation) run register tiles (depthwise_conv2d_cpu_tiles.inc),
// NCHW inputs of those shapes too, through blocks of kMaxWidth channels transposed
// into channels last. The other shapes' NCHW kernels work on one plane whose input
// was copied into a zero-padded buffer split into `stride_w` column phases, so every
// tap of every output row is a contiguous run of inputs: any stride, dilation and
// padding vectorise along W.
#pragma once

#include <cstdint>
#include <type_traits>  // std::integral_constant, in the kernels

#include "common/int_math.h"
#include "common/prefetch.h"
#include "depthwise/depthwise_conv2d.h"

namespace fastdl::depthwise {

// Widest vector of any ISA, in elements of float: the stride of weight_grad_plane's
// per-tap partial sums and the padding past prepared rows.
constexpr int64_t kMaxWidth = 16;

// One output plane from a prepared input plane. Tap t = kh * kernel_w + kw of output
// (ho, wo) reads prepared[ho * stride_h * row_stride + tap_offset[t] + wo].
struct PlaneConv {
  int64_t out_h, out_w;
  int64_t taps;        // kernel_h * kernel_w
  int64_t kernel_h, kernel_w;  // picks an unrolled kernel for 3x3, 5x5, 7x7
  int64_t row_step;    // stride_h * row_stride
  const int64_t* tap_offset;
};

// One image in NHWC, multiplier 1; weights are (taps, C), bias (C). The kernels
// handle `channels` channels starting at the pointers they get, with pixels (and
// weight taps) `channel_stride` elements apart, so a caller can split channels.
struct ChannelsLastConv {
  int64_t in_h, in_w, out_h, out_w, channels, channel_stride;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  // Whether the register tiles prefetch their next tiles' input into L2: for inputs
  // read from memory. On inputs already in cache (a batch-1 layer, the NCHW path's
  // per-thread blocks) the prefetch instructions only cost time (a 32-channel NCHW
  // forward+backward lost 20% with them).
  bool prefetch_input = false;
};

// Whether forward_rows_cl runs register tiles (stride 1 or 2 both ways, dilation 1,
// square 3x3, 5x5 or 7x7), which handle the borders themselves: callers then need no
// padded copy.
inline bool tiles_apply(const ChannelsLastConv& g) {
  return g.stride_h == g.stride_w && (g.stride_h == 1 || g.stride_h == 2) &&
         g.dilation_h == 1 && g.dilation_w == 1 &&
         g.kernel_h == g.kernel_w && (g.kernel_h == 3 || g.kernel_h == 5 || g.kernel_h == 7);
}

// Whether forward_rows_cl slides a register window along the kernel rows (column
// stride and dilation 1, shapes the tiles do not take: large and non-square kernels),
// which handles the borders itself too.
inline bool window_applies(const ChannelsLastConv& g) {
  return !tiles_apply(g) && g.stride_w == 1 && g.dilation_w == 1;
}

// Member list of each ISA's kernel set, for one element type T.
#define FASTDL_DEPTHWISE_KERNEL_LIST(T)                                                     \
  /* out = (accumulate ? out : bias) + sum over taps of weight[t] * input */               \
  static void forward_plane(const PlaneConv& g, const T* prepared, const T* weight, T bias,  \
                            bool accumulate, T* out);                                      \
  /* partial[t * kMaxWidth + lane] += lane sums of grad_out * input at tap t; */            \
  /* summing a tap's kMaxWidth entries gives its weight gradient */                          \
  static void weight_grad_plane(const PlaneConv& g, const T* prepared, const T* grad_out,    \
                                T* partial);                                               \
  static T sum(const T* data, int64_t n);                                                  \
  /* even[i] = src[2i], odd[i] = src[2i + 1] for i < count */                              \
  static void deinterleave2(const T* src, int64_t count, T* even, T* odd);                 \
  /* Output rows [begin, end) of one image; bias may be null. */                            \
  static void forward_rows_cl(const ChannelsLastConv& g, const T* input, const T* weight,    \
                              const T* bias, int64_t begin, int64_t end, T* out);           \
  /* Output rows forward_rows_cl computes together (its register tiles' height, or 1): */  \
  /* row ranges from a multiple of it take no shorter tiles in the middle. */              \
  static int64_t forward_tile_rows(const ChannelsLastConv& g, T);                          \
  /* Input-gradient rows [begin, end) of one image. */                                      \
  static void input_grad_rows_cl(const ChannelsLastConv& g, const T* grad_out,               \
                                 const T* weight, int64_t begin, int64_t end, T* grad_in);  \
  /* grad_weight (taps, C) and grad_bias (C, may be null) of `images` images, stored */   \
  /* (not accumulated). */                                                                 \
  static void weight_grad_cl(const ChannelsLastConv& g, const T* input, const T* grad_out,   \
                             int64_t images, T* grad_weight, T* grad_bias);                \
  /* Adds the grad_weight (taps, C) and grad_bias (C, may be null) terms of output */      \
  /* rows [begin, end) of one image; for shapes where tiles_apply or window_applies. */    \
  static void weight_grad_rows_cl(const ChannelsLastConv& g, const T* input,                 \
                                  const T* grad_out, int64_t begin, int64_t end,             \
                                  T* grad_weight, T* grad_bias);                             \
  /* block[p * S + c] = planes[c * pixels + p] for c < channels, and the reverse */         \
  static void planes_to_block(const T* planes, int64_t pixels, int64_t channels, int64_t S, \
                              T* block);                                                    \
  static void block_to_planes(const T* block, int64_t pixels, int64_t channels, int64_t S,  \
                              T* planes);

struct ScalarKernels {
  FASTDL_DEPTHWISE_KERNEL_LIST(float)
  FASTDL_DEPTHWISE_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_DEPTHWISE_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_DEPTHWISE_KERNEL_LIST(float)
};

// Defines `Set`'s members for T by forwarding to the templates of the ISA
// namespace `impl` (in an ISA translation unit, after the kernels are included).
#define FASTDL_DEPTHWISE_DEFINE_KERNELS(Set, impl, T)                                         \
  void Set::forward_plane(const PlaneConv& g, const T* prepared, const T* weight, T bias,     \
                          bool accumulate, T* out) {                                          \
    impl::forward_plane<T>(g, prepared, weight, bias, accumulate, out);                       \
  }                                                                                           \
  void Set::weight_grad_plane(const PlaneConv& g, const T* prepared, const T* grad_out,       \
                              T* partial) {                                                   \
    impl::weight_grad_plane<T>(g, prepared, grad_out, partial);                               \
  }                                                                                           \
  T Set::sum(const T* data, int64_t n) { return impl::sum<T>(data, n); }                      \
  void Set::deinterleave2(const T* src, int64_t count, T* even, T* odd) {                     \
    impl::deinterleave2<T>(src, count, even, odd);                                            \
  }                                                                                           \
  void Set::forward_rows_cl(const ChannelsLastConv& g, const T* input, const T* weight,       \
                            const T* bias, int64_t begin, int64_t end, T* out) {              \
    impl::forward_rows_cl<T>(g, input, weight, bias, begin, end, out);                        \
  }                                                                                           \
  int64_t Set::forward_tile_rows(const ChannelsLastConv& g, T) {                              \
    return impl::forward_tile_rows<T>(g);                                                     \
  }                                                                                           \
  void Set::input_grad_rows_cl(const ChannelsLastConv& g, const T* grad_out, const T* weight, \
                               int64_t begin, int64_t end, T* grad_in) {                      \
    impl::input_grad_rows_cl<T>(g, grad_out, weight, begin, end, grad_in);                    \
  }                                                                                           \
  void Set::weight_grad_cl(const ChannelsLastConv& g, const T* input, const T* grad_out,     \
                           int64_t images, T* grad_weight, T* grad_bias) {                   \
    impl::weight_grad_cl<T>(g, input, grad_out, images, grad_weight, grad_bias);              \
  }                                                                                           \
  void Set::weight_grad_rows_cl(const ChannelsLastConv& g, const T* input, const T* grad_out, \
                                int64_t begin, int64_t end, T* grad_weight, T* grad_bias) {   \
    impl::weight_grad_rows_cl<T>(g, input, grad_out, begin, end, grad_weight, grad_bias);     \
  }                                                                                           \
  void Set::planes_to_block(const T* planes, int64_t pixels, int64_t channels, int64_t S,     \
                            T* block) {                                                       \
    impl::planes_to_block<T>(planes, pixels, channels, S, block);                             \
  }                                                                                           \
  void Set::block_to_planes(const T* block, int64_t pixels, int64_t channels, int64_t S,      \
                            T* planes) {                                                      \
    impl::block_to_planes<T>(block, pixels, channels, S, planes);                             \
  }

}  // namespace fastdl::depthwise
