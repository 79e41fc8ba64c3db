// Schemas and argument checks of the fused GRU cell ops. Kernels: gru_cell_cpu.cpp,
// gru_cell_cuda.cu. Python API, fake kernels and autograd: fastdl/ops/gru.py.
#include "gru/gru_cell.h"

#include <torch/library.h>

#include <initializer_list>
#include <utility>

#include "common/checks.h"
#include "common/first_order.h"

namespace fastdl::gru {
namespace {

using Named = std::pair<const char*, const at::Tensor*>;

// Every tensor of a call has the dtype and device of the first; the first's dtype is
// one the kernels serve.
void check_tensors(const char* op, std::initializer_list<Named> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  check_dtype(op, first_name, *first, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  for (const auto& [name, t] : tensors) {
    check_same_dtype(op, first_name, *first, name, *t);
    check_same_device(op, first_name, *first, name, *t);
  }
}

}  // namespace

CellShape check_cell_forward(const at::Tensor& x_gates, const at::Tensor& h_gates,
                             const at::Tensor& h_prev) {
  const char* op = "gru_cell";
  check_shape(op, "x_gates", x_gates, {-1, -1}, "(B, 3 * H)");
  TORCH_CHECK_VALUE(x_gates.size(1) % 3 == 0, "fastdl.", op,
                    ": x_gates must have shape (B, 3 * H), got ", format_shape(x_gates.sizes()));
  const CellShape s{x_gates.size(0), x_gates.size(1) / 3};
  check_shape(op, "h_gates", h_gates, {s.batch, 3 * s.hidden}, "(B, 3 * H) as x_gates");
  check_shape(op, "h_prev", h_prev, {s.batch, s.hidden}, "(B, H) with x_gates (B, 3 * H)");
  check_tensors(op, {{"x_gates", &x_gates}, {"h_gates", &h_gates}, {"h_prev", &h_prev}});
  return s;
}

CellShape check_cell_backward(const at::Tensor& grad_h, const at::Tensor& saved,
                              const at::Tensor& h_prev) {
  const char* op = "gru_cell_backward";
  check_shape(op, "saved", saved, {-1, -1}, "(B, 4 * H)");
  TORCH_CHECK_VALUE(saved.size(1) % 4 == 0, "fastdl.", op,
                    ": saved must have shape (B, 4 * H), got ", format_shape(saved.sizes()));
  const CellShape s{saved.size(0), saved.size(1) / 4};
  check_shape(op, "grad_h", grad_h, {s.batch, s.hidden}, "(B, H) with saved (B, 4 * H)");
  check_shape(op, "h_prev", h_prev, {s.batch, s.hidden}, "(B, H) with saved (B, 4 * H)");
  check_tensors(op, {{"saved", &saved}, {"grad_h", &grad_h}, {"h_prev", &h_prev}});
  return s;
}

}  // namespace fastdl::gru

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // (h', saved = [r, z, n, h_n] (B, 4H)) from the two projections and h.
  m.def("gru_cell(Tensor x_gates, Tensor h_gates, Tensor h_prev) -> (Tensor h, Tensor saved)");
  // (grad of x_gates, grad of h_gates, the direct part of grad h_prev: grad_h * z).
  m.def(
      "gru_cell_backward(Tensor grad_h, Tensor saved, Tensor h_prev) -> "
      "(Tensor grad_x_gates, Tensor grad_h_gates, Tensor grad_h_prev)");
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "gru_cell_backward");
}
