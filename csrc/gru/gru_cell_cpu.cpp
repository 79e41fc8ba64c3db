// CPU GRU cell: work split over batch rows and ISA dispatch around the kernels of
// gru_cell_cpu_kernels.inc. float16/bfloat16 run the float32 kernels on float32
// copies (the GEMMs around the cell dominate a GRU step; this keeps them exact).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/cpu_isa.h"
#include "common/parallel_rows.h"
#include "common/reduced_precision.h"
#include "gru/gru_cell.h"
#include "gru/gru_cell_cpu_kernels.h"

namespace fastdl::gru {
namespace {

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

std::tuple<at::Tensor, at::Tensor> gru_cell_cpu(const at::Tensor& x_gates_in,
                                                const at::Tensor& h_gates_in,
                                                const at::Tensor& h_prev_in) {
  const CellShape s = check_cell_forward(x_gates_in, h_gates_in, h_prev_in);
  const at::Tensor x_gates = widened_contiguous(x_gates_in);
  at::Tensor h = at::empty({s.batch, s.hidden}, x_gates.options());
  at::Tensor saved = at::empty({s.batch, 4 * s.hidden}, x_gates.options());
  cpu_cell_forward_into(x_gates, widened_contiguous(h_gates_in), widened_contiguous(h_prev_in),
                        h, saved);
  const auto type = x_gates_in.scalar_type();
  return {h.to(type), saved.to(type)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_cpu(
    const at::Tensor& grad_h_in, const at::Tensor& saved_in, const at::Tensor& h_prev_in) {
  const CellShape s = check_cell_backward(grad_h_in, saved_in, h_prev_in);
  const at::Tensor saved = widened_contiguous(saved_in);
  at::Tensor grad_x_gates = at::empty({s.batch, 3 * s.hidden}, saved.options());
  at::Tensor grad_h_gates = at::empty({s.batch, 3 * s.hidden}, saved.options());
  at::Tensor grad_h_prev = at::empty({s.batch, s.hidden}, saved.options());
  cpu_cell_backward_into(widened_contiguous(grad_h_in), saved, widened_contiguous(h_prev_in),
                         grad_x_gates, grad_h_gates, grad_h_prev);
  const auto type = saved_in.scalar_type();
  return {grad_x_gates.to(type), grad_h_gates.to(type), grad_h_prev.to(type)};
}

}  // namespace

void cpu_cell_forward_into(const at::Tensor& x_gates, const at::Tensor& h_gates,
                           const at::Tensor& h_prev, at::Tensor& h, at::Tensor& saved) {
  const CellShape s{x_gates.size(0), x_gates.size(1) / 3};
  AT_DISPATCH_FLOATING_TYPES(x_gates.scalar_type(), "fastdl_gru_cell", [&] {
    with_kernels<scalar_t>([&](auto kernels) {
      parallel_row_blocks(s.batch, 4 * s.hidden, [&](int64_t first, int64_t rows) {
        const int64_t offset = first * s.hidden;
        kernels.forward_rows(x_gates.const_data_ptr<scalar_t>() + 3 * offset,
                             h_gates.const_data_ptr<scalar_t>() + 3 * offset,
                             h_prev.const_data_ptr<scalar_t>() + offset, rows, s.hidden,
                             h.data_ptr<scalar_t>() + offset,
                             saved.data_ptr<scalar_t>() + 4 * offset);
      });
    });
  });
}

void cpu_cell_backward_into(const at::Tensor& grad_h, const at::Tensor& saved,
                            const at::Tensor& h_prev, at::Tensor& grad_x_gates,
                            at::Tensor& grad_h_gates, at::Tensor& grad_h_prev) {
  const CellShape s{saved.size(0), saved.size(1) / 4};
  AT_DISPATCH_FLOATING_TYPES(saved.scalar_type(), "fastdl_gru_cell_backward", [&] {
    with_kernels<scalar_t>([&](auto kernels) {
      parallel_row_blocks(s.batch, 4 * s.hidden, [&](int64_t first, int64_t rows) {
        const int64_t offset = first * s.hidden;
        kernels.backward_rows(grad_h.const_data_ptr<scalar_t>() + offset,
                              saved.const_data_ptr<scalar_t>() + 4 * offset,
                              h_prev.const_data_ptr<scalar_t>() + offset, rows, s.hidden,
                              grad_x_gates.data_ptr<scalar_t>() + 3 * offset,
                              grad_h_gates.data_ptr<scalar_t>() + 3 * offset,
                              grad_h_prev.data_ptr<scalar_t>() + offset);
      });
    });
  });
}

}  // namespace fastdl::gru

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("gru_cell", &fastdl::gru::gru_cell_cpu);
  m.impl("gru_cell_backward", &fastdl::gru::gru_cell_backward_cpu);
}
