// CUDA dilated convolution kernels (see dilated_conv.h for the semantics).
//
// All three products are implicit GEMMs: one 256-thread block per 64 x 64 tile of the
// result, the reduction staged through shared memory kChunk elements at a time (16 for
// float32/float64, 32 for float16/bfloat16), the next chunk's global loads in flight in
// registers while the current chunk is multiplied. There is no im2col buffer: each
// thread computes the address of every element it gathers from the Geometry.
//  - forward, per (image, group): output[o][p] = sum over (tap, c) of
//    weight[o][c][tap] * input[c][pixel p reads at tap]; M = output channels of the
//    group, N = output pixels, K = taps x input channels, tap-major so that a chunk
//    lies in one tap (a thread's source offset changes once per tap, and the channel
//    tail is zero-filled per tap).
//  - grad_input, the same kernel as a gather: M = input channels, N = input pixels,
//    K = taps x output channels; the output pixel a tap reads is solved for
//    (output_reading) and is absent unless the stride divides.
//  - grad_weight, per (group, tap): M = output channels, N = input channels,
//    K = batch x output pixels, split into a number of ranges fixed by the shape alone;
//    each range writes its partial sums to scratch and a second kernel adds them in
//    order. grad_bias: one block per channel, a fixed-order block reduction. Results
//    are deterministic (no atomics) and the same on every GPU.
// The weights are first copied into [group][tap][reduced channel][GEMM row] order, so
// that a chunk's weight loads coalesce like its input loads (consecutive threads take
// consecutive pixels or rows).
// float16 and bfloat16 multiply on tensor cores (wmma 16x16x16, float accumulation);
// float32 and float64 on a SIMT 4x4 register tile per thread, accumulating in their type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/conv_shape.h"
#include "common/cuda_utils.cuh"
#include "dilated_conv/dilated_conv.h"

namespace fastdl::dilated_conv {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;  // every kernel here
constexpr int kTile = 64;      // rows and columns of a block's tile of the result

template <typename T>
constexpr bool kTensorCores = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;
// Two wmma k-steps per chunk for the 16-bit types; SIMT float64 tiles stay under 48 KiB.
template <typename T>
constexpr int kChunk = kTensorCores<T> ? 32 : 16;
// Shared row stride: rows 16 bytes apart in alignment (wmma's ldm, vector reads of 4
// consecutive elements), offset from a multiple of 128 bytes to spread the banks.
template <typename T>
constexpr int kLd = kTile + 16 / static_cast<int>(sizeof(T));

// ---- index math (host and device; the /tmp emulation checks it against brute force) ----

// Offset in its source plane of the element that result pixel (y, x) reads at tap
// (kh, kw), or -1 (reads 0). Forward: (y, x) is an output pixel and the source the
// input; grad_input: (y, x) is an input pixel and the source grad_output.
template <bool kGradInput>
FASTDL_HOST_DEVICE int64_t source_offset(const Geometry& g, int64_t y, int64_t x, int64_t kh,
                                         int64_t kw) {
  if constexpr (kGradInput) {
    int64_t oy, ox;
    return output_reading(y, kh, g.stride_h, g.pad_top, g.dilation_h, g.out_h, oy) &&
                   output_reading(x, kw, g.stride_w, g.pad_left, g.dilation_w, g.out_w, ox)
               ? oy * g.out_w + ox
               : -1;
  } else {
    const int64_t iy = g.input_row(y, kh), ix = g.input_col(x, kw);
    return iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w ? iy * g.in_w + ix : -1;
  }
}

// a / b (and a % b in rem), in 32 bits when both fit: 64-bit division is a long
// software routine, and the weight-gradient gather divides twice per chunk.
FASTDL_HOST_DEVICE int64_t div_rem(int64_t a, int64_t b, int64_t& rem) {
  if (((a | b) >> 32) == 0) {
    const uint32_t q = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    rem = static_cast<uint32_t>(a) - q * static_cast<uint32_t>(b);
    return q;
  }
  rem = a % b;
  return a / b;
}

// ---- block products ----

// The two operand tiles of one chunk: A(m, k) = a[k][m], B(k, n) = b[k][n].
template <typename T>
struct SharedTiles {
  alignas(32) T a[kChunk<T>][kLd<T>];
  alignas(32) T b[kChunk<T>][kLd<T>];
};

// SIMT: thread (ty, tx) = (tid / 16, tid % 16) holds C[4 ty + i][4 tx + j]; per k a
// warp reads two broadcast rows of A and 64 consecutive elements of B.
template <typename T>
struct SimtProduct {
  static_assert(std::is_same_v<T, at::opmath_type<T>>, "SIMT tiles accumulate in T");
  T c[4][4] = {};

