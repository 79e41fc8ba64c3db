// CUDA GRU cell: one thread per (row, hidden unit), reading that unit's gates
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

#include <tuple>

#include "common/cuda_utils.cuh"
#include "gru/gru_cell.h"

namespace fastdl::gru {
namespace {

using cuda::kThreadsPerBlock;
using cuda::sigmoid;

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* x_gates, const scalar_t* h_gates,
                               const scalar_t* h_prev, int64_t batch, int64_t hidden,
                               scalar_t* h, scalar_t* saved) {
  const int64_t count = batch * hidden;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < count; index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / hidden, j = index % hidden;
    const scalar_t* x = x_gates + row * 3 * hidden;
    const scalar_t* hg = h_gates + row * 3 * hidden;
    const acc_t r = sigmoid<acc_t>(static_cast<acc_t>(x[j]) + static_cast<acc_t>(hg[j]));
    const acc_t z = sigmoid<acc_t>(static_cast<acc_t>(x[hidden + j]) +
                                   static_cast<acc_t>(hg[hidden + j]));
    const acc_t h_n = hg[2 * hidden + j];
    const acc_t n = tanh(static_cast<acc_t>(x[2 * hidden + j]) + r * h_n);
    h[index] = static_cast<scalar_t>(n + z * (static_cast<acc_t>(h_prev[index]) - n));
    scalar_t* out = saved + row * 4 * hidden;
    out[j] = static_cast<scalar_t>(r);
    out[hidden + j] = static_cast<scalar_t>(z);
    out[2 * hidden + j] = static_cast<scalar_t>(n);
    out[3 * hidden + j] = static_cast<scalar_t>(h_n);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* grad_h, const scalar_t* saved,
                                const scalar_t* h_prev, int64_t batch, int64_t hidden,
                                scalar_t* grad_x_gates, scalar_t* grad_h_gates,
                                scalar_t* grad_h_prev) {
  const int64_t count = batch * hidden;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < count; index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / hidden, j = index % hidden;
    const scalar_t* in = saved + row * 4 * hidden;
    const acc_t r = in[j], z = in[hidden + j], n = in[2 * hidden + j], h_n = in[3 * hidden + j];
    const acc_t dh = grad_h[index];
    const acc_t dn = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
    const acc_t dz = dh * (static_cast<acc_t>(h_prev[index]) - n) * z * (acc_t(1) - z);
    const acc_t dr = dn * h_n * r * (acc_t(1) - r);
    scalar_t* dx = grad_x_gates + row * 3 * hidden;
    scalar_t* dhg = grad_h_gates + row * 3 * hidden;
    dx[j] = dhg[j] = static_cast<scalar_t>(dr);
    dx[hidden + j] = dhg[hidden + j] = static_cast<scalar_t>(dz);
    dx[2 * hidden + j] = static_cast<scalar_t>(dn);
    dhg[2 * hidden + j] = static_cast<scalar_t>(dn * r);
    grad_h_prev[index] = static_cast<scalar_t>(dh * z);
  }
}

std::tuple<at::Tensor, at::Tensor> gru_cell_cuda(const at::Tensor& x_gates_in,
                                                 const at::Tensor& h_gates_in,
                                                 const at::Tensor& h_prev_in) {
  const CellShape s = check_cell_forward(x_gates_in, h_gates_in, h_prev_in);
  const c10::cuda::CUDAGuard guard(x_gates_in.device());
  const at::Tensor x_gates = x_gates_in.contiguous(), h_gates = h_gates_in.contiguous();
  const at::Tensor h_prev = h_prev_in.contiguous();
  at::Tensor h = at::empty({s.batch, s.hidden}, x_gates.options());
  at::Tensor saved = at::empty({s.batch, 4 * s.hidden}, x_gates.options());
  const int64_t n = s.batch * s.hidden;
  if (n == 0) return {h, saved};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_gates.scalar_type(),
                                  "fastdl_gru_cell_cuda", [&] {
    forward_kernel<scalar_t, at::opmath_type<scalar_t>>
        <<<cuda::grid_for(n), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x_gates.const_data_ptr<scalar_t>(), h_gates.const_data_ptr<scalar_t>(),
            h_prev.const_data_ptr<scalar_t>(), s.batch, s.hidden, h.data_ptr<scalar_t>(),
            saved.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {h, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_cuda(
    const at::Tensor& grad_h_in, const at::Tensor& saved_in, const at::Tensor& h_prev_in) {
  const CellShape s = check_cell_backward(grad_h_in, saved_in, h_prev_in);
  const c10::cuda::CUDAGuard guard(saved_in.device());
  const at::Tensor grad_h = grad_h_in.contiguous(), saved = saved_in.contiguous();
  const at::Tensor h_prev = h_prev_in.contiguous();
  at::Tensor grad_x_gates = at::empty({s.batch, 3 * s.hidden}, saved.options());
  at::Tensor grad_h_gates = at::empty({s.batch, 3 * s.hidden}, saved.options());
  at::Tensor grad_h_prev = at::empty({s.batch, s.hidden}, saved.options());
  const int64_t n = s.batch * s.hidden;
  if (n == 0) return {grad_x_gates, grad_h_gates, grad_h_prev};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, saved.scalar_type(),
                                  "fastdl_gru_cell_backward_cuda", [&] {
    backward_kernel<scalar_t, at::opmath_type<scalar_t>>
        <<<cuda::grid_for(n), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            grad_h.const_data_ptr<scalar_t>(), saved.const_data_ptr<scalar_t>(),
            h_prev.const_data_ptr<scalar_t>(), s.batch, s.hidden,
            grad_x_gates.data_ptr<scalar_t>(), grad_h_gates.data_ptr<scalar_t>(),
            grad_h_prev.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x_gates, grad_h_gates, grad_h_prev};
}

}  // namespace
}  // namespace fastdl::gru

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("gru_cell", &fastdl::gru::gru_cell_cuda);
  m.impl("gru_cell_backward", &fastdl::gru::gru_cell_backward_cuda);
}
