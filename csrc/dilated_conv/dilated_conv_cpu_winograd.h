// The CPU dilated convolution's Winograd F(2x2, 3x3) path: the loops and GEMMs around
// the transforms of dilated_conv_cpu_winograd.inc (per ISA), for dilated_conv_cpu.cpp.
#pragma once

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/int_math.h"
#include "common/thread_scratch.h"
#include "dilated_conv/dilated_conv.h"
#include "dilated_conv/dilated_conv_cpu_kernels.h"

namespace fastdl::dilated_conv {

// Winograd F(2x2, 3x3) for wide 3x3 convolutions at stride 1 (DeepLab's ASPP: 256
// channels in and out, dilation 6, 12, 18): per tile of 2x2 outputs d apart, 16
// products per (output, input channel) where the direct kernels take 36, and those
// products are 16 GEMMs (tiles x C) x (C x O), one per transform point, which at::bmm
// runs. Ours are the transforms (dilated_conv_cpu_winograd.inc), on channels-last
// copies of the input and output, and the tiling of the dilated grid: along each axis
// the outputs of residue r mod d pair up as (r + 2 a d, r + (2 a + 1) d), so a tile
// never straddles two residues and reads a 4x4 grid of inputs d apart. grad_input's
// convolution takes it too, reading the weights flipped in place. Measured on an Intel
// Xeon, ASPP 1x256x65x65 d=6, the ops alone (medians): forward 15.0 -> 10.0 ms,
// grad_input 15.5 -> 9.3 ms against the direct kernels; the GEMMs are two thirds of it.
// Only where it pays, measured on an Intel Xeon (ops alone, against the direct kernels):
//   - at least kWinogradMinChannels in and out: the transforms cost per channel, the
//     GEMMs save per channel pair. 128x65x65 d=2 forward 4.1 -> 2.9 ms, 192x65x65 d=6
//     8.2 -> 6.2 ms; but 64x65x65 d=6 1.05 -> 1.17-1.46 ms, 32 channels slower still;
//   - tiles that are mostly outputs: a residue with an odd count of outputs ends in a
//     half-empty tile, and at large d on a small image many do. kMinSaving (x 4) is the
//     least direct products per Winograd product that the tiles must give (2.25 with no
//     empty tile slots): ASPP 256x65x65 gives 1.94 (d=6) and 1.83 (d=12, 18) and wins;
//     256x33x33 d=12 gives 1.39 and was slower, 3.0 -> 3.9 ms.
// Operands that are not finite, or large enough that the transforms and sums could
// overflow where the direct products would not, take the direct kernels (use_winograd):
// the transforms' differences would turn an infinity into NaN (as the pair kernel's
// would) where F.conv2d gives an infinity. So does float32 while PyTorch lets oneDNN
// run float32 GEMMs in bfloat16 (float32_gemms_exact).
constexpr int64_t kWinogradMinChannels = 128;
constexpr int64_t kMinSaving = 7;  // 1.75, in quarters

// The first output of each tile along an axis of `size` outputs, dilation d: per
// residue r < d, r, r + 2d, r + 4d, ...
inline std::vector<int64_t> tile_origins(int64_t size, int64_t d) {
  std::vector<int64_t> origins;
  for (int64_t r = 0; r < std::min(d, size); ++r)
    for (int64_t y = r; y < size; y += 2 * d) origins.push_back(y);
  return origins;
}

// The tiles of every image of g.
inline int64_t winograd_tiles(const Geometry& g) {
  return g.batch * int64_t(tile_origins(g.out_h, g.dilation_h).size() *
                           tile_origins(g.out_w, g.dilation_w).size());
}

inline bool takes_winograd(const Geometry& g) {
  if (g.kernel_h != 3 || g.kernel_w != 3 || g.stride_h != 1 || g.stride_w != 1 ||
      g.groups != 1 || g.in_channels < kWinogradMinChannels ||
      g.out_channels < kWinogradMinChannels || g.batch * g.out_h * g.out_w == 0)
    return false;
  // direct / Winograd products, in quarters
  return 4 * 9 * g.batch * g.out_h * g.out_w >= kMinSaving * 16 * winograd_tiles(g);
}

// Tiles per task of `count`: at most what keeps the task's transformed inputs and
// products (16 x tiles x C and x O) each in a ThreadScratch slot kept between calls, in
// an even number of equal tasks (ASPP's 1225 tiles: 10 of 123, not 9 of 128 and one
// of 73, which left a thread waiting). From the shape only, not the thread count, so
// that the GEMMs' shapes, and so their sums' order, do not change with it.
template <typename T>
int64_t winograd_chunk(const Geometry& g, int64_t count) {
  const int64_t widest = std::max(g.in_channels, g.out_channels);
  const int64_t most =
      std::max<int64_t>(1, int64_t(ThreadScratch<T>::kKeptBytes / sizeof(T)) / (16 * widest));
  int64_t tasks = tiles_to_cover(count, most);
  if (tasks > 1) tasks = round_up(tasks, 2);
  return tiles_to_cover(count, tasks);
}

// Pixels per task of the moves between NCHW and channels-last: their rows of the
// destination stay in L1.
constexpr int64_t kPixelsPerTask = 64;

// Moves between NCHW (N, C, plane) and pixel-major (pixel p of image n at
// (n * plane + p) * pixel_stride, its C channels contiguous, the columns past C
// untouched), kPixelsPerTask pixels at a time through the ISA's register transpose (a
// value at a time, this took 7.5% of a WaveNet training step): the Winograd path's
// channels-last copies (pixel_stride C).
template <typename T, typename Kernels>
void move_between_layouts(Kernels kernels, bool to_pixel_major, const T* src, int64_t batch,
                          int64_t channels, int64_t plane, int64_t pixel_stride, T* dst) {
  const int64_t tasks = tiles_to_cover(plane, kPixelsPerTask);
  at::parallel_for(0, batch * tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tasks, p0 = task % tasks * kPixelsPerTask;
      const int64_t pixels = std::min(kPixelsPerTask, plane - p0);
      const int64_t nchw = n * channels * plane + p0, pixel_major = (n * plane + p0) * pixel_stride;
      if (to_pixel_major)
        kernels.transpose(src + nchw, plane, channels, pixels, dst + pixel_major, pixel_stride);
      else
        kernels.transpose(src + pixel_major, pixel_stride, pixels, channels, dst + nchw, plane);
    }
  });
}

