// CPU dilated convolution: the parallel loops around the kernels of
// dilated_conv_cpu_kernels.inc (per ISA). Forward, wide groups: tasks of (group, block
// of output channels, image, output row, column chunk), blocks outermost so that a
// thread's tasks share one block's packed weights; two-tap rows: tasks of (group,
// image, output row, piece of the row), every block of the group over one transformed
// copy of the piece's input (conv_row_triples, conv_row_pairs). Forward, narrow groups:
// tasks of (image, group, output row, column chunk), each copying the input rows it
// reads into a zero-padded window once and running every output channel of the group
// over it. grad_input: the forward kernel on grad_output with the weights flipped and
// transposed. grad_weight: tasks of (group, tap, chunk of input channels), each
// summing over the whole batch in a fixed order, over blocks of the input it transposes
// pixel-major into L1 as it goes; two-tap rows with d of at least a vector: tasks of
// (group, chunk of input channels, slice of the rows), Winograd F(3, 2)
// (backward_weight_triples).
// Wide 3x3 convolutions at stride 1 (ASPP) take Winograd F(2x2, 3x3) instead, forward,
// grad_input and grad_weight (dilated_conv_cpu_winograd.h).
// No task writes what another reads or writes, so results do not depend on the thread
// count.
// float16/bfloat16 run the float32 kernels on float32 copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "common/cpu_isa.h"
#include "common/reduced_precision.h"
#include "common/thread_scratch.h"
#include "dilated_conv/dilated_conv.h"
#include "dilated_conv/dilated_conv_cpu_kernels.h"
#include "dilated_conv/dilated_conv_cpu_winograd.h"

namespace fastdl::dilated_conv {
namespace {

// Output columns per task: long 1-D rows (WaveNet) still split across threads.
constexpr int64_t kColumnsPerTask = 1024;

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

// Both kernels' packing (dilated_conv_cpu_kernels.h): blocks of `block` output
// channels per group, `width(channels)` lanes per step (conv_columns' tiles: always
// `block`).
template <typename T, typename Kernels, typename Width>
std::pair<at::Tensor, at::Tensor> pack_weight_blocks(Kernels kernels, const Geometry& g,
                                                     const at::Tensor& weight,
                                                     const at::Tensor& bias, int64_t block,
                                                     Width&& width) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group(), taps = g.kernel_h * g.kernel_w;
  const int64_t per_group = tiles_to_cover(og, block), steps = cg * taps;
  at::Tensor packed = at::zeros({g.groups * per_group, steps * block}, weight.options());
  at::Tensor packed_bias = at::zeros({g.groups * per_group, block}, weight.options());
  const T* w = weight.const_data_ptr<T>();
  const T* b = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  T* p = packed.data_ptr<T>();
  T* pb = packed_bias.data_ptr<T>();
  // A block is a transposition, its channels' steps (contiguous in `weight`) into each
  // step's lanes; the blocks run in parallel. Packed one channel at a time on one
  // thread, ASPP's 2.4 MB of weights was 2-3% of its forward's profile; by blocks of
  // lanes, in parallel, its d=6 forward went from 16.0-17.1 to 14.9-16.7 ms (medians,
  // Intel Xeon).
  at::parallel_for(0, g.groups * per_group, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t grp = task / per_group, o0 = task % per_group * block;
      const int64_t channels = std::min(block, og - o0), lanes = width(channels);
      kernels.transpose(w + (grp * og + o0) * steps, steps, channels, steps,
                        p + task * steps * block, lanes);
      if (b != nullptr)
        for (int64_t r = 0; r < channels; ++r) pb[task * block + r] = b[grp * og + o0 + r];
    }
  });
  return {packed, packed_bias};
}

// The two-tap kernels' four weight sets, W0, W0 + W1, W1 and W0 - W1 (sets[k], in
// TapPairWeights' order), each packed as pack_weight_blocks packs a 1x1 convolution's
// (tiles of `tile` output channels per group, zero past a group's last channel), and
// the sum set's bias: one pass over the weights on the calling thread (a WaveNet
// layer's 64 x 64 x 2 weights), where narrowed, added and subtracted copies and four
// pack_weight_blocks calls took four ATen ops and four parallel regions per call.
struct TapSets {
  at::Tensor sets;  // (4, tiles, in channels per group x tile)
  at::Tensor bias;  // (tiles, tile)
};