  __device__ __forceinline__ void add(const SharedTiles<T>& s) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int k = 0; k < kChunk<T>; ++k) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = s.a[k][4 * ty + i];
        b[i] = s.b[k][4 * tx + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[i][j] += a[i] * b[j];
      }
    }
  }

  // fn(m, n, C[m][n]) for this thread's elements.
  template <typename Fn>
  __device__ __forceinline__ void for_each(Fn fn) const {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) fn(4 * ty + i, 4 * tx + j, c[i][j]);
    }
  }
};

// Tensor cores: warp w holds C[16 (w % 4) + 16][32 (w / 4) + 32] as two 16x16 fragments.
template <typename T>
struct TensorCoreProduct {
  using W = typename cuda::DeviceType<T>::type;  // wmma's 16-bit types
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[2];

  __device__ __forceinline__ TensorCoreProduct() {
    nvcuda::wmma::fill_fragment(c[0], 0.0f);
    nvcuda::wmma::fill_fragment(c[1], 0.0f);
  }

  __device__ __forceinline__ void add(const SharedTiles<T>& s) {
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32, m0 = warp % 4 * 16, n0 = warp / 4 * 32;
#pragma unroll
    for (int k0 = 0; k0 < kChunk<T>; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::col_major> a;
      wmma::load_matrix_sync(a, reinterpret_cast<const W*>(&s.a[k0][m0]), kLd<T>);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const W*>(&s.b[k0][n0 + 16 * j]), kLd<T>);
        wmma::mma_sync(c[j], a, b, c[j]);
      }
    }
  }

  // fn(m, n, C[m][n]) over the tile, through shared memory (a fragment's element layout
  // is unspecified); consecutive threads take consecutive n. Called by the whole block.
  template <typename Fn>
  __device__ __forceinline__ void for_each(Fn fn) const {
    __shared__ __align__(32) float tile[kTile][kTile + 4];
    const int warp = threadIdx.x / 32, m0 = warp % 4 * 16, n0 = warp / 4 * 32;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      nvcuda::wmma::store_matrix_sync(&tile[m0][n0 + 16 * j], c[j], kTile + 4,
                                      nvcuda::wmma::mem_row_major);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      fn(e / kTile, e % kTile, tile[e / kTile][e % kTile]);
    }
  }
};

template <typename T>
using BlockProduct = std::conditional_t<kTensorCores<T>, TensorCoreProduct<T>, SimtProduct<T>>;

// ---- forward and grad_input ----

// weight (O, C / groups, kH, kW) as out[group][tap][r][m], (r, m) = (input channel,
// output channel) for the forward, (output channel, input channel) for grad_input.
template <typename T, bool kGradInput>
__global__ void __launch_bounds__(kThreads)
    reorder_weight_kernel(const T* __restrict__ weight, const Geometry g, T* __restrict__ out) {
  const int64_t in_group = g.in_per_group(), out_group = g.out_per_group();
  const int64_t rows = kGradInput ? in_group : out_group;
  const int64_t reduced = kGradInput ? out_group : in_group;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (e >= g.out_channels * in_group * taps) return;
  const int64_t m = e % rows, r = e / rows % reduced, tap = e / (rows * reduced) % taps;
  const int64_t group = e / (rows * reduced * taps);
  const int64_t o = kGradInput ? r : m, c = kGradInput ? m : r;
  out[e] = weight[((group * out_group + o) * in_group + c) * taps + tap];
}

template <typename T>
struct ConvGemmArgs {
  const T* src;     // input (forward) or grad_output (grad_input)
  const T* weight;  // from reorder_weight_kernel
  const T* bias;    // forward only; null: none
  T* dst;           // output or grad_input
  Geometry g;
};

