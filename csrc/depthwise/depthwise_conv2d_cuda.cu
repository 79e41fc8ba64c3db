// CUDA depthwise convolution. Accumulates in float (double for float64).
//   - forward, NCHW: shared-memory tiles with halo. A block loads the input its
//     output tile reads (zeros in the padding) once, then each thread computes
//     kRowsPerThread outputs down a column from shared memory, taps included. With
//     row stride 1 and dilation 1 a register window slides down each kernel column:
//     one shared load per tap for the 4 outputs. The loops are unrolled for 3x3, 5x5
//     and 7x7; any other kernel (RepLKNet's large ones too, up to the 48 KiB tile)
//     has runtime bounds. No input or weight is read from global memory K*K times.
//   - forward, channels_last: consecutive threads take consecutive channels, so
//     every load coalesces; each thread computes kColsPerThread outputs along a
//     row, and for 3x3 to 7x7 with column stride 1 or 2 (dilation 1) loads each
//     input column once for all of them (R + K - 1 loads per kernel row instead of
//     R * K at stride 1); other kernels slide the window along the kernel row.
//   - grad_input with stride 1 and multiplier 1 (MobileNet, ConvNeXt, RepLKNet) is
//     the forward convolution of grad_output with the taps flipped (padding
//     (K - 1) * dilation - padding), so it runs on the two paths above; other
//     strides and multipliers gather per input element (input_grad_kernel).
//   - grad_weight/grad_bias, 3x3 to 7x7: each thread sums all K*K + 1 products over
//     its share of a chunk of pixels (grad_output read once), blocks reduce per
//     channel, a second kernel adds the chunks; other kernels: one block per
//     (output channel, tap). Both in a fixed order: deterministic, no atomics, and
//     a larger batch adds chunks rather than contention.
// Tile sizes and outputs per thread are first choices, checked for correctness on
// the CPU emulator (tests/test_cuda_emulated.py) but not yet tuned on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "depthwise/depthwise_conv2d.h"

namespace fastdl::depthwise {
namespace {

using cuda::kThreadsPerBlock;

// Element strides of a 4-D tensor (N, C, H, W) in either memory format.
struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Blocks for a grid-stride loop over `n` elements.
unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(cuda::ceil_div<int64_t>(n, kThreadsPerBlock), 65535 * 8));
}

// Splits a flat index into (n, c, h, w); channels fastest for NHWC so that a warp
// touches neighbouring channels.
struct Position {
  int64_t n, c, h, w;
};

__device__ __forceinline__ Position unflatten(int64_t index, int64_t C, int64_t H, int64_t W,
                                             bool channels_last) {
  Position p;
  if (channels_last) {
    p.c = index % C;
    index /= C;
    p.w = index % W;
    index /= W;
    p.h = index % H;
    p.n = index / H;
  } else {
    p.w = index % W;
    index /= W;
    p.h = index % H;
    index /= H;
    p.c = index % C;
    p.n = index / C;
  }
  return p;
}

// a / b, and a % b in remainder, computed in I: callers pass uint32_t when every value
// fits, since 64-bit division is a long software routine on the GPU.
template <typename I>
__device__ __forceinline__ int64_t divide(int64_t a, int64_t b, int64_t& remainder) {
  const I q = static_cast<I>(a) / static_cast<I>(b);
  remainder = static_cast<int64_t>(static_cast<I>(a) - q * static_cast<I>(b));
  return static_cast<int64_t>(q);
}

__device__ __forceinline__ int64_t divide(int64_t a, int64_t b, int64_t& remainder, bool narrow) {
  return narrow ? divide<uint32_t>(a, b, remainder) : divide<int64_t>(a, b, remainder);
}

// Index of tap (kh, kw) in a channel's weights; `flip` turns the kernel by 180
// degrees, which makes the forward kernels compute grad_input (see the header).
__device__ __forceinline__ int tap_index(int kh, int kw, int kernel_h, int kernel_w, bool flip) {
  return flip ? (kernel_h - 1 - kh) * kernel_w + (kernel_w - 1 - kw) : kh * kernel_w + kw;
}

// --- direct: one thread per output; where a tile overflows shared memory ----------