template <typename T>
TapSets pack_tap_sets(const Geometry& g, const at::Tensor& weight, const at::Tensor& bias,
                      int64_t tile) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group();
  const int64_t group_tiles = tiles_to_cover(og, tile), tiles = g.groups * group_tiles;
  const int64_t size = cg * tile, set = tiles * size;
  TapSets packed{at::zeros({4, tiles, size}, weight.options()),
                 at::zeros({tiles, tile}, weight.options())};
  const T* w = weight.const_data_ptr<T>();  // (O, C / groups, 1, 2)
  const T* b = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  T* sets = packed.sets.data_ptr<T>();
  T* packed_bias = packed.bias.data_ptr<T>();
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t o0 = t / group_tiles * og + t % group_tiles * tile;
    const int64_t channels = std::min(tile, (t / group_tiles + 1) * og - o0);
    for (int64_t r = 0; r < channels; ++r) {
      if (b != nullptr) packed_bias[t * tile + r] = b[o0 + r];
      for (int64_t c = 0; c < cg; ++c) {
        const T w0 = w[((o0 + r) * cg + c) * 2], w1 = w[((o0 + r) * cg + c) * 2 + 1];
        T* value = sets + t * size + c * tile + r;
        value[0] = w0;
        value[set] = w0 + w1;
        value[2 * set] = w1;
        value[3 * set] = w0 - w1;
      }
    }
  }
  return packed;
}

// Two-tap rows of lane-kernel groups: conv_row_triples (Winograd F(3, 2), d of at least
// a vector) or conv_row_pairs (F(2, 2) below that; see dilated_conv_cpu_kernels.inc). A
// task is one piece of one output row of one group (a chunk of columns, or a kernel's
// triple_task) and runs every tile of output channels of the group, so the piece's
// transformed input serves them all; when that leaves fewer tasks than threads (a short
// row, batch 1), the tiles are split over tasks too, each transforming the piece itself.
template <typename T, typename Kernels>
void forward_tap_pairs(Kernels kernels, const Geometry& g, const at::Tensor& input,
                       const at::Tensor& weight, const at::Tensor& bias, T max_weight,
                       at::Tensor& output) {
  const int64_t tile = kernels.pair_tile_channels(T(0)), og = g.out_per_group();
  const bool triples = kernels.takes_tap_triples(g, T(0));
  const TapSets packed = pack_tap_sets<T>(g, weight, bias, tile);
  const T* sets = packed.sets.const_data_ptr<T>();
  const int64_t group_tiles = tiles_to_cover(og, tile), tile_size = packed.sets.size(2);
  const int64_t set = packed.sets.size(1) * tile_size;
  // Every partial sum of a pair's or a triple's transformed products is at most |bias|
  // + 6 (C / groups) max|W| max|x| (a transform at most doubles an input, a weight set
  // a weight): inputs up to input_limit keep it finite, with room to spare.
  const double largest = std::numeric_limits<T>::max();
  const double max_bias =
      bias.defined() ? kernels.max_abs(bias.const_data_ptr<T>(), bias.numel(), T(0)) : 0.0;
  const double overflow_limit =
      max_weight > 0 ? std::max(0.0, (largest - max_bias) / (8.0 * g.in_per_group() * max_weight))
                     : largest;
  const T input_limit = T(std::min<double>(kernels.pair_safe_value(T(0)), overflow_limit));
  const int64_t chunk = kernels.pair_columns(g, T(0));
  const int64_t pieces = triples ? kernels.triple_tasks(g, T(0)) : tiles_to_cover(g.out_w, chunk);
  const int64_t buffer_size = triples ? kernels.triple_buffer_size(g, T(0))
                                      : kernels.pair_buffer_size(g, std::min(g.out_w, chunk), T(0));
  const int64_t rows = g.batch * g.out_h * pieces;  // (image, output row, piece)
  const int64_t task_tiles = tiles_to_cover(
      group_tiles, std::min(group_tiles, tiles_to_cover(at::get_num_threads(), g.groups * rows)));
  const int64_t tile_tasks = tiles_to_cover(group_tiles, task_tiles);
  const T* in = input.const_data_ptr<T>();
  T* out = output.data_ptr<T>();
  const int64_t in_group = g.in_per_group() * g.in_h * g.in_w, in_image = g.groups * in_group;
  const int64_t plane = g.out_h * g.out_w, out_image = g.out_channels * plane;
  at::parallel_for(0, g.groups * tile_tasks * rows, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> buffer(0, buffer_size);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task % rows, tiles_task = task / rows % tile_tasks;
      const int64_t grp = task / (rows * tile_tasks), piece = row % pieces;
      const int64_t y = row / pieces % g.out_h, n = row / (pieces * g.out_h);
      const int64_t first_tile = grp * group_tiles;
      const int64_t o_begin = tiles_task * task_tiles * tile;
      const int64_t o_end = std::min(og, o_begin + task_tiles * tile);
      const int64_t offset = first_tile * tile_size;
      const TapPairWeights<T> weights{sets + offset, sets + set + offset, sets + 2 * set + offset,
                                      packed.bias.const_data_ptr<T>() + first_tile * tile,
                                      tile_size, sets + 3 * set + offset, input_limit};
      const T* group_input = in + n * in_image + grp * in_group;
      T* group_output = out + n * out_image + grp * og * plane;
      if (triples) {
        kernels.conv_row_triples(g, group_input, weights, o_begin, o_end, y, piece, buffer.data(),
                                 group_output);
      } else {
        const int64_t x0 = piece * chunk;
        kernels.conv_row_pairs(g, group_input, weights, o_begin, o_end, y, x0,
                               std::min(g.out_w, x0 + chunk), buffer.data(), group_output);
      }
    }
  });
}

