// CUDA LSTM cell: one thread per (row, hidden unit), reading that unit's four gates
// (coalesced across the warp: neighbouring threads take neighbouring units), math in
// float (double for float64), the same formulas as the CPU kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/cuda_utils.cuh"
#include "lstm/lstm_cell.h"

namespace fastdl::lstm {
namespace {

using cuda::kThreadsPerBlock;
using cuda::sigmoid;

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* gates, const scalar_t* c_prev, int64_t batch,
                               int64_t hidden, scalar_t* h, scalar_t* c, scalar_t* activated) {
  const int64_t n = batch * hidden;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = index / hidden, j = index % hidden;
    const scalar_t* in = gates + r * 4 * hidden;
    const acc_t i = sigmoid<acc_t>(static_cast<acc_t>(in[j]));
    const acc_t f = sigmoid<acc_t>(static_cast<acc_t>(in[hidden + j]));
    const acc_t g = tanh(static_cast<acc_t>(in[2 * hidden + j]));
    const acc_t o = sigmoid<acc_t>(static_cast<acc_t>(in[3 * hidden + j]));
    const acc_t c_new = f * static_cast<acc_t>(c_prev[index]) + i * g;
    c[index] = static_cast<scalar_t>(c_new);
    h[index] = static_cast<scalar_t>(o * tanh(c_new));
    scalar_t* act = activated + r * 4 * hidden;
    act[j] = static_cast<scalar_t>(i);
    act[hidden + j] = static_cast<scalar_t>(f);
    act[2 * hidden + j] = static_cast<scalar_t>(g);
    act[3 * hidden + j] = static_cast<scalar_t>(o);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* grad_h, const scalar_t* grad_c,
                                const scalar_t* activated, const scalar_t* c_prev,
                                const scalar_t* c, int64_t batch, int64_t hidden,
                                scalar_t* grad_gates, scalar_t* grad_c_prev) {
  const int64_t n = batch * hidden;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = index / hidden, j = index % hidden;
    const scalar_t* act = activated + r * 4 * hidden;
    const acc_t i = act[j], f = act[hidden + j], g = act[2 * hidden + j], o = act[3 * hidden + j];
    const acc_t gh = grad_h[index];
    const acc_t tc = tanh(static_cast<acc_t>(c[index]));
    const acc_t dc = static_cast<acc_t>(grad_c[index]) + gh * o * (acc_t(1) - tc * tc);
    scalar_t* out = grad_gates + r * 4 * hidden;
    out[j] = static_cast<scalar_t>(dc * g * i * (acc_t(1) - i));
    out[hidden + j] = static_cast<scalar_t>(dc * static_cast<acc_t>(c_prev[index]) * f *
                                            (acc_t(1) - f));
    out[2 * hidden + j] = static_cast<scalar_t>(dc * i * (acc_t(1) - g * g));
    out[3 * hidden + j] = static_cast<scalar_t>(gh * tc * o * (acc_t(1) - o));
    grad_c_prev[index] = static_cast<scalar_t>(dc * f);
  }
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(cuda::ceil_div<int64_t>(n, kThreadsPerBlock), 4096));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_cuda(const at::Tensor& gates_in,
                                                              const at::Tensor& c_prev_in) {
  const CellShape s = check_cell_forward(gates_in, c_prev_in);
  const c10::cuda::CUDAGuard guard(gates_in.device());
  const at::Tensor gates = gates_in.contiguous(), c_prev = c_prev_in.contiguous();
  at::Tensor h = at::empty({s.batch, s.hidden}, gates.options());
  at::Tensor c = at::empty({s.batch, s.hidden}, gates.options());
  at::Tensor activated = at::empty({s.batch, 4 * s.hidden}, gates.options());
  const int64_t n = s.batch * s.hidden;
  if (n == 0) return {h, c, activated};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "fastdl_lstm_cell_cuda", [&] {
    forward_kernel<scalar_t, at::opmath_type<scalar_t>>
        <<<blocks_for(n), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(), s.batch,
            s.hidden, h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
            activated.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {h, c, activated};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cuda(
    const at::Tensor& grad_h_in, const at::Tensor& grad_c_in, const at::Tensor& activated_in,
    const at::Tensor& c_prev_in, const at::Tensor& c_in) {
  const CellShape s = check_cell_backward(grad_h_in, grad_c_in, activated_in, c_prev_in, c_in);
  const c10::cuda::CUDAGuard guard(activated_in.device());
  const at::Tensor grad_h = grad_h_in.contiguous(), grad_c = grad_c_in.contiguous();
  const at::Tensor activated = activated_in.contiguous(), c_prev = c_prev_in.contiguous();
  const at::Tensor c = c_in.contiguous();
  at::Tensor grad_gates = at::empty({s.batch, 4 * s.hidden}, activated.options());
  at::Tensor grad_c_prev = at::empty({s.batch, s.hidden}, activated.options());
  const int64_t n = s.batch * s.hidden;
  if (n == 0) return {grad_gates, grad_c_prev};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activated.scalar_type(),
                                  "fastdl_lstm_cell_backward_cuda", [&] {
    backward_kernel<scalar_t, at::opmath_type<scalar_t>>
        <<<blocks_for(n), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            grad_h.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(),
            activated.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
            c.const_data_ptr<scalar_t>(), s.batch, s.hidden, grad_gates.data_ptr<scalar_t>(),
            grad_c_prev.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_gates, grad_c_prev};
}

}  // namespace
}  // namespace fastdl::lstm

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("lstm_cell", &fastdl::lstm::lstm_cell_cuda);
  m.impl("lstm_cell_backward", &fastdl::lstm::lstm_cell_backward_cuda);
}