// Block: (row tile, pixel tile, group, image), row tile fastest so that the blocks
// reading one source tile run together. Thread: gathers column tid % 64 (one pixel of
// B, one row of A) for chunk rows tid / 64 + 4 u.
template <typename T, bool kGradInput>
__global__ void __launch_bounds__(kThreads) conv_gemm_kernel(const ConvGemmArgs<T> args) {
  using acc_t = at::opmath_type<T>;
  constexpr int kLoads = kChunk<T> * kTile / kThreads;
  constexpr int kLinesPerLoad = kThreads / kTile;
  __shared__ SharedTiles<T> s;
  const Geometry& g = args.g;
  const int64_t rows = kGradInput ? g.in_per_group() : g.out_per_group();
  const int64_t reduced = kGradInput ? g.out_per_group() : g.in_per_group();
  const int64_t src_channels = kGradInput ? g.out_channels : g.in_channels;
  const int64_t dst_channels = kGradInput ? g.in_channels : g.out_channels;
  const int64_t src_plane = kGradInput ? g.out_h * g.out_w : g.in_h * g.in_w;
  const int64_t dst_w = kGradInput ? g.in_w : g.out_w;
  const int64_t dst_plane = (kGradInput ? g.in_h : g.out_h) * dst_w;

  const int64_t row_tiles = ceil_div<int64_t>(rows, kTile);
  const int64_t pixel_tiles = ceil_div<int64_t>(dst_plane, kTile);
  int64_t block = blockIdx.x;
  const int64_t row0 = block % row_tiles * kTile;
  block /= row_tiles;
  const int64_t pixel0 = block % pixel_tiles * kTile;
  block /= pixel_tiles;
  const int64_t group = block % g.groups, image = block / g.groups;

  const int col = threadIdx.x % kTile, line = threadIdx.x / kTile;
  const int64_t pixel = pixel0 + col, row = row0 + col;
  const bool pixel_in = pixel < dst_plane, row_in = row < rows;
  const int64_t y = pixel / dst_w, x = pixel % dst_w;
  const T* src = args.src + (image * src_channels + group * reduced) * src_plane;
  const T* weight = args.weight + group * g.kernel_h * g.kernel_w * reduced * rows;

  // The chunk being fetched: tap (kh, kw), reduced channels [c0, c0 + kChunk).
  int64_t kh = 0, kw = 0, c0 = 0;
  int64_t offset = pixel_in ? source_offset<kGradInput>(g, y, x, 0, 0) : -1;
  T a_next[kLoads], b_next[kLoads];
  const auto fetch = [&] {
    const T* w = weight + (kh * g.kernel_w + kw) * reduced * rows + row;
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int64_t c = c0 + line + u * kLinesPerLoad;
      a_next[u] = c < reduced && row_in ? w[c * rows] : T(0);
      b_next[u] = c < reduced && offset >= 0 ? src[c * src_plane + offset] : T(0);
    }
  };
  const auto advance = [&] {
    c0 += kChunk<T>;
    if (c0 < reduced) return;
    c0 = 0;
    if (++kw == g.kernel_w) {
      kw = 0;
      ++kh;
    }
    offset = pixel_in ? source_offset<kGradInput>(g, y, x, kh, kw) : -1;
  };

  const int64_t chunks = g.kernel_h * g.kernel_w * ceil_div<int64_t>(reduced, kChunk<T>);
  BlockProduct<T> product;
  fetch();
  for (int64_t q = 0; q < chunks; ++q) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      s.a[line + u * kLinesPerLoad][col] = a_next[u];
      s.b[line + u * kLinesPerLoad][col] = b_next[u];
    }
    __syncthreads();
    if (q + 1 < chunks) {
      advance();
      fetch();
    }
    product.add(s);
    __syncthreads();  // everyone is done with s before the next chunk is staged
  }

  T* dst = args.dst + (image * dst_channels + group * rows) * dst_plane;
  const T* bias = args.bias != nullptr ? args.bias + group * rows : nullptr;
  product.for_each([&](int i, int j, acc_t v) {
    const int64_t r = row0 + i, p = pixel0 + j;
    if (r < rows && p < dst_plane) {
      if (bias != nullptr) v += static_cast<acc_t>(bias[r]);
      dst[r * dst_plane + p] = static_cast<T>(v);
    }
  });
}

// ---- grad_weight and grad_bias ----

// Splits of the batch x pixels reduction: enough blocks to fill a large GPU (about 8 per
// SM on 132 SMs), a split at least kMinChunksPerSplit chunks long. Fixed by the shape,
// so the summation order, and thus every bit of the result, is the same on any GPU.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinChunksPerSplit = 16;
constexpr int64_t kMaxSplits = 64;

template <typename T>
struct WeightGradArgs {
  const T* grad_output;
  const T* input;
  Geometry g;
  int64_t splits, chunks_per_split;
  T* grad_weight;               // written directly when splits == 1
  at::opmath_type<T>* partial;  // otherwise [split][weight element], summed by sum_splits_kernel
};