template <typename T>
void forward_typed(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group();
  const int64_t column_chunks = tiles_to_cover(g.out_w, kColumnsPerTask);
  const int64_t columns = std::min(g.out_w, kColumnsPerTask);
  const T* in = input.const_data_ptr<T>();
  T* out = output.data_ptr<T>();
  const int64_t in_image = g.in_channels * g.in_h * g.in_w, in_group = cg * g.in_h * g.in_w;
  const int64_t plane = g.out_h * g.out_w, out_image = g.out_channels * plane;
  with_kernels<T>([&](auto kernels) {
    const int64_t block = kernels.lane_block(T(0));
    if (use_winograd<T>(kernels, g, input, weight, forward_growth(g.in_channels))) {
      forward_winograd<T>(kernels, g, input, weight, bias, output, /*flipped=*/false);
      return;
    }
    if (og >= block / 2 && kernels.takes_tap_pairs(g, T(0))) {
      // The pair kernel's weight sums must stay finite (see kPairSafe): below it, and
      // not infinite or NaN (max_abs gives infinity then).
      const T max_weight = kernels.max_abs(weight.const_data_ptr<T>(), weight.numel(), T(0));
      if (max_weight < kernels.pair_safe_value(T(0))) {
        forward_tap_pairs<T>(kernels, g, input, weight, bias, max_weight, output);
        return;
      }
    }
    if (og >= block / 2) {
      // Output channels in the lanes (dilated_conv_cpu_kernels.inc says when that
      // pays). Tasks run (group, block) outermost, so a thread's consecutive tasks share
      // one block's packed weights.
      const int64_t blocks = tiles_to_cover(og, block);
      const int64_t rows = g.batch * g.out_h * column_chunks;  // (image, output row, chunk)
      const std::pair<at::Tensor, at::Tensor> packs =
          pack_weight_blocks<T>(kernels, g, weight, bias, block, [&](int64_t channels) {
        return kernels.lane_block_width(channels, T(0));
      });
      const T* pw = packs.first.const_data_ptr<T>();
      const T* pb = packs.second.const_data_ptr<T>();
      const int64_t block_size = packs.first.size(1);
      at::parallel_for(0, g.groups * blocks * rows, 1, [&](int64_t begin, int64_t end) {
        const ThreadScratch<T> buffer(0, kernels.lane_row_buffer_size(g, columns, T(0)));
        for (int64_t task = begin; task < end; ++task) {
          const int64_t gb = task / rows, grp = gb / blocks, o0 = grp * og + gb % blocks * block;
          const int64_t row = task % rows, x0 = row % column_chunks * kColumnsPerTask;
          const int64_t y = row / column_chunks % g.out_h, n = row / (column_chunks * g.out_h);
          kernels.conv_row_lanes(g, in + n * in_image + grp * in_group, pw + gb * block_size,
                                 pb + gb * block, std::min(block, grp * og + og - o0), y, x0,
                                 std::min(g.out_w, x0 + kColumnsPerTask), buffer.data(),
                                 out + n * out_image + o0 * plane);
        }
      });
      return;
    }
    const int64_t tile = kernels.channel_tile(T(0)), group_tiles = tiles_to_cover(og, tile);
    const std::pair<at::Tensor, at::Tensor> packs =
        pack_weight_blocks<T>(kernels, g, weight, bias, tile, [&](int64_t) { return tile; });
    const T* pw = packs.first.const_data_ptr<T>();
    const T* pb = packs.second.const_data_ptr<T>();
    at::parallel_for(0, g.batch * g.groups * g.out_h * column_chunks, 1,
                     [&](int64_t begin, int64_t end) {
      const ThreadScratch<T> rows(0, kernels.row_buffer_size(g, columns, T(0)));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t chunk = task % column_chunks, row = task / column_chunks;
        const int64_t y = row % g.out_h, grp = row / g.out_h % g.groups, n = row / (g.out_h * g.groups);
        const int64_t x0 = chunk * kColumnsPerTask;
        kernels.conv_row(g, in + n * in_image + grp * in_group, pw, pb, grp * group_tiles,
                         grp * og, grp * og + og, y, x0, std::min(g.out_w, x0 + kColumnsPerTask),
                         rows.data(), out + n * out_image);
      }
    });
  });
}

