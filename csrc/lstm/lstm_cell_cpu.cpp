// CPU LSTM cell: work split over batch rows and ISA dispatch around the kernels of
// lstm_cell_cpu_kernels.inc. float16/bfloat16 run the float32 kernels on float32
// copies (the GEMMs around the cell dominate an LSTM step; this keeps them exact).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/cpu_isa.h"
#include "common/parallel_rows.h"
#include "common/reduced_precision.h"
#include "lstm/lstm_cell.h"
#include "lstm/lstm_cell_cpu_kernels.h"

namespace fastdl::lstm {
namespace {

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_cpu(const at::Tensor& gates_in,
                                                             const at::Tensor& c_prev_in) {
  const CellShape s = check_cell_forward(gates_in, c_prev_in);
  const at::Tensor gates = widened_contiguous(gates_in), c_prev = widened_contiguous(c_prev_in);
  at::Tensor h = at::empty({s.batch, s.hidden}, gates.options());
  at::Tensor c = at::empty({s.batch, s.hidden}, gates.options());
  at::Tensor activated = at::empty({s.batch, 4 * s.hidden}, gates.options());
  cpu_cell_forward_into(gates, c_prev, h, c, activated);
  const auto type = gates_in.scalar_type();
  return {h.to(type), c.to(type), activated.to(type)};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward_cpu(
    const at::Tensor& grad_h_in, const at::Tensor& grad_c_in, const at::Tensor& activated_in,
    const at::Tensor& c_prev_in, const at::Tensor& c_in) {
  const CellShape s = check_cell_backward(grad_h_in, grad_c_in, activated_in, c_prev_in, c_in);
  const at::Tensor activated = widened_contiguous(activated_in);
  at::Tensor grad_gates = at::empty({s.batch, 4 * s.hidden}, activated.options());
  at::Tensor grad_c_prev = at::empty({s.batch, s.hidden}, activated.options());
  cpu_cell_backward_into(widened_contiguous(grad_h_in), widened_contiguous(grad_c_in), activated,
                         widened_contiguous(c_prev_in), widened_contiguous(c_in), grad_gates,
                         grad_c_prev);
  const auto type = activated_in.scalar_type();
  return {grad_gates.to(type), grad_c_prev.to(type)};
}

}  // namespace

void cpu_cell_forward_into(const at::Tensor& gates, const at::Tensor& c_prev, at::Tensor& h,
                           at::Tensor& c, at::Tensor& activated) {
  const CellShape s{gates.size(0), gates.size(1) / 4};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastdl_lstm_cell", [&] {
    with_kernels<scalar_t>([&](auto kernels) {
      parallel_row_blocks(s.batch, 4 * s.hidden, [&](int64_t first, int64_t rows) {
        kernels.forward_rows(gates.const_data_ptr<scalar_t>() + first * 4 * s.hidden,
                             c_prev.const_data_ptr<scalar_t>() + first * s.hidden, rows,
                             s.hidden, h.data_ptr<scalar_t>() + first * s.hidden,
                             c.data_ptr<scalar_t>() + first * s.hidden,
                             activated.data_ptr<scalar_t>() + first * 4 * s.hidden);
      });
    });
  });
}

void cpu_cell_backward_into(const at::Tensor& grad_h, const at::Tensor& grad_c,
                            const at::Tensor& activated, const at::Tensor& c_prev,
                            const at::Tensor& c, at::Tensor& grad_gates,
                            at::Tensor& grad_c_prev) {
  const CellShape s{activated.size(0), activated.size(1) / 4};
  AT_DISPATCH_FLOATING_TYPES(activated.scalar_type(), "fastdl_lstm_cell_backward", [&] {
    with_kernels<scalar_t>([&](auto kernels) {
      parallel_row_blocks(s.batch, 4 * s.hidden, [&](int64_t first, int64_t rows) {
        const int64_t offset = first * s.hidden;
        kernels.backward_rows(grad_h.const_data_ptr<scalar_t>() + offset,
                              grad_c.const_data_ptr<scalar_t>() + offset,
                              activated.const_data_ptr<scalar_t>() + 4 * offset,
                              c_prev.const_data_ptr<scalar_t>() + offset,
                              c.const_data_ptr<scalar_t>() + offset, rows, s.hidden, s.hidden,
                              grad_gates.data_ptr<scalar_t>() + 4 * offset,
                              grad_c_prev.data_ptr<scalar_t>() + offset);
      });
    });
  });
}

}  // namespace fastdl::lstm

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("lstm_cell", &fastdl::lstm::lstm_cell_cpu);
  m.impl("lstm_cell_backward", &fastdl::lstm::lstm_cell_backward_cpu);
}