template <typename scalar_t, int KH, int KW>
__global__ void forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                               Geometry g, Strides in_s, Strides out_s, bool flip) {
  using acc_t = at::opmath_type<scalar_t>;
  const int kernel_h = KH > 0 ? KH : static_cast<int>(g.kernel_h);
  const int kernel_w = KW > 0 ? KW : static_cast<int>(g.kernel_w);
  const int64_t total = g.batch * g.out_channels() * g.out_h * g.out_w;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const Position o = unflatten(index, g.out_channels(), g.out_h, g.out_w, /*channels_last=*/false);
    const int64_t c = o.c / g.multiplier;
    const scalar_t* in = input + o.n * in_s.n + c * in_s.c;
    const scalar_t* w = weight + o.c * kernel_h * kernel_w;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[o.c]) : acc_t(0);
#pragma unroll
    for (int kh = 0; kh < kernel_h; ++kh) {
      const int64_t ih = o.h * g.stride_h - g.pad_h + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
#pragma unroll
      for (int kw = 0; kw < kernel_w; ++kw) {
        const int64_t iw = o.w * g.stride_w - g.pad_w + kw * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        acc += static_cast<acc_t>(__ldg(w + tap_index(kh, kw, kernel_h, kernel_w, flip))) *
               static_cast<acc_t>(__ldg(in + ih * in_s.h + iw * in_s.w));
      }
    }
    out[o.n * out_s.n + o.c * out_s.c + o.h * out_s.h + o.w * out_s.w] = static_cast<scalar_t>(acc);
  }
}

// --- NCHW: shared-memory tiles with halo ------------------------------------------

constexpr int kRowsPerThread = 4;
constexpr int kTileThreadRows = 8;

// The input rectangle an output tile of tile_h x tile_w reads, halo included.
struct InputTile {
  int rows, cols;
};

// Block (tile, plane-slot): blockDim.x x (blockDim.y * kRowsPerThread) outputs of each
// of blockDim.z (image, output channel) planes per pass, then the planes gridDim.y *
// blockDim.z further on. Several planes a block keep the threads busy on small maps
// (MobileNet's 14x14 and 7x7). Each plane's taps sit in shared memory after its
// tile. K > 0: a K x K kernel, its loops unrolled; K == 0: any kernel.
template <typename scalar_t, int K>
__global__ void __launch_bounds__(kThreadsPerBlock, 3)  // <= 85 registers: 3 blocks per SM
    forward_tiled_nchw_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                              const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                              Geometry g, Strides in_s, Strides out_s, InputTile t, bool flip) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int kernel_h = K > 0 ? K : static_cast<int>(g.kernel_h);
  const int kernel_w = K > 0 ? K : static_cast<int>(g.kernel_w);
  const int taps = kernel_h * kernel_w;
  // threadIdx.z's plane: its input tile, then its taps (read by all its threads at
  // once: a broadcast)
  acc_t* tile = reinterpret_cast<acc_t*>(shared_bytes) + threadIdx.z * (t.rows * t.cols + taps);
  acc_t* shared_taps = tile + t.rows * t.cols;
  const int stride_h = static_cast<int>(g.stride_h), stride_w = static_cast<int>(g.stride_w);
  const int dilation_h = static_cast<int>(g.dilation_h), dilation_w = static_cast<int>(g.dilation_w);
  const int tile_w = blockDim.x, tile_h = blockDim.y * kRowsPerThread;
  const int64_t tiles_w = cuda::ceil_div<int64_t>(g.out_w, tile_w);
  const int64_t oh0 = blockIdx.x / tiles_w * tile_h, ow0 = blockIdx.x % tiles_w * tile_w;
  const int64_t ih0 = oh0 * g.stride_h - g.pad_h, iw0 = ow0 * g.stride_w - g.pad_w;
  const int threads = blockDim.x * blockDim.y, thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t out_channels = g.out_channels(), planes = g.batch * out_channels;
  const int64_t ow = ow0 + threadIdx.x;
  const int first_row = threadIdx.y * kRowsPerThread;  // of this thread's outputs, in the tile

  for (int64_t first = int64_t(blockIdx.y) * blockDim.z; first < planes; first += int64_t(gridDim.y) * blockDim.z) {
    const int64_t plane = first + threadIdx.z;
    const int64_t n = plane / out_channels, oc = plane % out_channels, c = oc / g.multiplier;
    const scalar_t* src = input + n * in_s.n + c * in_s.c;
    const scalar_t* w = weight + oc * taps;
    __syncthreads();  // every thread is done reading the previous planes' tiles
    if (plane < planes) {
      for (int i = thread; i < t.rows * t.cols; i += threads) {
        const int64_t ih = ih0 + i / t.cols, iw = iw0 + i % t.cols;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        tile[i] = inside ? static_cast<acc_t>(__ldg(src + ih * in_s.h + iw * in_s.w)) : acc_t(0);
      }
      for (int i = thread; i < taps; i += threads)
        shared_taps[i] = static_cast<acc_t>(w[tap_index(i / kernel_w, i % kernel_w, kernel_h, kernel_w, flip)]);
    }
    __syncthreads();
    if (plane >= planes || ow >= g.out_w) continue;

    const acc_t init = bias != nullptr ? static_cast<acc_t>(__ldg(bias + oc)) : acc_t(0);
    acc_t acc[kRowsPerThread];
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) acc[r] = init;
    const int row_step = stride_h * t.cols;  // between a thread's outputs, in the tile
    const acc_t* column = tile + first_row * row_step + threadIdx.x * stride_w;
    if (stride_h == 1 && dilation_h == 1) {
      // Slide a window of the thread's kRowsPerThread outputs down each kernel column.
      // Output r reads tile row first_row + r + kh, so each step shifts the window by
      // one row and loads one new value: 2 shared loads (tap and value) per
      // kRowsPerThread FMAs instead of kRowsPerThread + 1 (7x7: 119 loads for 4
      // outputs instead of 245).
      for (int kw = 0; kw < kernel_w; ++kw) {
        const acc_t* tile_column = column + kw * dilation_w;
        acc_t window[kRowsPerThread];
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) window[r] = tile_column[r * t.cols];
        for (int kh = 0; kh < kernel_h; ++kh) {
          const acc_t tap = shared_taps[kh * kernel_w + kw];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) acc[r] += tap * window[r];
#pragma unroll
          for (int r = 0; r + 1 < kRowsPerThread; ++r) window[r] = window[r + 1];
          // the last step's next row would be one past the tile
          if (kh + 1 < kernel_h) window[kRowsPerThread - 1] = tile_column[(kRowsPerThread + kh) * t.cols];
        }
      }
    } else {
      // Kernel rows stay a loop: unrolled, ptxas schedules every row's loads at once
      // (~200 for 7x7 and 4 outputs) and spills.
#pragma unroll 1
      for (int kh = 0; kh < kernel_h; ++kh) {
        const acc_t* tile_row = column + kh * dilation_h * t.cols;
        const acc_t* row_taps = shared_taps + kh * kernel_w;
#pragma unroll
        for (int kw = 0; kw < kernel_w; ++kw) {
          const acc_t tap = row_taps[kw];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) acc[r] += tap * tile_row[r * row_step + kw * dilation_w];
        }
      }
    }
    scalar_t* dst = out + n * out_s.n + oc * out_s.c + ow * out_s.w;
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int64_t oh = oh0 + first_row + r;
      if (oh < g.out_h) dst[oh * out_s.h] = static_cast<scalar_t>(acc[r]);
    }
  }
}