// The weights of the convolution that maps grad_output to grad_input (stride 1):
// (C, O / groups, kH, kW), w_t[c][o][kh][kw] = w[o][c][kH - 1 - kh][kW - 1 - kw] per group.
template <typename T>
at::Tensor flipped_transposed(const Geometry& g, const at::Tensor& weight) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group();
  const int64_t kh = g.kernel_h, kw = g.kernel_w, taps = kh * kw;
  at::Tensor out = at::empty({g.in_channels, og, kh, kw}, weight.options());
  const T* w = weight.const_data_ptr<T>();
  T* t = out.data_ptr<T>();
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t o = 0; o < og; ++o)
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t tap = 0; tap < taps; ++tap)
          t[((grp * cg + c) * og + o) * taps + (taps - 1 - tap)] =
              w[((grp * og + o) * cg + c) * taps + tap];
  return out;
}

// grad_output on the stride-1 grid: value (y, x) at (y * stride_h, x * stride_w),
// zeros between (only when a stride is > 1).
template <typename T>
at::Tensor spread(const Geometry& g, const at::Tensor& grad_output) {
  if (g.stride_h == 1 && g.stride_w == 1) return grad_output;
  const int64_t h = (g.out_h - 1) * g.stride_h + 1, w = (g.out_w - 1) * g.stride_w + 1;
  at::Tensor out = at::zeros({g.batch, g.out_channels, h, w}, grad_output.options());
  const T* src = grad_output.const_data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t y = 0; y < g.out_h; ++y)
        for (int64_t x = 0; x < g.out_w; ++x)
          dst[(plane * h + y * g.stride_h) * w + x * g.stride_w] = src[(plane * g.out_h + y) * g.out_w + x];
  });
  return out;
}

template <typename T>
void backward_input_typed(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input) {
  const at::Tensor grad = spread<T>(g, grad_output);
  Geometry t = g;  // grad_input = conv(grad, flipped weights), stride 1
  t.in_channels = g.out_channels;
  t.out_channels = g.in_channels;
  t.in_h = grad.size(2);
  t.in_w = grad.size(3);
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.stride_h = t.stride_w = 1;
  t.pad_top = (g.kernel_h - 1) * g.dilation_h - g.pad_top;  // may be negative: an offset
  t.pad_left = (g.kernel_w - 1) * g.dilation_w - g.pad_left;
  bool done = false;
  with_kernels<T>([&](auto kernels) {
    if (use_winograd<T>(kernels, t, grad, weight, forward_growth(t.in_channels))) {
      forward_winograd<T>(kernels, t, grad, weight, at::Tensor(), grad_input, /*flipped=*/true);
      done = true;
    }
  });
  if (!done) forward_typed<T>(t, grad, flipped_transposed<T>(g, weight), at::Tensor(), grad_input);
}