// NCHW src pixel-major into dst.
template <typename T, typename Kernels>
void copy_pixel_major(Kernels kernels, const T* src, int64_t batch, int64_t channels,
                      int64_t plane, int64_t pixel_stride, T* dst) {
  move_between_layouts<T>(kernels, true, src, batch, channels, plane, pixel_stride, dst);
}

// Pixel-major src back into NCHW dst.
template <typename T, typename Kernels>
void copy_channel_major(Kernels kernels, const T* src, int64_t batch, int64_t channels,
                        int64_t plane, int64_t pixel_stride, T* dst) {
  move_between_layouts<T>(kernels, false, src, batch, channels, plane, pixel_stride, dst);
}

// The buffers a call shares among its threads (channels-last copies, transformed weights,
// the weight gradient's sums), carved from one ThreadScratch of the calling thread in
// kCallSlot, kept between calls up to kCallKeptBytes. Fresh tensors cost page faults on
// every call once the allocator hands memory back, as it does when another op frees a
// large buffer between two of ours: after a oneDNN d=6 ASPP call, ours took 16.0 ms
// against 12.9 ms after one of its own (Intel Xeon).
constexpr int kCallSlot = 2;  // the tasks' own scratch uses slots 0 and 1
template <typename T>
class CallBuffers {
 public:
  explicit CallBuffers(std::initializer_list<int64_t> sizes)
      : scratch_(kCallSlot, total(sizes), ThreadScratch<T>::kCallKeptBytes) {
    T* next = scratch_.data();
    for (const int64_t size : sizes) {
      parts_.push_back(next);
      next += round_up(size, kAlign);
    }
  }
  T* operator[](int i) const { return parts_[i]; }

 private:
  static constexpr int64_t kAlign = 64 / sizeof(T);  // each part on its own cache line
  static int64_t total(std::initializer_list<int64_t> sizes) {
    int64_t sum = 0;
    for (const int64_t size : sizes) sum += round_up(size, kAlign);
    return sum;
  }
  ThreadScratch<T> scratch_;
  std::vector<T*> parts_;
};

// The tile origins of a convolution's outputs (tile_origins along each axis).
struct WinogradGrid {
  std::vector<int64_t> ys, xs;
  explicit WinogradGrid(const Geometry& g)
      : ys(tile_origins(g.out_h, g.dilation_h)), xs(tile_origins(g.out_w, g.dilation_w)) {}
  WinogradTiles tiles() const {
    return {ys.data(), int64_t(ys.size()), xs.data(), int64_t(xs.size())};
  }
};