// Block: (output-channel tile, input-channel tile, tap, group, split), in that order
// from fastest. Thread: gathers reduction index k = tid % kChunk of each chunk, for
// tile rows / columns tid / kChunk + (256 / kChunk) u; consecutive threads take
// consecutive pixels, so both gathers coalesce.
template <typename T>
__global__ void __launch_bounds__(kThreads) weight_grad_kernel(const WeightGradArgs<T> args) {
  using acc_t = at::opmath_type<T>;
  constexpr int kLoads = kChunk<T> * kTile / kThreads;
  constexpr int kLinesPerLoad = kThreads / kChunk<T>;
  __shared__ SharedTiles<T> s;
  const Geometry& g = args.g;
  const int64_t rows = g.out_per_group(), cols = g.in_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;

  const int64_t row_tiles = ceil_div<int64_t>(rows, kTile);
  const int64_t col_tiles = ceil_div<int64_t>(cols, kTile);
  int64_t block = blockIdx.x;
  const int64_t row0 = block % row_tiles * kTile;
  block /= row_tiles;
  const int64_t col0 = block % col_tiles * kTile;
  block /= col_tiles;
  const int64_t tap = block % taps;
  block /= taps;
  const int64_t group = block % g.groups, split = block / g.groups;
  const int64_t kh = tap / g.kernel_w, kw = tap % g.kernel_w;

  const int64_t first = split * args.chunks_per_split * kChunk<T>;
  const int64_t end = std::min(first + args.chunks_per_split * kChunk<T>, g.batch * out_plane);
  const int64_t chunks = ceil_div<int64_t>(end - first, kChunk<T>);

  const int k = threadIdx.x % kChunk<T>, line = threadIdx.x / kChunk<T>;
  T a_next[kLoads], b_next[kLoads];
  const auto fetch = [&](int64_t k0) {
    const int64_t r = k0 + k;
    const T* go = nullptr;
    const T* in = nullptr;
    if (r < end) {
      int64_t p, x;
      const int64_t image = div_rem(r, out_plane, p);
      const int64_t y = div_rem(p, g.out_w, x);
      const int64_t iy = g.input_row(y, kh), ix = g.input_col(x, kw);
      go = args.grad_output + (image * g.out_channels + group * rows + row0) * out_plane + p;
      if (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w) {
        in = args.input + (image * g.in_channels + group * cols + col0) * in_plane +
             iy * g.in_w + ix;
      }
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int64_t i = line + u * kLinesPerLoad;
      a_next[u] = go != nullptr && row0 + i < rows ? go[i * out_plane] : T(0);
      b_next[u] = in != nullptr && col0 + i < cols ? in[i * in_plane] : T(0);
    }
  };

  BlockProduct<T> product;
  fetch(first);
  for (int64_t q = 0; q < chunks; ++q) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      s.a[k][line + u * kLinesPerLoad] = a_next[u];
      s.b[k][line + u * kLinesPerLoad] = b_next[u];
    }
    __syncthreads();
    if (q + 1 < chunks) fetch(first + (q + 1) * kChunk<T>);
    product.add(s);
    __syncthreads();  // everyone is done with s before the next chunk is staged
  }

  const int64_t numel = g.out_channels * cols * taps;
  product.for_each([&](int i, int j, acc_t v) {
    const int64_t o = row0 + i, c = col0 + j;
    if (o < rows && c < cols) {
      const int64_t index = ((group * rows + o) * cols + c) * taps + tap;
      if (args.partial == nullptr) {
        args.grad_weight[index] = static_cast<T>(v);
      } else {
        args.partial[split * numel + index] = v;
      }
    }
  });
}

// grad_weight[e] = sum of the splits' partials, in split order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sum_splits_kernel(const at::opmath_type<T>* __restrict__ partial, int64_t splits,
                      int64_t numel, T* __restrict__ grad_weight) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (e >= numel) return;
  at::opmath_type<T> sum = 0;
  for (int64_t sp = 0; sp < splits; ++sp) sum += partial[sp * numel + e];
  grad_weight[e] = static_cast<T>(sum);
}

// Block o: grad_bias[o] = sum over images and pixels of grad_output[., o, ., .]; each
// thread sums a fixed stride of pixels, then a fixed tree over the block.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const T* __restrict__ grad_output, const Geometry g,
                     T* __restrict__ grad_bias) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t warp_sums[kThreads / 32];
  const int64_t o = blockIdx.x, plane = g.out_h * g.out_w;
  acc_t sum = 0;
  for (int64_t image = 0; image < g.batch; ++image) {
    const T* go = grad_output + (image * g.out_channels + o) * plane;
    for (int64_t p = threadIdx.x; p < plane; p += kThreads) sum += static_cast<acc_t>(go[p]);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(cuda::kFullWarpMask, sum, offset);
  }
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    grad_bias[o] = static_cast<T>(total);
  }
}