// --- channels_last: several outputs along a row per thread -------------------------

constexpr int kColsPerThread = 4;

// Thread (n, oh, group of kColsPerThread columns, oc), channels fastest. K > 0: a
// K x K kernel. WINDOW_STRIDE (1 or 2; the column stride, with column dilation 1):
// the thread's outputs share input columns, and it loads each once into registers,
// (R - 1) * stride + K loads per kernel row instead of R * K. 0: any kernel; with
// column stride 1 and dilation 1 a window slides along the kernel row (one load per
// tap), otherwise a load per tap and output. weight is (taps, out_channels), taps
// first, so the warp's 32 channels load each tap in one coalesced access.
template <typename scalar_t, int K, int WINDOW_STRIDE>
__global__ void forward_nhwc_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                    const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                    Geometry g, Strides in_s, Strides out_s, bool flip) {
  static_assert(WINDOW_STRIDE == 0 || K > 0, "the register window needs a compile-time kernel width");
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int R = kColsPerThread;
  const int kernel_h = K > 0 ? K : static_cast<int>(g.kernel_h);
  const int kernel_w = K > 0 ? K : static_cast<int>(g.kernel_w);
  const int64_t out_channels = g.out_channels(), column_groups = cuda::ceil_div<int64_t>(g.out_w, R);
  const int64_t total = g.batch * g.out_h * column_groups * out_channels;
  const bool narrow = total <= std::numeric_limits<uint32_t>::max();
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    int64_t oc, group, oh;
    int64_t rest = divide(index, out_channels, oc, narrow);
    rest = divide(rest, column_groups, group, narrow);
    const int64_t n = divide(rest, g.out_h, oh, narrow), ow0 = group * R;
    const scalar_t* src = input + n * in_s.n + oc / g.multiplier * in_s.c;
    const scalar_t* w = weight + oc;  // tap t at w[t * out_channels]
    const acc_t init = bias != nullptr ? static_cast<acc_t>(__ldg(bias + oc)) : acc_t(0);
    acc_t acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = init;
    // Kernel rows stay a loop above 3x3: unrolled, ptxas hoists every row's tap loads
    // (236 registers for 7x7 in float).
#pragma unroll(K == 3 ? 3 : 1)
    for (int kh = 0; kh < kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const scalar_t* row = src + ih * in_s.h;
      if constexpr (WINDOW_STRIDE > 0) {
        constexpr int span = (R - 1) * WINDOW_STRIDE + K;
        acc_t window[span];  // input columns ow0 * stride - pad_w + j
#pragma unroll
        for (int j = 0; j < span; ++j) {
          const int64_t iw = ow0 * WINDOW_STRIDE - g.pad_w + j;
          window[j] = iw >= 0 && iw < g.in_w ? static_cast<acc_t>(__ldg(row + iw * in_s.w)) : acc_t(0);
        }
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const acc_t tap = static_cast<acc_t>(__ldg(w + tap_index(kh, kw, K, K, flip) * out_channels));
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r] += tap * window[r * WINDOW_STRIDE + kw];
        }
      } else if (g.stride_w == 1 && g.dilation_w == 1) {
        // Any other kernel (large ones): slide the R outputs' window along the kernel
        // row, one new load per tap instead of R.
        auto value = [&](int64_t iw) {
          return iw >= 0 && iw < g.in_w ? static_cast<acc_t>(__ldg(row + iw * in_s.w)) : acc_t(0);
        };
        acc_t window[R];  // input columns ow0 - pad_w + kw + r
#pragma unroll
        for (int r = 0; r < R; ++r) window[r] = value(ow0 - g.pad_w + r);
        for (int kw = 0; kw < kernel_w; ++kw) {
          const acc_t tap =
              static_cast<acc_t>(__ldg(w + tap_index(kh, kw, kernel_h, kernel_w, flip) * out_channels));
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r] += tap * window[r];
#pragma unroll
          for (int r = 0; r + 1 < R; ++r) window[r] = window[r + 1];
          if (kw + 1 < kernel_w) window[R - 1] = value(ow0 - g.pad_w + R + kw);
        }
      } else {
#pragma unroll
        for (int kw = 0; kw < kernel_w; ++kw) {
          const acc_t tap =
              static_cast<acc_t>(__ldg(w + tap_index(kh, kw, kernel_h, kernel_w, flip) * out_channels));
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int64_t iw = (ow0 + r) * g.stride_w - g.pad_w + kw * g.dilation_w;
            if (iw >= 0 && iw < g.in_w) acc[r] += tap * static_cast<acc_t>(__ldg(row + iw * in_s.w));
          }
        }
      }
    }
    scalar_t* dst = out + n * out_s.n + oc * out_s.c + oh * out_s.h;
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (ow0 + r < g.out_w) dst[(ow0 + r) * out_s.w] = static_cast<scalar_t>(acc[r]);
  }
}

