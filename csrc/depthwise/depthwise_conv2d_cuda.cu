// CUDA depthwise convolution. Direct kernels, one thread per output (or input,
// for grad_input) element, accumulating in float (double for float64):
//   - forward and grad_input read NCHW or NHWC through the same index math; in
//     NHWC consecutive threads take consecutive channels, so loads coalesce;
//   - taps are unrolled for 3x3, 5x5 and 7x7;
//   - grad_weight/grad_bias: one block per (output channel, tap) reduces over
//     N x out_H x out_W with warp shuffles, in a fixed order: deterministic, no
//     atomics, whatever the batch size.
// The shared-memory tiled paths the CPU side has counterparts of are future work
// (they need a GPU to tune); these kernels are the correct baseline.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
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

template <typename scalar_t, int KH, int KW>
__global__ void forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                               Geometry g, Strides in_s, Strides out_s, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t kernel_h = KH > 0 ? KH : g.kernel_h, kernel_w = KW > 0 ? KW : g.kernel_w;
  const int64_t total = g.batch * g.out_channels() * g.out_h * g.out_w;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const Position o = unflatten(index, g.out_channels(), g.out_h, g.out_w, channels_last);
    const int64_t c = o.c / g.multiplier;
    const scalar_t* in = input + o.n * in_s.n + c * in_s.c;
    const scalar_t* w = weight + o.c * kernel_h * kernel_w;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[o.c]) : acc_t(0);
#pragma unroll
    for (int64_t kh = 0; kh < kernel_h; ++kh) {
      const int64_t ih = o.h * g.stride_h - g.pad_h + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
#pragma unroll
      for (int64_t kw = 0; kw < kernel_w; ++kw) {
        const int64_t iw = o.w * g.stride_w - g.pad_w + kw * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        acc += static_cast<acc_t>(__ldg(w + kh * kernel_w + kw)) *
               static_cast<acc_t>(__ldg(in + ih * in_s.h + iw * in_s.w));
      }
    }
    out[o.n * out_s.n + o.c * out_s.c + o.h * out_s.h + o.w * out_s.w] = static_cast<scalar_t>(acc);
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

// Block (oc, t): grad_weight[oc, t] for t < taps, grad_bias[oc] for t == taps.
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

void check_cuda_dtype(const char* op, const at::Tensor& input) {
  check_dtype(op, "input", input, {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16}, " on CUDA");
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
    const scalar_t* bias_ptr = b ? b->const_data_ptr<scalar_t>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(out.numel()), kThreadsPerBlock, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_ptr,
          out.mutable_data_ptr<scalar_t>(), g, strides_of(in), strides_of(out), channels_last);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (g.kernel_h == 3 && g.kernel_w == 3)
      launch(forward_kernel<scalar_t, 3, 3>);
    else if (g.kernel_h == 5 && g.kernel_w == 5)
      launch(forward_kernel<scalar_t, 5, 5>);
    else if (g.kernel_h == 7 && g.kernel_w == 7)
      launch(forward_kernel<scalar_t, 7, 7>);
    else
      launch(forward_kernel<scalar_t, 0, 0>);
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
    if (grad_input.defined()) {
      input_grad_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreadsPerBlock, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), g, strides_of(go), strides_of(grad_input), channels_last);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_weight.defined() || grad_bias.defined()) {
      const int64_t blocks = g.out_channels() * (g.kernel_h * g.kernel_w + 1);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastdl.depthwise_conv2d_backward: ",
                  "too many channels x taps for the CUDA grid (", blocks, ")");
      weight_grad_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
          grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr,
          grad_bias.defined() ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr, g, strides_of(go),
          strides_of(in));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace fastdl::depthwise

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("depthwise_conv2d", &fastdl::depthwise::depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &fastdl::depthwise::depthwise_conv2d_backward_cuda);
}