// ---- host side ----

unsigned grid_of(int64_t blocks) {
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastdl.dilated_conv: ", blocks,
              " blocks exceed the CUDA grid size limit");
  return static_cast<unsigned>(blocks);
}

// Forward (src = input, dst = output) or grad_input (src = grad_output, dst = grad_input).
template <typename T, bool kGradInput>
void launch_conv_gemm(const Geometry& g, const at::Tensor& src, const at::Tensor& weight,
                      const T* bias, at::Tensor& dst) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor reordered = at::empty({weight.numel()}, weight.options());
  reorder_weight_kernel<T, kGradInput><<<cuda::grid_for(weight.numel(), kThreads), kThreads, 0,
                                         stream>>>(weight.const_data_ptr<T>(), g,
                                                   reordered.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t rows = kGradInput ? g.in_per_group() : g.out_per_group();
  const int64_t plane = kGradInput ? g.in_h * g.in_w : g.out_h * g.out_w;
  const int64_t blocks =
      ceil_div<int64_t>(rows, kTile) * ceil_div<int64_t>(plane, kTile) * g.groups * g.batch;
  const ConvGemmArgs<T> args{src.const_data_ptr<T>(), reordered.const_data_ptr<T>(), bias,
                             dst.mutable_data_ptr<T>(), g};
  conv_gemm_kernel<T, kGradInput><<<grid_of(blocks), kThreads, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void forward_cuda(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output) {
  const c10::cuda::CUDAGuard guard(input.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "fastdl_dilated_conv_forward_cuda", [&] {
    launch_conv_gemm<scalar_t, false>(g, input, weight,
                                      bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                                      output);
  });
}

void backward_input_cuda(const Geometry& g, const at::Tensor& grad_output,
                         const at::Tensor& weight, at::Tensor& grad_input) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "fastdl_dilated_conv_backward_input_cuda", [&] {
    launch_conv_gemm<scalar_t, true>(g, grad_output, weight, nullptr, grad_input);
  });
}

template <typename T>
void launch_weight_grad(const Geometry& g, const at::Tensor& grad_output,
                        const at::Tensor& input, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<T>;
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (grad_bias.defined()) {
    bias_grad_kernel<T><<<grid_of(g.out_channels), kThreads, 0, stream>>>(
        grad_output.const_data_ptr<T>(), g, grad_bias.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!grad_weight.defined()) return;  // the bias gradient alone
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t tiles = ceil_div<int64_t>(g.out_per_group(), kTile) *
                        ceil_div<int64_t>(g.in_per_group(), kTile) * taps * g.groups;
  const int64_t chunks = ceil_div<int64_t>(g.batch * g.out_h * g.out_w, kChunk<T>);
  int64_t splits = std::min({ceil_div(kTargetBlocks, tiles),
                             ceil_div(chunks, kMinChunksPerSplit), kMaxSplits});
  splits = std::max<int64_t>(splits, 1);
  const int64_t chunks_per_split = ceil_div(chunks, splits);
  splits = ceil_div(chunks, chunks_per_split);  // no empty split

  const int64_t numel = grad_weight.numel();
  at::Tensor partial;
  if (splits > 1) {
    partial = at::empty({splits, numel},
                        grad_weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  const WeightGradArgs<T> args{grad_output.const_data_ptr<T>(),
                               input.const_data_ptr<T>(),
                               g,
                               splits,
                               chunks_per_split,
                               grad_weight.mutable_data_ptr<T>(),
                               splits > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr};
  weight_grad_kernel<T><<<grid_of(tiles * splits), kThreads, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) {
    sum_splits_kernel<T><<<cuda::grid_for(numel, kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), splits, numel, grad_weight.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void backward_weight_cuda(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& input, at::Tensor& grad_weight,
                          at::Tensor& grad_bias) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "fastdl_dilated_conv_backward_weight_cuda", [&] {
    launch_weight_grad<scalar_t>(g, grad_output, input, grad_weight, grad_bias);
  });
}

}  // namespace

constexpr DeviceKernels kCudaKernels{&forward_cuda, &backward_input_cuda, &backward_weight_cuda};

}  // namespace fastdl::dilated_conv

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  fastdl::dilated_conv::register_ops<fastdl::dilated_conv::kCudaKernels>(m);
}
