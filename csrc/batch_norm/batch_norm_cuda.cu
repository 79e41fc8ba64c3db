// CUDA fused batch norm. Same passes as the CPU side (batch_norm.h):
//   - reductions (statistics; the backward sums): one block per (channel, split) for
//     planar inputs and per (32-channel tile, split) for channels last, so a warp
//     reads 32 neighbouring values (coalesced) in either layout; each block writes one
//     partial result per channel, and a second kernel merges them per channel in a
//     fixed order: deterministic, no atomics. Statistics use Welford updates and
//     Chan merges (no cancellation on large-mean inputs).
//   - elementwise passes: one thread per value, per-channel coefficients computed once
//     by a small kernel; 32-bit index math whenever the tensor allows it.
// Accumulation is in float for float32/float16/bfloat16 and in double for float64.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "batch_norm/batch_norm_ops.h"
#include "common/cuda_utils.cuh"

namespace fastdl::batch_norm {
namespace {

using cuda::kThreadsPerBlock;

constexpr int kTileChannels = 32;  // channels-last reduction block: 32 channels x 8 rows
constexpr int kTileRows = 8;
// Enough reduction blocks to fill an H100 (132 SMs) about four times over.
constexpr int64_t kTargetBlocks = 528;
constexpr unsigned kMaxElementwiseBlocks = 4096;

// ---- activations (the same choices as the CPU kernels) ----

template <Activation A, typename T>
__device__ __forceinline__ T activate(T z, T slope) {
  if constexpr (A == Activation::relu) {
    return (z > T(0) || z != z) ? z : T(0);  // NaN stays NaN, as in torch.relu
  } else if constexpr (A == Activation::relu6) {
    return z != z ? z : (z < T(0) ? T(0) : (z > T(6) ? T(6) : z));
  } else if constexpr (A == Activation::silu) {
    return z / (T(1) + exp(-z));
  } else if constexpr (A == Activation::leaky_relu) {
    return z > T(0) ? z : z * slope;
  } else {
    return z;
  }
}

template <Activation A, typename T>
__device__ __forceinline__ T activation_grad(T g, T z, T slope) {
  if constexpr (A == Activation::relu) {
    return z > T(0) ? g : T(0);
  } else if constexpr (A == Activation::relu6) {
    return (z > T(0) && z < T(6)) ? g : T(0);
  } else if constexpr (A == Activation::silu) {
    const T sigmoid = T(1) / (T(1) + exp(-z));
    return g * sigmoid * (T(1) + z * (T(1) - sigmoid));
  } else if constexpr (A == Activation::leaky_relu) {
    return z > T(0) ? g : g * slope;
  } else {
    return g;
  }
}

template <typename Fn>
void with_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::relu: return fn(std::integral_constant<Activation, Activation::relu>{});
    case Activation::relu6: return fn(std::integral_constant<Activation, Activation::relu6>{});
    case Activation::silu: return fn(std::integral_constant<Activation, Activation::silu>{});
    case Activation::leaky_relu:
      return fn(std::integral_constant<Activation, Activation::leaky_relu>{});
    case Activation::none: break;
  }
  fn(std::integral_constant<Activation, Activation::none>{});
}

// ---- per-channel coefficients ----

// Rows of the coefficient table (kRows x C, accumulation type).
enum CoefficientRow { kScale = 0, kShift, kMean, kA, kB, kC, kRows };

template <typename acc_t>
__global__ void coefficients_kernel(const acc_t* mean, const acc_t* var, const acc_t* weight,
                                    const acc_t* bias, const acc_t* mean_dz,
                                    const acc_t* mean_dz_xmu, acc_t eps, int64_t channels,
                                    acc_t* table) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  const acc_t w = weight ? weight[c] : acc_t(1), b = bias ? bias[c] : acc_t(0);
  acc_t scale, shift, a, bb, cc;
  forward_coefficients<acc_t>(mean[c], var[c], w, b, eps, scale, shift);
  backward_coefficients<acc_t>(var[c], w, eps, mean_dz ? mean_dz[c] : acc_t(0),
                               mean_dz_xmu ? mean_dz_xmu[c] : acc_t(0), a, bb, cc);
  table[kScale * channels + c] = scale;
  table[kShift * channels + c] = shift;
  table[kMean * channels + c] = mean[c];
  table[kA * channels + c] = a;
  table[kB * channels + c] = bb;
  table[kC * channels + c] = cc;
}

