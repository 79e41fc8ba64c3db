// The CPU dilated convolution kernels, compiled once per ISA
// (dilated_conv_cpu_{scalar,avx2,avx512}.cpp include dilated_conv_cpu_kernels.inc under
// that ISA's target) and chosen at run time by dilated_conv_cpu.cpp, which owns the
// parallel loops, the backward's weight transposition and the dtypes.
#pragma once

#include <array>
#include <cstdint>
#include <limits>

#include "common/int_math.h"
#include "dilated_conv/dilated_conv.h"

namespace fastdl::dilated_conv {

// The forward's weights are packed per tile of channel_tile() output channels of a
// group (R, the ISA's register tile; tiles of group grp are grp * tiles_to_cover(O /
// groups, R) + t), so the kernel reads one contiguous run per tile:
// tile[(c * kH * kW + tap) * R + r] = w[o0 + r][c][tap], zero for channels past the
// group's last; bias alike ([tile][R]).
// Groups of at least lane_block() / 2 output channels take the lane kernels instead:
// blocks of lane_block() output channels of a group (block b of group grp is
// grp * tiles_to_cover(O / groups, lane_block()) + b), each packed with
// lane_block_width(its channels) lanes per step:
// block[(c * kH * kW + tap) * width + lane] = w[o0 + lane][c][tap], zero past the
// group's last channel; bias [block][lane_block()] alike.

// conv_row_pairs' three weight sets, each packed as pack_weight_blocks packs a 1x1
// convolution's weights in tiles of pair_tile_channels() output channels: tap 0 (W0),
// the sum of the taps (W0 + W1) and tap 1 (W1), at the group's first tile; `bias` the
// sum set's packed bias, at the group's first tile too. conv_row_triples also reads
// the taps' difference (W0 - W1). input_limit: the largest |input| the transforms take
// (kPairSafe, or less where these weights and bias could make a transformed sum
// overflow); chunks with larger inputs take the direct products.
template <typename T>
struct TapPairWeights {
  const T* first_tap;
  const T* tap_sum;
  const T* second_tap;
  const T* bias;
  int64_t block_size;  // values per packed tile of each set
  const T* tap_difference = nullptr;
  T input_limit = std::numeric_limits<T>::max();
};

// The tiles of the Winograd path (dilated_conv_cpu_winograd.inc): per image, tile
// rows x tile columns, tile (r, c) with its first output at (ys[r], xs[c]).
struct WinogradTiles {
  const int64_t* ys;
  int64_t rows;
  const int64_t* xs;
  int64_t columns;
};

#define FASTDL_DILATED_CONV_KERNEL_LIST(T)                                                  \
  static int64_t channel_tile(T);                                                           \
  static int64_t row_buffer_size(const Geometry& g, int64_t columns, T);                    \
  static void conv_row(const Geometry& g, const T* input, const T* packed_weights,          \
                       const T* packed_bias, int64_t first_tile, int64_t o_begin,           \
                       int64_t o_end, int64_t y, int64_t x_begin, int64_t x_end, T* rows,   \
                       T* output);                                                          \
  static int64_t lane_block(T);                                                             \
  static int64_t lane_block_width(int64_t channels, T);                                     \
  static int64_t lane_row_buffer_size(const Geometry& g, int64_t columns, T);               \
  static void conv_row_lanes(const Geometry& g, const T* input, const T* weights,           \
                             const T* bias, int64_t channels, int64_t y, int64_t x_begin,   \
                             int64_t x_end, T* buffer, T* output);                          \
  static bool takes_tap_pairs(const Geometry& g, T);                                       \
  static int64_t pair_tile_channels(T);                                                     \
  static int64_t pair_columns(const Geometry& g, T);                                       \
  static int64_t pair_buffer_size(const Geometry& g, int64_t columns, T);                  \
  static void conv_row_pairs(const Geometry& g, const T* input,                            \
                             const TapPairWeights<T>& weights, int64_t o_begin,             \
                             int64_t o_end, int64_t y, int64_t x_begin, int64_t x_end,      \
                             T* buffer, T* output);                                         \
  static T pair_safe_value(T);                                                              \
  static bool takes_tap_triples(const Geometry& g, T);                                     \
  static int64_t triple_tasks(const Geometry& g, T);                                       \
  static int64_t triple_buffer_size(const Geometry& g, T);                                 \
  static void conv_row_triples(const Geometry& g, const T* input,                          \
                               const TapPairWeights<T>& weights, int64_t o_begin,           \
                               int64_t o_end, int64_t y, int64_t task, T* buffer,           \
                               T* output);                                                  \
  static int64_t weight_grad_chunk_width(T);                                                \
  static bool takes_weight_grad_triples(const Geometry& g, T);                             \
  static int64_t weight_grad_triple_pieces(const Geometry& g, T);                          \
  static int64_t weight_grad_triples_buffer_size(const Geometry& g, T);                    \
  static void weight_grad_triples(const Geometry& g, const T* grad_output, const T* input, \
                                  int64_t count, int64_t y, int64_t piece, T* buffer,       \
                                  T* acc);                                                  \
  static int64_t weight_grad_buffer_size(const Geometry& g, T);                             \
  static void weight_grad_chunk(const Geometry& g, const T* grad_output, const T* input,    \
                                int64_t count, int64_t kh, int64_t kw, T* buffer, T* acc);  \
  static void bias_grad(const Geometry& g, const T* grad_output, int64_t o0, int64_t count,  \
                        T* out);                                                            \
  /* dst[c * dst_stride + r] = src[r * src_stride + c], r < rows, c < columns */            \
  static void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t columns,    \
                        T* dst, int64_t dst_stride);                                        \
  /* Winograd F(2x2, 3x3) transforms (dilated_conv_cpu_winograd.inc).                  */ \
  static void winograd_weights(const T* taps, int64_t count, T* u, int64_t u_stride,        \
                               bool flip);                                                  \
  static void winograd_input_tiles(const Geometry& g, const WinogradTiles& tiles,           \
                                   const T* input, int64_t first, int64_t count,            \
                                   int64_t stride, T* v);                                   \
  static void winograd_output_tiles(const Geometry& g, const WinogradTiles& tiles,          \
                                    const T* m, int64_t first, int64_t count,               \
                                    const T* bias, T* output);                              \
  static void winograd_grad_output_tiles(const Geometry& g, const WinogradTiles& tiles,     \
                                         const T* grad_output, int64_t first,               \
                                         int64_t count, int64_t stride, T* dm);             \
  static void winograd_weight_grad(const T* du, int64_t count, int64_t du_stride, T* taps); \
  static T max_abs(const T* values, int64_t count, T);

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
  int64_t Set::channel_tile(T) { return impl::channel_tile<T>(); }                          \
  int64_t Set::row_buffer_size(const Geometry& g, int64_t columns, T) {                     \
    return impl::row_buffer_size<T>(g, columns);                                             \
  }                                                                                          \
  void Set::conv_row(const Geometry& g, const T* input, const T* packed_weights,            \
                     const T* packed_bias, int64_t first_tile, int64_t o_begin, int64_t o_end, \
                     int64_t y, int64_t x_begin, int64_t x_end, T* rows, T* output) {       \
    impl::conv_row<T>(g, input, packed_weights, packed_bias, first_tile, o_begin, o_end, y,  \
                      x_begin, x_end, rows, output);                                         \
  }                                                                                          \
  int64_t Set::lane_block(T) { return impl::lane_block<T>(); }                              \
  int64_t Set::lane_block_width(int64_t channels, T) {                                      \
    return impl::lane_block_width<T>(channels);                                              \
  }                                                                                          \
  int64_t Set::lane_row_buffer_size(const Geometry& g, int64_t columns, T) {                \
    return impl::lane_row_buffer_size<T>(g, columns);                                        \
  }                                                                                          \
  void Set::conv_row_lanes(const Geometry& g, const T* input, const T* weights, const T* bias, \
                           int64_t channels, int64_t y, int64_t x_begin, int64_t x_end,     \
                           T* buffer, T* output) {                                          \
    impl::conv_row_lanes<T>(g, input, weights, bias, channels, y, x_begin, x_end, buffer,    \
                            output);                                                         \
  }                                                                                          \
  bool Set::takes_tap_pairs(const Geometry& g, T) { return impl::takes_tap_pairs<T>(g); }   \
  int64_t Set::pair_tile_channels(T) { return impl::kPairTileChannels; }                    \
  int64_t Set::pair_columns(const Geometry& g, T) { return impl::pair_columns<T>(g); }      \
  int64_t Set::pair_buffer_size(const Geometry& g, int64_t columns, T) {                    \
    return impl::pair_buffer_size<T>(g, columns);                                            \
  }                                                                                          \
  void Set::conv_row_pairs(const Geometry& g, const T* input, const TapPairWeights<T>& weights, \
                           int64_t o_begin, int64_t o_end, int64_t y, int64_t x_begin,      \
                           int64_t x_end, T* buffer, T* output) {                           \
    impl::conv_row_pairs<T>(g, input, weights, o_begin, o_end, y, x_begin, x_end, buffer,    \
                            output);                                                         \
  }                                                                                          \
  T Set::pair_safe_value(T) { return impl::pair_safe_value<T>(); }                          \
  bool Set::takes_tap_triples(const Geometry& g, T) { return impl::takes_tap_triples<T>(g); } \
  int64_t Set::triple_tasks(const Geometry& g, T) {                                         \
    return impl::triple_tasks<T>(g, impl::forward_triples<T>(g));                            \
  }                                                                                          \
  int64_t Set::triple_buffer_size(const Geometry& g, T) {                                   \
    return impl::triple_buffer_size<T>(g);                                                   \
  }                                                                                          \
  void Set::conv_row_triples(const Geometry& g, const T* input,                              \
                             const TapPairWeights<T>& weights, int64_t o_begin, int64_t o_end, \
                             int64_t y, int64_t task, T* buffer, T* output) {               \
    impl::conv_row_triples<T>(g, input, weights, o_begin, o_end, y, task, buffer, output);   \
  }                                                                                          \
  int64_t Set::weight_grad_chunk_width(T) { return impl::weight_grad_chunk_width<T>(); }    \
  bool Set::takes_weight_grad_triples(const Geometry& g, T) {                                \
    return impl::takes_weight_grad_triples<T>(g);                                            \
  }                                                                                          \
  int64_t Set::weight_grad_triple_pieces(const Geometry& g, T) {                             \
    return impl::weight_grad_triple_pieces<T>(g);                                            \
  }                                                                                          \
  int64_t Set::weight_grad_triples_buffer_size(const Geometry& g, T) {                       \
    return impl::weight_grad_triples_buffer_size<T>(g);                                      \
  }                                                                                          \
  void Set::weight_grad_triples(const Geometry& g, const T* grad_output, const T* input,     \
                                int64_t count, int64_t y, int64_t piece, T* buffer, T* acc) { \
    impl::weight_grad_triples<T>(g, grad_output, input, count, y, piece, buffer, acc);       \
  }                                                                                          \
  int64_t Set::weight_grad_buffer_size(const Geometry& g, T) {                              \
    return impl::weight_grad_buffer_size<T>(g);                                               \
  }                                                                                          \
  void Set::weight_grad_chunk(const Geometry& g, const T* grad_output, const T* input,      \
                              int64_t count, int64_t kh, int64_t kw, T* buffer, T* acc) {   \
    impl::weight_grad_chunk<T>(g, grad_output, input, count, kh, kw, buffer, acc);           \
  }                                                                                          \
  void Set::bias_grad(const Geometry& g, const T* grad_output, int64_t o0, int64_t count,    \
                      T* out) {                                                              \
    impl::bias_grad<T>(g, grad_output, o0, count, out);                                      \
  }                                                                                          \
  void Set::transpose(const T* src, int64_t src_stride, int64_t rows, int64_t columns, T* dst, \
                      int64_t dst_stride) {                                                  \
    impl::transpose_into<T>(src, src_stride, rows, columns, dst, dst_stride);                \
  }                                                                                          \
  void Set::winograd_weights(const T* taps, int64_t count, T* u, int64_t u_stride,           \
                             bool flip) {                                                    \
    impl::winograd_weights<T>(taps, count, u, u_stride, flip);                               \
  }                                                                                          \
  void Set::winograd_input_tiles(const Geometry& g, const WinogradTiles& tiles,              \
                                 const T* input, int64_t first, int64_t count,               \
                                 int64_t stride, T* v) {                                     \
    impl::winograd_input_tiles<T>(g, tiles, input, first, count, stride, v);                 \
  }                                                                                          \
  void Set::winograd_grad_output_tiles(const Geometry& g, const WinogradTiles& tiles,        \
                                       const T* grad_output, int64_t first, int64_t count,   \
                                       int64_t stride, T* dm) {                              \
    impl::winograd_grad_output_tiles<T>(g, tiles, grad_output, first, count, stride, dm);    \
  }                                                                                          \
  void Set::winograd_weight_grad(const T* du, int64_t count, int64_t du_stride, T* taps) {   \
    impl::winograd_weight_grad<T>(du, count, du_stride, taps);                               \
  }                                                                                          \
  T Set::max_abs(const T* values, int64_t count, T) {                                        \
    return impl::max_abs<T>(values, count);                                                  \
  }                                                                                          \
  void Set::winograd_output_tiles(const Geometry& g, const WinogradTiles& tiles, const T* m,  \
                                  int64_t first, int64_t count, const T* bias, T* output) {  \
    impl::winograd_output_tiles<T>(g, tiles, m, first, count, bias, output);                 \
  }

}  // namespace fastdl::dilated_conv
