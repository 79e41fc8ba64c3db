// CUDA binary convolution.
//   pack_signs: one thread per output word, 64 channel reads each; threads run
//     along pixels for NCHW inputs and along words for channels_last, so reads
//     coalesce in both.
//   xnor_conv2d_packed: a binary GEMM with the receptive fields gathered on the
//     fly. A block computes 64 output pixels x 64 output channels of one group;
//     each stage stages 8 words of the 64 receptive fields and of the 64 weight
//     rows in shared memory (zero words for padded taps, padding bits masked),
//     and each of the 256 threads accumulates __popcll(x ^ w) for 4 x 4 outputs.
//     Border pixels subtract what the padded taps' zero words added (the weight's
//     popcount there), as the CPU path does. No atomics: deterministic.
// The bmma (binary tensor core) path is future work: it needs a GPU to tune.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "xnor/xnor_conv2d.h"

namespace fastdl::xnor {
namespace {

constexpr int kTilePixels = 64, kTileChannels = 64, kStageWords = 8;
constexpr int kThreadsX = 16, kThreadsY = 16;  // 256 threads, 4 x 4 outputs each

template <typename T>
__device__ __forceinline__ uint64_t negative_bit(T value) {
  if constexpr (std::is_same_v<T, double>)
    return !(value >= 0.0);
  else
    return !(static_cast<float>(value) >= 0.0f);
}

struct PackArgs {
  int64_t batch, channels, height, width, groups, group_channels, group_words;
  int64_t stride_n, stride_c, stride_h, stride_w;
  bool words_fastest;  // thread order: words of a pixel (channels_last) or pixels
};

template <typename T>
__global__ void pack_signs_kernel(PackArgs a, const T* __restrict__ input,
                                  uint64_t* __restrict__ out) {
  const int64_t pixels = a.height * a.width, words = a.groups * a.group_words;
  const int64_t total = a.batch * pixels * words;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t n, p, word;
    if (a.words_fastest) {
      word = i % words;
      p = i / words % pixels;
      n = i / (words * pixels);
    } else {
      p = i % pixels;
      word = i / pixels % words;
      n = i / (pixels * words);
    }
    const int64_t g = word / a.group_words, w = word % a.group_words;
    const int64_t c0 = g * a.group_channels + w * kWordBits;
    const int64_t bits = min(kWordBits, a.group_channels - w * kWordBits);
    const T* src = input + n * a.stride_n + c0 * a.stride_c + (p / a.width) * a.stride_h +
                   (p % a.width) * a.stride_w;
    uint64_t packed = 0;
    for (int64_t b = 0; b < bits; ++b) packed |= negative_bit(src[b * a.stride_c]) << b;
    out[(n * pixels + p) * words + word] = packed;
  }
}

at::Tensor pack_signs_cuda(const at::Tensor& input, int64_t groups) {
  check_pack_args(input, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t group_channels = input.size(1) / groups;
  PackArgs a{input.size(0), input.size(1), input.size(2), input.size(3), groups, group_channels,
             words_for(group_channels), input.stride(0), input.stride(1), input.stride(2),
             input.stride(3), input.suggest_memory_format() == at::MemoryFormat::ChannelsLast};
  at::Tensor out = at::empty({a.batch, a.height, a.width, groups * a.group_words},
                             input.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>(
      std::min<int64_t>(cuda::ceil_div<int64_t>(out.numel(), cuda::kThreadsPerBlock), 65535 * 8));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pack_signs", [&] {
    pack_signs_kernel<scalar_t><<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
        a, input.const_data_ptr<scalar_t>(), reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

struct ConvArgs {
  Geometry g;
  int64_t out_stride_n, out_stride_o, out_stride_h, out_stride_w;
};

__device__ __forceinline__ bool inside(const Geometry& g, int64_t ho, int64_t wo, int64_t kh,
                                       int64_t kw, int64_t& hi, int64_t& wi) {
  hi = ho * g.stride_h - g.pad_h + kh * g.dilation_h;
  wi = wo * g.stride_w - g.pad_w + kw * g.dilation_w;
  return hi >= 0 && hi < g.in_h && wi >= 0 && wi < g.in_w;
}

template <typename T, typename Math>
__global__ void __launch_bounds__(kThreadsX* kThreadsY)
    xnor_conv2d_kernel(ConvArgs args, const uint64_t* __restrict__ input,
                       const uint64_t* __restrict__ weight, const Math* __restrict__ scale,
                       const Math* __restrict__ bias, T* __restrict__ out) {
  __shared__ uint64_t fields[kStageWords][kTilePixels];
  __shared__ uint64_t weights[kStageWords][kTileChannels];
  const Geometry& g = args.g;
  const int64_t K = g.row_words(), wpg = g.group_words, pixel_words = g.groups * wpg;
  const int64_t group = blockIdx.z;
  const int64_t m0 = int64_t{blockIdx.x} * kTilePixels;
  const int64_t o0 = group * g.group_out + int64_t{blockIdx.y} * kTileChannels;
  const int64_t o_end = (group + 1) * g.group_out;
  const uint64_t last_mask = valid_bits(g.group_channels, wpg - 1);
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;

  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kStageWords) {
    for (int e = tid; e < kTilePixels * kStageWords; e += kThreadsX * kThreadsY) {
      const int row = e / kStageWords, kk = e % kStageWords;
      const int64_t k = k0 + kk, m = m0 + row;
      uint64_t field = 0, w = 0;
      if (k < K) {
        const int64_t tap = k / wpg, word = k % wpg;
        const uint64_t mask = word == wpg - 1 ? last_mask : ~uint64_t{0};
        int64_t hi, wi;
        if (m < g.pixels()) {
          const int64_t n = m / (g.out_h * g.out_w), ho = m / g.out_w % g.out_h, wo = m % g.out_w;
          if (inside(g, ho, wo, tap / g.kernel_w, tap % g.kernel_w, hi, wi))
            field = input[((n * g.in_h + hi) * g.in_w + wi) * pixel_words + group * wpg + word] & mask;
        }
        const int64_t o = o0 + row;
        if (o < o_end) w = weight[o * K + k] & mask;
      }
      fields[kk][row] = field;
      weights[kk][row] = w;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStageWords; ++kk) {
      uint64_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = fields[kk][threadIdx.y + kThreadsY * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = weights[kk][threadIdx.x + kThreadsX * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += __popcll(a[i] ^ b[j]);
    }
    __syncthreads();
  }

  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + threadIdx.y + kThreadsY * i;
    if (m >= g.pixels()) continue;
    const int64_t n = m / (g.out_h * g.out_w), ho = m / g.out_w % g.out_h, wo = m % g.out_w;
    int64_t valid_taps = 0;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh)
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        int64_t hi, wi;
        valid_taps += inside(g, ho, wo, kh, kw, hi, wi);
      }
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + threadIdx.x + kThreadsX * j;
      if (o >= o_end) continue;
      int64_t mismatches = acc[i][j];
      if (valid_taps < g.taps())  // padded taps read zero words: drop the weight bits they counted
        for (int64_t kh = 0; kh < g.kernel_h; ++kh)
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            int64_t hi, wi;
            if (inside(g, ho, wo, kh, kw, hi, wi)) continue;
            const uint64_t* w = weight + o * K + (kh * g.kernel_w + kw) * wpg;
            for (int64_t word = 0; word < wpg; ++word)
              mismatches -= __popcll(w[word] & (word == wpg - 1 ? last_mask : ~uint64_t{0}));
          }
      Math value = static_cast<Math>(valid_taps * g.group_channels - 2 * mismatches);
      if (scale != nullptr) value *= scale[o];
      if (bias != nullptr) value += bias[o];
      out[n * args.out_stride_n + o * args.out_stride_o + ho * args.out_stride_h +
          wo * args.out_stride_w] = static_cast<T>(value);
    }
  }
}