template <typename scalar_t>
__global__ void input_grad_kernel(const scalar_t* __restrict__ grad_out,
                                  const scalar_t* __restrict__ weight, scalar_t* __restrict__ grad_in,
                                  Geometry g, Strides go_s, Strides gi_s, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = g.batch * g.channels * g.in_h * g.in_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const Position i = unflatten(index, g.channels, g.in_h, g.in_w, channels_last);
    acc_t acc = 0;
    for (int64_t k = 0; k < g.multiplier; ++k) {
      const int64_t oc = i.c * g.multiplier + k;
      const scalar_t* go = grad_out + i.n * go_s.n + oc * go_s.c;
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        int64_t ho;
        if (!output_reading(i.h, kh, g.stride_h, g.pad_h, g.dilation_h, g.out_h, ho)) continue;
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          int64_t wo;
          if (!output_reading(i.w, kw, g.stride_w, g.pad_w, g.dilation_w, g.out_w, wo)) continue;
          acc += static_cast<acc_t>(__ldg(weight + oc * taps + kh * g.kernel_w + kw)) *
                 static_cast<acc_t>(__ldg(go + ho * go_s.h + wo * go_s.w));
        }
      }
    }
    grad_in[i.n * gi_s.n + i.c * gi_s.c + i.h * gi_s.h + i.w * gi_s.w] = static_cast<scalar_t>(acc);
  }
}

// Sum over the block of one value per thread, in a fixed order.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value) {
  __shared__ acc_t partial[kThreadsPerBlock / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(cuda::kFullWarpMask, value, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < kThreadsPerBlock / 32; ++i) total += partial[i];
  return total;
}