template <typename acc_t>
const acc_t* optional_data(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

// The coefficient table of a call (weight and bias converted to acc_t first).
template <typename acc_t>
at::Tensor coefficient_table(const Operands& o) {
  const int64_t channels = o.layout.channels;
  const auto type = o.mean.scalar_type();
  auto as_acc = [&](const std::optional<at::Tensor>& t) {
    return t ? t->to(type).contiguous() : at::Tensor();
  };
  const at::Tensor weight = as_acc(o.epilogue.weight), bias = as_acc(o.epilogue.bias);
  at::Tensor table = at::empty({kRows, channels}, o.mean.options());
  coefficients_kernel<acc_t><<<cuda::grid_for(channels), kThreadsPerBlock, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
      o.mean.const_data_ptr<acc_t>(), o.var.const_data_ptr<acc_t>(), optional_data<acc_t>(weight),
      optional_data<acc_t>(bias), optional_data<acc_t>(o.mean_dz),
      optional_data<acc_t>(o.mean_dz_xmu), static_cast<acc_t>(o.epilogue.eps), channels,
      table.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

// ---- the value every pass computes ----

template <typename scalar_t, typename acc_t>
struct Element {
  const scalar_t *input, *residual, *grad_output;
  scalar_t* dz_out;  // backward reduce: where to store dz (null: don't)
  const acc_t* table;
  int64_t channels;
  acc_t slope;

  __device__ __forceinline__ acc_t coefficient(CoefficientRow row, int64_t c) const {
    return table[row * channels + c];
  }
  // The one definition of z that forward and backward share.
  __device__ __forceinline__ acc_t z(int64_t i, int64_t c, acc_t x) const {
    acc_t value = x * coefficient(kScale, c) + coefficient(kShift, c);
    return residual ? value + static_cast<acc_t>(residual[i]) : value;
  }
  template <Activation A>
  __device__ __forceinline__ acc_t dz(int64_t i, int64_t c, acc_t x) const {
    return activation_grad<A, acc_t>(static_cast<acc_t>(grad_output[i]), z(i, c, x), slope);
  }
};

// ---- reductions ----

template <typename acc_t>
struct Moments {
  acc_t count, mean, m2;
};

template <typename acc_t>
struct Sums {
  acc_t dz, dz_xmu;
};

// Statistics: Welford updates, Chan merges.
template <typename scalar_t, typename acc_t>
struct StatsOp {
  using State = Moments<acc_t>;
  Element<scalar_t, acc_t> e;
  __device__ static State identity() { return {acc_t(0), acc_t(0), acc_t(0)}; }
  __device__ void add(State& s, int64_t i, int64_t) const {
    const acc_t x = static_cast<acc_t>(e.input[i]);
    s.count += acc_t(1);
    const acc_t delta = x - s.mean;
    s.mean += delta / s.count;
    s.m2 += delta * (x - s.mean);
  }
  __device__ static void merge(State& a, const State& b) {
    merge_moments<acc_t>(a.count, a.mean, a.m2, b.count, b.mean, b.m2);
  }
};

// Backward sums of dz and dz * (x - mean).
template <Activation A, typename scalar_t, typename acc_t>
struct BackwardSumsOp {
  using State = Sums<acc_t>;
  Element<scalar_t, acc_t> e;
  __device__ static State identity() { return {acc_t(0), acc_t(0)}; }
  __device__ void add(State& s, int64_t i, int64_t c) const {
    const acc_t x = static_cast<acc_t>(e.input[i]);
    const acc_t dz = e.template dz<A>(i, c, x);
    if (e.dz_out) e.dz_out[i] = static_cast<scalar_t>(dz);
    s.dz += dz;
    s.dz_xmu += dz * (x - e.coefficient(kMean, c));
  }
  __device__ static void merge(State& a, const State& b) {
    a.dz += b.dz;
    a.dz_xmu += b.dz_xmu;
  }
};

// Tree reduction of `count` states in shared memory into states[0]; fixed order.
template <typename Op>
__device__ void reduce_shared(typename Op::State* states, int index, int count, int stride) {
  for (int half = count / 2; half > 0; half /= 2) {
    __syncthreads();
    if (index < half) Op::merge(states[index * stride], states[(index + half) * stride]);
  }
  __syncthreads();
}

// Planar: block (channel, split) walks values [split * per_split, ...) of the channel,
// value j being input[(j / inner * C + c) * inner + j % inner].
template <typename Op>
__global__ void reduce_planar_kernel(Op op, int64_t channels, int64_t inner, int64_t count,
                                     int64_t per_split, typename Op::State* parts) {
  using State = typename Op::State;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  State* states = reinterpret_cast<State*>(shared_bytes);
  const int64_t c = blockIdx.x;
  const int64_t begin = blockIdx.y * per_split;
  const int64_t end = begin + per_split < count ? begin + per_split : count;
  const int64_t step_n = blockDim.x / inner, step_l = blockDim.x % inner;
  State state = Op::identity();
  int64_t j = begin + threadIdx.x;
  int64_t n = j / inner, l = j % inner;
  for (; j < end; j += blockDim.x) {
    op.add(state, (n * channels + c) * inner + l, c);
    n += step_n;
    l += step_l;
    if (l >= inner) {
      l -= inner;
      ++n;
    }
  }
  states[threadIdx.x] = state;
  reduce_shared<Op>(states, threadIdx.x, blockDim.x, 1);
  if (threadIdx.x == 0) parts[blockIdx.y * channels + c] = states[0];
}

// Channels last: block (channel tile, split), thread (x: channel, y: row).
template <typename Op>
__global__ void reduce_channels_last_kernel(Op op, int64_t channels, int64_t rows,
                                            int64_t per_split, typename Op::State* parts) {
  using State = typename Op::State;
  __shared__ State states[kTileRows * kTileChannels];
  const int64_t c = blockIdx.x * static_cast<int64_t>(kTileChannels) + threadIdx.x;
  const int64_t begin = blockIdx.y * per_split;
  const int64_t end = begin + per_split < rows ? begin + per_split : rows;
  State state = Op::identity();
  if (c < channels)
    for (int64_t r = begin + threadIdx.y; r < end; r += kTileRows) op.add(state, r * channels + c, c);
  states[threadIdx.y * kTileChannels + threadIdx.x] = state;
  reduce_shared<Op>(states + threadIdx.x, threadIdx.y, kTileRows, kTileChannels);
  if (threadIdx.y == 0 && c < channels) parts[blockIdx.y * channels + c] = states[threadIdx.x];
}

// Merges the splits' partial results per channel, in split order.
template <typename Op, typename Finish>
__global__ void merge_parts_kernel(const typename Op::State* parts, int64_t splits,
                                   int64_t channels, Finish finish) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  typename Op::State state = parts[c];
  for (int64_t s = 1; s < splits; ++s) Op::merge(state, parts[s * channels + c]);
  finish(c, state);
}

// Divides by the exact count: a float count is exact only up to 2^24 values.
template <typename acc_t>
struct FinishStats {
  acc_t *mean, *var;
  double count;
  __device__ void operator()(int64_t c, const Moments<acc_t>& m) const {
    mean[c] = m.mean;
    var[c] = count > 0 ? static_cast<acc_t>(m.m2 / count) : acc_t(0);
  }
};

template <typename acc_t>
struct FinishSums {
  acc_t *dz, *dz_xmu;
  __device__ void operator()(int64_t c, const Sums<acc_t>& s) const {
    dz[c] = s.dz;
    dz_xmu[c] = s.dz_xmu;
  }
};

// Runs a reduction over the whole input and finish(c, state) per channel.
template <typename Op, typename Finish>
void reduce(const Operands& o, Op op, Finish finish) {
  using State = typename Op::State;
  const Layout& l = o.layout;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t length = l.channels_last ? l.outer : l.count_per_channel();
  const int64_t columns = l.channels_last ? cuda::ceil_div<int64_t>(l.channels, kTileChannels)
                                          : l.channels;
  TORCH_CHECK(columns <= std::numeric_limits<int32_t>::max(), "fastdl.batch_norm: ",
              l.channels, " channels exceed the CUDA grid size limit");
  const int64_t min_per_split = l.channels_last ? 64 : 2048;
  int64_t splits = std::min(cuda::ceil_div<int64_t>(length, min_per_split),
                            std::max<int64_t>(1, cuda::ceil_div<int64_t>(kTargetBlocks, columns)));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
  const int64_t per_split = cuda::ceil_div<int64_t>(std::max<int64_t>(length, 1), splits);
  at::Tensor parts = at::empty({static_cast<int64_t>(splits * l.channels * sizeof(State))},
                               o.input.options().dtype(at::kByte));
  State* part_data = reinterpret_cast<State*>(parts.data_ptr());
  const dim3 grid(static_cast<unsigned>(columns), static_cast<unsigned>(splits));
  if (l.channels_last) {
    reduce_channels_last_kernel<Op><<<grid, dim3(kTileChannels, kTileRows), 0, stream>>>(
        op, l.channels, l.outer, per_split, part_data);
  } else {
    // An empty input (inner may be 0) visits nothing; max() keeps the divisions defined.
    reduce_planar_kernel<Op><<<grid, kThreadsPerBlock, kThreadsPerBlock * sizeof(State), stream>>>(
        op, l.channels, std::max<int64_t>(l.inner, 1), l.count_per_channel(), per_split,
        part_data);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_parts_kernel<Op><<<cuda::grid_for(l.channels), kThreadsPerBlock, 0, stream>>>(
      part_data, splits, l.channels, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- elementwise passes ----

template <typename index_t>
__device__ __forceinline__ index_t channel_of(index_t i, index_t channels, index_t inner) {
  return inner == 1 ? i % channels : (i / inner) % channels;
}

template <Activation A, typename index_t, typename scalar_t, typename acc_t>
__global__ void forward_kernel(Element<scalar_t, acc_t> e, index_t n, index_t inner,
                               scalar_t* output) {
  const index_t channels = static_cast<index_t>(e.channels);
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const index_t c = channel_of(i, channels, inner);
    output[i] = static_cast<scalar_t>(
        activate<A, acc_t>(e.z(i, c, static_cast<acc_t>(e.input[i])), e.slope));
  }
}

template <Activation A, typename index_t, typename scalar_t, typename acc_t>
__global__ void backward_input_kernel(Element<scalar_t, acc_t> e, index_t n, index_t inner,
                                      scalar_t* grad_input, scalar_t* grad_residual) {
  const index_t channels = static_cast<index_t>(e.channels);
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const index_t c = channel_of(i, channels, inner);
    const acc_t x = static_cast<acc_t>(e.input[i]);
    const acc_t dz = e.template dz<A>(i, c, x);
    if (grad_residual) grad_residual[i] = static_cast<scalar_t>(dz);
    if (grad_input) {
      grad_input[i] = static_cast<scalar_t>(dz * e.coefficient(kA, c) +
                                            (x - e.coefficient(kMean, c)) * e.coefficient(kB, c) +
                                            e.coefficient(kC, c));
    }
  }
}

// fn(index_tag): 32-bit index math when every index fits, including the grid-stride
// loop's last step past n.
template <typename Fn>
void with_index_type(int64_t n, Fn&& fn) {
  constexpr int64_t kMaxStride = int64_t{kMaxElementwiseBlocks} * kThreadsPerBlock;
  if (n <= std::numeric_limits<int32_t>::max() - kMaxStride) {
    fn(int32_t{});
  } else {
    fn(int64_t{});
  }
}

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(
      std::min<int64_t>(cuda::ceil_div<int64_t>(n, kThreadsPerBlock), kMaxElementwiseBlocks));
}

template <typename scalar_t, typename acc_t>
Element<scalar_t, acc_t> element(const Operands& o, const at::Tensor& table) {
  auto data = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
  return {data(o.input), data(o.residual), data(o.grad_output), nullptr,
          table.const_data_ptr<acc_t>(), o.layout.channels,
          static_cast<acc_t>(o.epilogue.negative_slope)};
}

template <typename scalar_t>
scalar_t* data_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

#define FASTDL_CUDA_DISPATCH(tensor, ...)                                                   \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (tensor).scalar_type(),         \
                                  "fastdl_batch_norm_cuda", [&] {                           \
                                    using acc_t = at::opmath_type<scalar_t>;                \
                                    __VA_ARGS__;                                            \
                                  })