// The weight gradient of two-tap rows by Winograd F(3, 2) (weight_grad_triples). Tasks
// of (group, chunk of input channels, slice), each summing a fixed range of the rows'
// pieces into its own four sums, which are then added into the taps in slice order:
// fixed by the shape, so the result does not depend on the thread count. False, having
// written nothing, when a sum is not finite: then the direct kernels are needed.
constexpr int64_t kWeightGradSlices = 8;

template <typename T, typename Kernels>
bool backward_weight_triples(Kernels kernels, const Geometry& g, const T* grad_output,
                             const T* input, T* grad_weight) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group();
  const int64_t chunk = kernels.weight_grad_chunk_width(T(0)), chunks = tiles_to_cover(cg, chunk);
  const int64_t row_pieces = kernels.weight_grad_triple_pieces(g, T(0));
  const int64_t pieces = g.batch * g.out_h * row_pieces;
  const int64_t slices = std::min(pieces, kWeightGradSlices);
  const int64_t tasks = g.groups * chunks * slices, m = og * chunk;  // m: values of one sum
  const CallBuffers<T> buffers({tasks * 4 * m, g.groups * chunks * 2 * m});
  const int64_t out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;
  const int64_t image_out = g.out_channels * out_plane, image_in = g.in_channels * in_plane;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> buffer(0, kernels.weight_grad_triples_buffer_size(g, T(0)));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t slice = task % slices, c_chunk = task / slices % chunks;
      const int64_t grp = task / (slices * chunks), c0 = c_chunk * chunk;
      T* acc = buffers[0] + task * 4 * m;
      std::fill(acc, acc + 4 * m, T(0));
      for (int64_t p = slice * pieces / slices; p < (slice + 1) * pieces / slices; ++p) {
        const int64_t piece = p % row_pieces, y = p / row_pieces % g.out_h;
        const int64_t n = p / (row_pieces * g.out_h);
        kernels.weight_grad_triples(g, grad_output + n * image_out + grp * og * out_plane,
                                    input + n * image_in + (grp * cg + c0) * in_plane,
                                    std::min(chunk, cg - c0), y, piece, buffer.data(), acc);
      }
    }
  });
  // per (group, chunk): tap 0 = M0 + M1 + M2, tap 1 = M1 - M2 + M3, over the slices in order
  T* taps = buffers[1];
  for (int64_t gc = 0; gc < g.groups * chunks; ++gc) {
    T* first = taps + gc * 2 * m;
    T* second = first + m;
    std::fill(first, first + 2 * m, T(0));
    for (int64_t s = 0; s < slices; ++s) {
      const T* sums = buffers[0] + (gc * slices + s) * 4 * m;
      for (int64_t i = 0; i < m; ++i) {
        first[i] += sums[i] + sums[m + i] + sums[2 * m + i];
        second[i] += sums[m + i] - sums[2 * m + i] + sums[3 * m + i];
      }
    }
  }
  if (!(kernels.max_abs(taps, g.groups * chunks * 2 * m, T(0)) <= std::numeric_limits<T>::max()))
    return false;  // not finite
  for (int64_t gc = 0; gc < g.groups * chunks; ++gc) {
    const int64_t grp = gc / chunks, c0 = gc % chunks * chunk, count = std::min(chunk, cg - c0);
    for (int64_t tap = 0; tap < 2; ++tap)
      for (int64_t o = 0; o < og; ++o)
        for (int64_t c = 0; c < count; ++c)
          grad_weight[((grp * og + o) * cg + c0 + c) * 2 + tap] =
              taps[(gc * 2 + tap) * m + o * chunk + c];
  }
  return true;
}