// Any kernel size: block (oc, t) makes grad_weight[oc, t] for t < taps, grad_bias[oc]
// for t == taps.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    weight_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ input,
                       scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias,
                       Geometry g, Strides go_s, Strides in_s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t oc = blockIdx.x / (taps + 1), t = blockIdx.x % (taps + 1);
  const bool is_bias = t == taps;
  if ((is_bias && grad_bias == nullptr) || (!is_bias && grad_weight == nullptr)) return;
  const int64_t kh = is_bias ? 0 : t / g.kernel_w, kw = is_bias ? 0 : t % g.kernel_w;
  const int64_t c = oc / g.multiplier;
  const int64_t per_image = g.out_h * g.out_w, total = g.batch * per_image;
  acc_t acc = 0;
  for (int64_t index = threadIdx.x; index < total; index += blockDim.x) {
    const int64_t n = index / per_image, ho = (index % per_image) / g.out_w, wo = index % g.out_w;
    const acc_t go = static_cast<acc_t>(__ldg(grad_out + n * go_s.n + oc * go_s.c + ho * go_s.h + wo * go_s.w));
    if (is_bias) {
      acc += go;
      continue;
    }
    const int64_t ih = ho * g.stride_h - g.pad_h + kh * g.dilation_h;
    const int64_t iw = wo * g.stride_w - g.pad_w + kw * g.dilation_w;
    if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
      acc += go * static_cast<acc_t>(__ldg(input + n * in_s.n + c * in_s.c + ih * in_s.h + iw * in_s.w));
  }
  const acc_t total_sum = block_sum(acc);
  if (threadIdx.x == 0) {
    if (is_bias)
      grad_bias[oc] = static_cast<scalar_t>(total_sum);
    else
      grad_weight[oc * taps + t] = static_cast<scalar_t>(total_sum);
  }
}

// --- grad_weight and grad_bias for 3x3, 5x5 and 7x7: per-thread tap sums ----------
//
// Block (channel group, pixel chunk). Each thread walks its share of the chunk's
// output pixels once, reading each grad_output value once (the kernel above reads it
// K*K + 1 times) and the K*K input values it met, and keeps K*K + 1 sums, the last
// for the bias. The block reduces them per channel in a fixed order and writes one
// partial per (chunk, channel, tap); weight_grad_finish_kernel adds the chunks in
// order. Deterministic, no atomics, and a larger batch only adds chunks.
//   NCHW: a block is one output channel; its 8 warps take consecutive pixels.
//   channels_last: a block is 32 consecutive channels x 8 pixel lanes, so each load
//   of a pixel's channels coalesces.
constexpr int kWeightGradLanes = 8;  // warps (NCHW) or pixel lanes (channels_last) per block

template <typename scalar_t, int K, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kThreadsPerBlock)
    weight_grad_partial_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ input,
                               at::opmath_type<scalar_t>* __restrict__ partial, Geometry g, Strides go_s,
                               Strides in_s, int64_t chunk_pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int taps = K * K;
  __shared__ acc_t lane_sums[kWeightGradLanes][32];  // channels_last's per-lane sums
  const int64_t out_channels = g.out_channels();
  const int64_t oc = CHANNELS_LAST ? blockIdx.x * 32 + threadIdx.x : blockIdx.x;
  const int lane = CHANNELS_LAST ? threadIdx.y : threadIdx.x;  // among the threads of a channel
  const int lanes = CHANNELS_LAST ? blockDim.y : blockDim.x;
  const int64_t per_image = g.out_h * g.out_w, pixels = g.batch * per_image;
  const int64_t begin = blockIdx.y * chunk_pixels, end = std::min(begin + chunk_pixels, pixels);

  acc_t sums[taps + 1];
#pragma unroll
  for (int t = 0; t <= taps; ++t) sums[t] = 0;
  if (oc < out_channels) {
    const int64_t c = oc / g.multiplier;
    const bool narrow = pixels <= std::numeric_limits<uint32_t>::max();
    for (int64_t p = begin + lane; p < end; p += lanes) {
      int64_t in_image, wo;
      const int64_t n = divide(p, per_image, in_image, narrow), ho = divide(in_image, g.out_w, wo, narrow);
      const acc_t go = static_cast<acc_t>(__ldg(grad_out + n * go_s.n + oc * go_s.c + ho * go_s.h + wo * go_s.w));
      sums[taps] += go;
      const scalar_t* src = input + n * in_s.n + c * in_s.c;
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int64_t ih = ho * g.stride_h - g.pad_h + kh * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const int64_t iw = wo * g.stride_w - g.pad_w + kw * g.dilation_w;
          if (iw >= 0 && iw < g.in_w)
            sums[kh * K + kw] += go * static_cast<acc_t>(__ldg(src + ih * in_s.h + iw * in_s.w));
        }
      }
    }
  }
  const bool writer = CHANNELS_LAST ? threadIdx.y == 0 : threadIdx.x == 0;