// With `flipped`, `weight` is (C, O, 3, 3) and the convolution's filters are its flipped
// transpose, w[c][o] turned by 180 degrees (grad_input's convolution), read in place.
template <typename T, typename Kernels>
void forward_winograd(Kernels kernels, const Geometry& g, const at::Tensor& input,
                      const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output,
                      bool flipped) {
  const int64_t in_c = g.in_channels, out_c = g.out_channels, out_plane = g.out_h * g.out_w;
  // Per input channel c, its filters' taps (9, O), then transformed into u (16, C, O),
  // the GEMMs' right-hand side, contiguous (as a transposed view of (16, O, C), MKL took
  // 12% longer over ASPP's tiles).
  const int64_t in_size = g.batch * g.in_h * g.in_w * in_c, out_size = g.batch * out_plane * out_c;
  const CallBuffers<T> buffers({16 * in_c * out_c, in_size, out_size});
  const at::Tensor u = at::from_blob(buffers[0], {16, in_c, out_c}, weight.options());
  T* in_last = buffers[1];
  T* out_last = buffers[2];
  const T* w = weight.const_data_ptr<T>();
  at::parallel_for(0, in_c, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> taps(0, 9 * out_c);
    for (int64_t c = begin; c < end; ++c) {
      if (flipped)  // w[c] is (O, 9)
        kernels.transpose(w + c * out_c * 9, 9, out_c, 9, taps.data(), out_c);
      else  // w[o][c] is 9 apart from w[o + 1][c]'s C * 9
        kernels.transpose(w + c * 9, in_c * 9, out_c, 9, taps.data(), out_c);
      kernels.winograd_weights(taps.data(), out_c, buffers[0] + c * out_c, in_c * out_c, flipped);
    }
  });
  // The input channels-last; the output computed so, then moved into NCHW.
  copy_pixel_major<T>(kernels, input.const_data_ptr<T>(), g.batch, in_c, g.in_h * g.in_w, in_c,
                      in_last);
  const WinogradGrid grid(g);
  const WinogradTiles tiles = grid.tiles();
  const int64_t count = g.batch * tiles.rows * tiles.columns, chunk = winograd_chunk<T>(g, count);
  const T* b = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  // at::parallel_for's threads start from default thread-local state, so the ATen calls
  // in them take the caller's (inference mode, grad mode): without it, the backward in
  // torch.inference_mode() failed on the in-place addmm_ of an inference tensor.
  const at::ThreadLocalState state;
  at::parallel_for(0, tiles_to_cover(count, chunk), 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    const ThreadScratch<T> transformed(0, 16 * chunk * in_c), products(1, 16 * chunk * out_c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task * chunk, n = std::min(chunk, count - first);
      kernels.winograd_input_tiles(g, tiles, in_last, first, n, n,
                                   transformed.data());
      at::Tensor m = at::from_blob(products.data(), {16, n, out_c}, output.options());
      at::bmm_out(m, at::from_blob(transformed.data(), {16, n, in_c}, input.options()), u);
      kernels.winograd_output_tiles(g, tiles, products.data(), first, n, b, out_last);
    }
  });
  // (N, out_h, out_w, O) -> (N, O, out_h, out_w).
  copy_channel_major<T>(kernels, out_last, g.batch, out_c, out_plane, out_c,
                        output.data_ptr<T>());
}