template <typename T>
void backward_weight_typed(const Geometry& g, const at::Tensor& grad_output,
                           const at::Tensor& input, at::Tensor& grad_weight,
                           at::Tensor& grad_bias) {
  const int64_t og = g.out_per_group(), cg = g.in_per_group(), taps = g.kernel_h * g.kernel_w;
  const T* go = grad_output.const_data_ptr<T>();
  const int64_t out_plane = g.out_h * g.out_w;
  with_kernels<T>([&](auto kernels) {
    if (grad_bias.defined()) {
      T* gb = grad_bias.data_ptr<T>();
      at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
        kernels.bias_grad(g, go, begin, end - begin, gb);
      });
    }
    if (!grad_weight.defined()) return;  // the bias gradient alone
    T* gw = grad_weight.data_ptr<T>();
    if (use_winograd<T>(kernels, g, grad_output, input, weight_grad_growth(g))) {
      backward_weight_winograd<T>(kernels, g, grad_output, input, grad_weight);
      return;
    }
    const T* in = input.const_data_ptr<T>();
    if (kernels.takes_weight_grad_triples(g, T(0)) &&
        backward_weight_triples<T>(kernels, g, go, in, gw))
      return;
    const int64_t chunk = kernels.weight_grad_chunk_width(T(0));
    const int64_t chunks = tiles_to_cover(cg, chunk), in_plane = g.in_h * g.in_w;
    at::parallel_for(0, g.groups * taps * chunks, 1, [&](int64_t begin, int64_t end) {
      const ThreadScratch<T> acc(0, og * chunk);
      const ThreadScratch<T> block(1, kernels.weight_grad_buffer_size(g, T(0)));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c_chunk = task % chunks, tap = task / chunks % taps, grp = task / (chunks * taps);
        const int64_t c0 = c_chunk * chunk, count = std::min(chunk, cg - c0);
        kernels.weight_grad_chunk(g, go + grp * og * out_plane, in + (grp * cg + c0) * in_plane,
                                  count, tap / g.kernel_w, tap % g.kernel_w, block.data(), acc.data());
        for (int64_t o = 0; o < og; ++o)
          for (int64_t c = 0; c < count; ++c)
            gw[((grp * og + o) * cg + c0 + c) * taps + tap] = acc.data()[o * chunk + c];
      }
    });
  });
}

// float16/bfloat16 through float32 copies; results copied back into `out`.
void into(at::Tensor& out, const at::Tensor& computed) {
  if (!computed.is_same(out)) out.copy_(computed);
}

at::Tensor compute_buffer(const at::Tensor& out) {
  return is_16bit_float(out) ? at::empty(out.sizes(), out.options().dtype(at::kFloat)) : out;
}

void forward_cpu(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                 const at::Tensor& bias, at::Tensor& output) {
  at::Tensor out = compute_buffer(output);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastdl_dilated_conv", [&] {
    forward_typed<scalar_t>(g, widened_to_float32(input), widened_to_float32(weight),
                            widened_to_float32(bias), out);
  });
  into(output, out);
}

void backward_input_cpu(const Geometry& g, const at::Tensor& grad_output,
                        const at::Tensor& weight, at::Tensor& grad_input) {
  at::Tensor out = compute_buffer(grad_input);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastdl_dilated_conv_backward_input", [&] {
    backward_input_typed<scalar_t>(g, widened_to_float32(grad_output), widened_to_float32(weight),
                                   out);
  });
  into(grad_input, out);
}

void backward_weight_cpu(const Geometry& g, const at::Tensor& grad_output,
                         const at::Tensor& input, at::Tensor& grad_weight,
                         at::Tensor& grad_bias) {
  at::Tensor gw = grad_weight.defined() ? compute_buffer(grad_weight) : at::Tensor();
  at::Tensor gb = grad_bias.defined() ? compute_buffer(grad_bias) : at::Tensor();
  const at::Tensor go = widened_to_float32(grad_output);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "fastdl_dilated_conv_backward_weight", [&] {
    backward_weight_typed<scalar_t>(g, go, widened_to_float32(input), gw, gb);
  });
  if (gw.defined()) into(grad_weight, gw);
  if (gb.defined()) into(grad_bias, gb);
}

const DeviceKernels kCpuKernels{&forward_cpu, &backward_input_cpu, &backward_weight_cpu};

}  // namespace
}  // namespace fastdl::dilated_conv

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  fastdl::dilated_conv::register_ops<fastdl::dilated_conv::kCpuKernels>(m);
}