#pragma unroll
  for (int t = 0; t <= taps; ++t) {
    acc_t total = 0;
    if constexpr (CHANNELS_LAST) {  // each channel's 8 pixel lanes, a column of lane_sums
      lane_sums[threadIdx.y][threadIdx.x] = sums[t];
      __syncthreads();
      if (writer)
        for (int i = 0; i < kWeightGradLanes; ++i) total += lane_sums[i][threadIdx.x];
    } else {  // the whole block is one channel
      total = block_sum(sums[t]);
    }
    if (writer && oc < out_channels) partial[(blockIdx.y * out_channels + oc) * (taps + 1) + t] = total;
    __syncthreads();  // the shared sums are free for the next tap
  }
}

// Thread (oc, t): the sum over chunks, in order, of the partials above.
template <typename scalar_t>
__global__ void weight_grad_finish_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                          int64_t chunks, int64_t out_channels, int taps,
                                          scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_chunk = out_channels * (taps + 1);
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < per_chunk;
       index += int64_t(gridDim.x) * blockDim.x) {
    acc_t total = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * per_chunk + index];
    const int64_t oc = index / (taps + 1), t = index % (taps + 1);
    if (t < taps && grad_weight != nullptr) grad_weight[oc * taps + t] = static_cast<scalar_t>(total);
    if (t == taps && grad_bias != nullptr) grad_bias[oc] = static_cast<scalar_t>(total);
  }
}

void check_cuda_dtype(const char* op, const at::Tensor& input) {
  check_dtype(op, "input", input, {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16}, " on CUDA");
}

// K for the kernels unrolled for a K x K kernel (3, 5 or 7), else 0: the runtime loops.
int unrolled_kernel_size(const Geometry& g) {
  const bool unrolled = g.kernel_h == g.kernel_w && (g.kernel_h == 3 || g.kernel_h == 5 || g.kernel_h == 7);
  return unrolled ? static_cast<int>(g.kernel_h) : 0;
}

// The NCHW tiles: width 32, 16 or 8 as the output allows, up to kTileThreadRows x
// kRowsPerThread rows, and as many planes a block as fill kThreadsPerBlock threads
// and the default shared memory. nullopt where one plane's tile exceeds that memory
// (large dilations in float64): the direct kernel runs instead.
struct NchwPlan {
  dim3 grid, block;
  InputTile tile;
  size_t shared_bytes;
};