// The weight gradient of the same convolutions: per transform point xi, dU[xi] (O, C)
// = sum over tiles of dM[xi]^T V[xi], V the input's transform as in the forward and dM =
// A dY A^T the output gradient's; then dW = G^T dU G per (output, input channel). One
// GEMM of the forward's size, where the direct kernel takes 36 products per tile and
// pair (measured, ASPP d=6 on an Intel Xeon: 16.1 -> 12.6 ms). The tiles go in chunks, one after
// the other, each chunk's 16 GEMMs in parallel adding into their dU[xi]: every dU[xi]
// sums its chunks in one order whatever the thread count.
template <typename T, typename Kernels>
void backward_weight_winograd(Kernels kernels, const Geometry& g, const at::Tensor& grad_output,
                              const at::Tensor& input, at::Tensor& grad_weight) {
  const int64_t in_c = g.in_channels, out_c = g.out_channels;
  const WinogradGrid grid(g);
  const WinogradTiles tiles = grid.tiles();
  const int64_t count = g.batch * tiles.rows * tiles.columns, chunk = winograd_chunk<T>(g, count);
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const CallBuffers<T> buffers({g.batch * in_plane * in_c, g.batch * out_plane * out_c,
                                16 * chunk * in_c, 16 * chunk * out_c, 16 * out_c * in_c});
  T* in_last = buffers[0];
  T* grad_last = buffers[1];
  copy_pixel_major<T>(kernels, input.const_data_ptr<T>(), g.batch, in_c, in_plane, in_c, in_last);
  copy_pixel_major<T>(kernels, grad_output.const_data_ptr<T>(), g.batch, out_c, out_plane, out_c,
                      grad_last);
  const at::Tensor v = at::from_blob(buffers[2], {16, chunk, in_c}, input.options());
  const at::Tensor dm = at::from_blob(buffers[3], {16, chunk, out_c}, input.options());
  at::Tensor du = at::from_blob(buffers[4], {16, out_c, in_c}, input.options());
  du.zero_();
  const at::ThreadLocalState state;
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t n = std::min(chunk, count - first);
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
      kernels.winograd_input_tiles(g, tiles, in_last, first + begin,
                                   end - begin, chunk, v.data_ptr<T>() + begin * in_c);
      kernels.winograd_grad_output_tiles(g, tiles, grad_last, first + begin,
                                         end - begin, chunk, dm.data_ptr<T>() + begin * out_c);
    });
    at::parallel_for(0, 16, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(state);  // as in forward_winograd
      for (int64_t xi = begin; xi < end; ++xi) {
        at::Tensor du_xi = du[xi];
        du_xi.addmm_(dm[xi].narrow(0, 0, n).t(), v[xi].narrow(0, 0, n));
      }
    });
  }
  at::parallel_for(0, out_c, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> taps(0, 9 * in_c);
    for (int64_t o = begin; o < end; ++o) {
      kernels.winograd_weight_grad(du.const_data_ptr<T>() + o * in_c, in_c, out_c * in_c,
                                   taps.data());
      kernels.transpose(taps.data(), in_c, 9, in_c, grad_weight.data_ptr<T>() + o * in_c * 9, 9);
    }
  });
}

// Whether float32 GEMMs (at::bmm, addmm_) keep float32: under
// torch.set_float32_matmul_precision('medium') (or torch.backends.mkldnn.matmul
// .fp32_precision = 'bf16') oneDNN runs them in bfloat16 on CPUs that have it, and the
// Winograd results drifted to 4e-3 where F.conv2d and the direct kernels stay exact.
inline bool float32_gemms_exact() {
  const at::Float32Precision precision =
      at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
  return precision == at::Float32Precision::IEEE || precision == at::Float32Precision::NONE;
}

// Whether g takes the Winograd kernels with operands a and b: every value finite, and
// |a| |b| growth < the type's largest value, growth bounding how far the transforms and
// sums can take a product (forward_growth, weight_grad_growth).
template <typename T, typename Kernels>
bool use_winograd(Kernels kernels, const Geometry& g, const at::Tensor& a, const at::Tensor& b,
                  double growth) {
  if (!takes_winograd(g)) return false;
  if (std::is_same_v<T, float> && !float32_gemms_exact()) return false;
  // The largest |value| of t, in parallel chunks (a max: the same whatever the split).
  const auto largest = [&](const at::Tensor& t) {
    constexpr int64_t kChunk = 1 << 16;
    const int64_t n = t.numel(), chunks = tiles_to_cover(n, kChunk);
    std::vector<T> parts(chunks, T(0));
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        parts[c] = kernels.max_abs(t.const_data_ptr<T>() + c * kChunk,
                                   std::min(kChunk, n - c * kChunk), T(0));
    });
    return double(parts.empty() ? T(0) : *std::max_element(parts.begin(), parts.end()));
  };
  // false where either is infinite (max_abs's answer for a value that is not finite)
  return largest(a) * largest(b) * growth < double(std::numeric_limits<T>::max());
}

// An output of the forward (or of grad_input's convolution) is A^T M A, 9 terms of M
// at most, M a sum over `in_channels` of U V, |U| <= 9/4 |w| (G's rows sum to 3/2 at
// most) and |V| <= 4 |x| (B^T x B takes 4 values): 81 in_channels |x| |w|.
inline double forward_growth(int64_t in_channels) { return 81.0 * double(in_channels); }

// dW = G^T dU G, 4 |dU| at most (G^T's rows sum to 2), dU a sum over the tiles of
// dM V, |dM| <= 4 |dY| (A's rows sum to 2), |V| <= 4 |x|: 64 tiles |dY| |x|.
inline double weight_grad_growth(const Geometry& g) {
  return 64.0 * double(winograd_tiles(g));
}

}  // namespace fastdl::dilated_conv