at::Tensor xnor_conv2d_packed_cuda(const at::Tensor& input_bits, const at::Tensor& weight_bits,
                                   int64_t in_channels, const std::optional<at::Tensor>& scale,
                                   const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                   int64_t groups, c10::ScalarType dtype, bool channels_last) {
  const Geometry g = check_packed_args(input_bits, weight_bits, in_channels,
                                       scale ? &*scale : nullptr, bias ? &*bias : nullptr, stride,
                                       padding, dilation, groups, dtype);
  const c10::cuda::CUDAGuard guard(input_bits.device());
  at::Tensor out = allocate_output(g, input_bits, dtype, channels_last);
  if (g.pixels() == 0) return out;
  TORCH_CHECK_VALUE(groups <= 65535, "fastdl.xnor_conv2d_packed: groups must be at most 65535 on "
                    "CUDA, got ", groups);
  const at::Tensor input = input_bits.contiguous(), weight = weight_bits.contiguous();
  const ConvArgs args{g, out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div<int64_t>(g.pixels(), kTilePixels)),
                  static_cast<unsigned>(cuda::ceil_div<int64_t>(g.group_out, kTileChannels)),
                  static_cast<unsigned>(groups));
  TORCH_CHECK(cuda::ceil_div<int64_t>(g.group_out, kTileChannels) <= 65535,
              "fastdl.xnor_conv2d_packed: too many output channels per group for one grid");
  const dim3 block(kThreadsX, kThreadsY);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto* in_words = reinterpret_cast<const uint64_t*>(input.const_data_ptr<int64_t>());
  const auto* w_words = reinterpret_cast<const uint64_t*>(weight.const_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "xnor_conv2d_packed", [&] {
    using Math = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto math_type = std::is_same_v<Math, double> ? at::kDouble : at::kFloat;
    const auto scale_m = per_channel_as(scale, math_type);
    const auto bias_m = per_channel_as(bias, math_type);
    xnor_conv2d_kernel<scalar_t, Math><<<grid, block, 0, stream>>>(
        args, in_words, w_words, scale_m ? scale_m->const_data_ptr<Math>() : nullptr,
        bias_m ? bias_m->const_data_ptr<Math>() : nullptr, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace fastdl::xnor

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("pack_signs", &fastdl::xnor::pack_signs_cuda);
  m.impl("xnor_conv2d_packed", &fastdl::xnor::xnor_conv2d_packed_cuda);
}