std::optional<NchwPlan> plan_nchw(const Geometry& g, size_t acc_bytes) {
  const int tile_w = g.out_w >= 32 ? 32 : g.out_w >= 16 ? 16 : 8;
  const int thread_rows =
      static_cast<int>(std::min<int64_t>(kTileThreadRows, cuda::ceil_div<int64_t>(g.out_h, kRowsPerThread)));
  const int64_t tile_h = thread_rows * kRowsPerThread;
  const int64_t shared_limit = static_cast<int64_t>(cuda::kDefaultSharedMemoryBytes);
  // A stride, dilation or kernel side above the elements shared memory holds cannot
  // fit; rejecting them first keeps the products below (and the kernel's int casts)
  // from overflowing on absurd arguments.
  const int64_t max_elements = shared_limit / static_cast<int64_t>(acc_bytes);
  for (const int64_t side : {g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, g.kernel_h, g.kernel_w})
    if (side > max_elements) return std::nullopt;
  const int64_t rows = (tile_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t cols = (tile_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  const int64_t plane_bytes = (rows * cols + g.kernel_h * g.kernel_w) * static_cast<int64_t>(acc_bytes);
  const int64_t tiles = cuda::ceil_div<int64_t>(g.out_h, tile_h) * cuda::ceil_div<int64_t>(g.out_w, tile_w);
  if (plane_bytes > shared_limit || tiles > std::numeric_limits<int32_t>::max()) return std::nullopt;
  const int64_t planes = g.batch * g.out_channels();
  const int64_t planes_per_block = std::min({int64_t(kThreadsPerBlock / (tile_w * thread_rows)),
                                             shared_limit / plane_bytes, planes});
  const int64_t plane_blocks = std::min<int64_t>(cuda::ceil_div(planes, planes_per_block), 65535);
  return NchwPlan{dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(plane_blocks)),
                  dim3(tile_w, thread_rows, static_cast<unsigned>(planes_per_block)),
                  InputTile{static_cast<int>(rows), static_cast<int>(cols)},
                  static_cast<size_t>(planes_per_block * plane_bytes)};
}

// out = depthwise convolution of `in` by `weight` (turned by 180 degrees if `flip`)
// over geometry g, plus bias if not null; in and out share a memory format, NCHW or
// channels_last (the kernels take any strides; the format picks the path).
template <typename scalar_t>
void launch_forward(const at::Tensor& in, const at::Tensor& weight, const scalar_t* bias,
                    const at::Tensor& out, const Geometry& g, bool channels_last, bool flip,
                    cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
  const scalar_t* w_ptr = weight.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int square = unrolled_kernel_size(g);
  if (channels_last) {
    const int64_t window_stride = g.dilation_w == 1 && g.stride_w <= 2 ? g.stride_w : 0;
    const int64_t threads = g.batch * g.out_h * cuda::ceil_div<int64_t>(g.out_w, kColsPerThread) * g.out_channels();
    // (taps, out_channels): a copy of K*K*C values, next to the N*H*W*C of the input
    const at::Tensor taps_first = weight.reshape({g.out_channels(), g.kernel_h * g.kernel_w}).t().contiguous();
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(threads), kThreadsPerBlock, 0, stream>>>(
          in_ptr, taps_first.const_data_ptr<scalar_t>(), bias, out_ptr, g, strides_of(in), strides_of(out), flip);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto launch_window = [&](auto stride) {
      if (square == 3)
        launch(forward_nhwc_kernel<scalar_t, 3, stride.value>);
      else if (square == 5)
        launch(forward_nhwc_kernel<scalar_t, 5, stride.value>);
      else
        launch(forward_nhwc_kernel<scalar_t, 7, stride.value>);
    };
    if (square > 0 && window_stride == 1)
      launch_window(std::integral_constant<int, 1>());
    else if (square > 0 && window_stride == 2)
      launch_window(std::integral_constant<int, 2>());
    else
      launch(forward_nhwc_kernel<scalar_t, 0, 0>);
    return;
  }
  if (const auto plan = plan_nchw(g, sizeof(acc_t))) {
    auto launch = [&](auto kernel) {
      kernel<<<plan->grid, plan->block, plan->shared_bytes, stream>>>(
          in_ptr, w_ptr, bias, out_ptr, g, strides_of(in), strides_of(out), plan->tile, flip);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (square == 3)
      launch(forward_tiled_nchw_kernel<scalar_t, 3>);
    else if (square == 5)
      launch(forward_tiled_nchw_kernel<scalar_t, 5>);
    else if (square == 7)
      launch(forward_tiled_nchw_kernel<scalar_t, 7>);
    else
      launch(forward_tiled_nchw_kernel<scalar_t, 0>);
    return;
  }
  auto launch = [&](auto kernel) {
    kernel<<<blocks_for(out.numel()), kThreadsPerBlock, 0, stream>>>(
        in_ptr, w_ptr, bias, out_ptr, g, strides_of(in), strides_of(out), flip);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (square == 3)
    launch(forward_kernel<scalar_t, 3, 3>);
  else if (square == 5)
    launch(forward_kernel<scalar_t, 5, 5>);
  else if (square == 7)
    launch(forward_kernel<scalar_t, 7, 7>);
  else
    launch(forward_kernel<scalar_t, 0, 0>);
}

// grad_input as a forward convolution (see the header): stride 1 and multiplier 1.
// grad_output plays the input, grad_input the output, and the padding becomes
// (K - 1) * dilation - padding, negative where the padding exceeds the kernel's span.
bool input_grad_is_convolution(const Geometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.multiplier == 1;
}

Geometry input_grad_as_convolution(const Geometry& g) {
  Geometry t = g;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_h = (g.kernel_h - 1) * g.dilation_h - g.pad_h;
  t.pad_w = (g.kernel_w - 1) * g.dilation_w - g.pad_w;
  return t;
}

// grad_weight and grad_bias (either may be undefined).
template <typename scalar_t>
void launch_weight_grad(const at::Tensor& go, const at::Tensor& in, const at::Tensor& grad_weight,
                        const at::Tensor& grad_bias, const Geometry& g, bool channels_last,
                        cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* gw = grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gb = grad_bias.defined() ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
  const int square = unrolled_kernel_size(g);
  const int64_t out_channels = g.out_channels(), taps = g.kernel_h * g.kernel_w;
  if (square == 0) {
    const int64_t blocks = out_channels * (taps + 1);
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastdl.depthwise_conv2d_backward: ",
                "too many channels x taps for the CUDA grid (", blocks, ")");
    weight_grad_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), gw, gb, g, strides_of(go), strides_of(in));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Chunks enough for about 4 blocks per multiprocessor, of at least 8 pixels per
  // thread (16 for channels_last, whose blocks hold 8 threads per channel), and within
  // grid.y's 65535: small batches still fill the GPU, large ones add pixels per chunk
  // rather than partial sums.
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t channel_blocks = channels_last ? cuda::ceil_div<int64_t>(out_channels, 32) : out_channels;
  const int64_t wanted_blocks = 4 * int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount};
  const int64_t min_chunk = channels_last ? kWeightGradLanes * 16 : kThreadsPerBlock * 8;
  const int64_t chunk_pixels = std::max({min_chunk, cuda::ceil_div(pixels * channel_blocks, wanted_blocks),
                                         cuda::ceil_div<int64_t>(pixels, 65535)});
  const int64_t chunks = cuda::ceil_div(pixels, chunk_pixels);
  TORCH_CHECK(channel_blocks <= std::numeric_limits<int32_t>::max(), "fastdl.depthwise_conv2d_backward: ",
              "too many channels for the CUDA grid (", out_channels, ")");
  const at::Tensor partial = at::empty({chunks, out_channels, taps + 1},
                                       go.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const dim3 grid(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(chunks));
  const dim3 block = channels_last ? dim3(32, kWeightGradLanes) : dim3(kThreadsPerBlock);
  auto launch = [&](auto kernel) {
    kernel<<<grid, block, 0, stream>>>(go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
                                       partial.mutable_data_ptr<acc_t>(), g, strides_of(go), strides_of(in),
                                       chunk_pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (square == 3)
    channels_last ? launch(weight_grad_partial_kernel<scalar_t, 3, true>)
                  : launch(weight_grad_partial_kernel<scalar_t, 3, false>);
  else if (square == 5)
    channels_last ? launch(weight_grad_partial_kernel<scalar_t, 5, true>)
                  : launch(weight_grad_partial_kernel<scalar_t, 5, false>);
  else
    channels_last ? launch(weight_grad_partial_kernel<scalar_t, 7, true>)
                  : launch(weight_grad_partial_kernel<scalar_t, 7, false>);
  weight_grad_finish_kernel<scalar_t><<<blocks_for(out_channels * (taps + 1)), kThreadsPerBlock, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), chunks, out_channels, static_cast<int>(taps), gw, gb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d";
  const Geometry g = check_forward_args(op, input, weight, bias ? &*bias : nullptr, stride,
                                        padding, dilation);
  check_cuda_dtype(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto format = output_format(input, weight);
  at::Tensor out = at::empty({g.batch, g.out_channels(), g.out_h, g.out_w}, input.options(), format);
  if (out.numel() == 0) return out;
  const at::Tensor in = input.contiguous(format), w = weight.contiguous();
  const std::optional<at::Tensor> b = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdl_depthwise_conv2d_cuda", [&] {
    launch_forward<scalar_t>(in, w, b ? b->const_data_ptr<scalar_t>() : nullptr, out, g, channels_last,
                             /*flip=*/false, stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation);
  check_cuda_dtype("depthwise_conv2d_backward", input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto format = output_format(input, weight);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  auto [grad_input, grad_weight, grad_bias] = allocate_grads(g, input, weight, output_mask);
  if (g.batch == 0) {
    if (grad_input.defined()) grad_input.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  const at::Tensor go = grad_output.contiguous(format), in = input.contiguous(format);
  const at::Tensor w = weight.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdl_depthwise_conv2d_backward_cuda", [&] {
    if (grad_input.defined() && input_grad_is_convolution(g)) {
      launch_forward<scalar_t>(go, w, nullptr, grad_input, input_grad_as_convolution(g), channels_last,
                               /*flip=*/true, stream);
    } else if (grad_input.defined()) {
      input_grad_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreadsPerBlock, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), g, strides_of(go), strides_of(grad_input), channels_last);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_weight.defined() || grad_bias.defined())
      launch_weight_grad<scalar_t>(go, in, grad_weight, grad_bias, g, channels_last, stream);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace fastdl::depthwise

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("depthwise_conv2d", &fastdl::depthwise::depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &fastdl::depthwise::depthwise_conv2d_backward_cuda);
}