void stats_cuda(const Operands& o, at::Tensor& mean, at::Tensor& var) {
  const c10::cuda::CUDAGuard guard(o.input.device());
  FASTDL_CUDA_DISPATCH(o.input, {
    const Element<scalar_t, acc_t> e{o.input.const_data_ptr<scalar_t>(), nullptr, nullptr,
                                     nullptr, nullptr, o.layout.channels, acc_t(0)};
    reduce(o, StatsOp<scalar_t, acc_t>{e},
           FinishStats<acc_t>{mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(),
                              static_cast<double>(o.layout.count_per_channel())});
  });
}

// launch(act_tag, index_tag, blocks, stream) for the elementwise kernel instantiated for
// the call's activation and index width; nothing for an empty input.
template <typename Launch>
void launch_elementwise(const Operands& o, Launch&& launch) {
  const int64_t n = o.input.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  with_activation(o.epilogue.activation, [&](auto act) {
    with_index_type(n, [&](auto index) {
      launch(act, index, elementwise_blocks(n), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void forward_cuda(const Operands& o, at::Tensor& output) {
  const c10::cuda::CUDAGuard guard(o.input.device());
  FASTDL_CUDA_DISPATCH(o.input, {
    const at::Tensor table = coefficient_table<acc_t>(o);
    const auto e = element<scalar_t, acc_t>(o, table);
    launch_elementwise(o, [&](auto act, auto index, unsigned blocks, cudaStream_t stream) {
      using index_t = decltype(index);
      forward_kernel<decltype(act)::value, index_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
          e, static_cast<index_t>(o.input.numel()), static_cast<index_t>(o.layout.inner),
          output.data_ptr<scalar_t>());
    });
  });
}

void backward_reduce_cuda(const Operands& o, at::Tensor& sum_dz, at::Tensor& sum_dz_xmu,
                          at::Tensor& dz) {
  const c10::cuda::CUDAGuard guard(o.input.device());
  FASTDL_CUDA_DISPATCH(o.input, {
    const at::Tensor table = coefficient_table<acc_t>(o);
    auto e = element<scalar_t, acc_t>(o, table);
    e.dz_out = data_or_null<scalar_t>(dz);
    with_activation(o.epilogue.activation, [&](auto act) {
      reduce(o, BackwardSumsOp<decltype(act)::value, scalar_t, acc_t>{e},
             FinishSums<acc_t>{sum_dz.data_ptr<acc_t>(), sum_dz_xmu.data_ptr<acc_t>()});
    });
  });
}

void backward_input_cuda(const Operands& o, at::Tensor& grad_input, at::Tensor& grad_residual) {
  const c10::cuda::CUDAGuard guard(o.input.device());
  FASTDL_CUDA_DISPATCH(o.input, {
    const at::Tensor table = coefficient_table<acc_t>(o);
    const auto e = element<scalar_t, acc_t>(o, table);
    launch_elementwise(o, [&](auto act, auto index, unsigned blocks, cudaStream_t stream) {
      using index_t = decltype(index);
      backward_input_kernel<decltype(act)::value, index_t>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(
              e, static_cast<index_t>(o.input.numel()), static_cast<index_t>(o.layout.inner),
              data_or_null<scalar_t>(grad_input), data_or_null<scalar_t>(grad_residual));
    });
  });
}

const DeviceKernels kCudaKernels{&stats_cuda, &forward_cuda, &backward_reduce_cuda,
                                 &backward_input_cuda};

}  // namespace
}  // namespace fastdl::batch_norm

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  fastdl::batch_norm::register_ops<fastdl::batch_norm::kCudaKernels>(m);
}
