// Schemas and argument checks of the fused LSTM cell ops. Kernels: lstm_cell_cpu.cpp,
// lstm_cell_cuda.cu. Python API, fake kernels and autograd: fastdl/ops/lstm_cell.py.
#include "lstm/lstm_cell.h"

#include <torch/library.h>

#include "common/checks.h"
#include "common/first_order.h"

namespace fastdl::lstm {
namespace {

void check_pair(const char* op, const char* arg_a, const at::Tensor& a, const char* arg_b,
                const at::Tensor& b) {
  check_same_dtype(op, arg_a, a, arg_b, b);
  check_same_device(op, arg_a, a, arg_b, b);
}

}  // namespace

CellShape check_cell_forward(const at::Tensor& gates, const at::Tensor& c_prev) {
  const char* op = "lstm_cell";
  check_shape(op, "gates", gates, {-1, -1}, "(B, 4 * H)");
  TORCH_CHECK_VALUE(gates.size(1) % 4 == 0, "fastdl.", op,
                    ": gates must have shape (B, 4 * H), got ", format_shape(gates.sizes()));
  const CellShape s{gates.size(0), gates.size(1) / 4};
  check_shape(op, "c_prev", c_prev, {s.batch, s.hidden}, "(B, H) with gates (B, 4 * H)");
  check_dtype(op, "gates", gates, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  check_pair(op, "gates", gates, "c_prev", c_prev);
  return s;
}

CellShape check_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                              const at::Tensor& activated, const at::Tensor& c_prev,
                              const at::Tensor& c) {
  const char* op = "lstm_cell_backward";
  check_shape(op, "activated_gates", activated, {-1, -1}, "(B, 4 * H)");
  TORCH_CHECK_VALUE(activated.size(1) % 4 == 0, "fastdl.", op,
                    ": activated_gates must have shape (B, 4 * H), got ",
                    format_shape(activated.sizes()));
  const CellShape s{activated.size(0), activated.size(1) / 4};
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_h", &grad_h},
                         {"grad_c", &grad_c}, {"c_prev", &c_prev}, {"c", &c}}) {
    check_shape(op, name, *t, {s.batch, s.hidden}, "(B, H) with activated_gates (B, 4 * H)");
    check_pair(op, "activated_gates", activated, name, *t);
  }
  check_dtype(op, "activated_gates", activated,
              {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  return s;
}

}  // namespace fastdl::lstm

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // (h, c, activated gates) from the gate pre-activations and the previous cell state.
  m.def("lstm_cell(Tensor gates, Tensor c_prev) -> (Tensor h, Tensor c, Tensor activated_gates)");
  // (grad of the gate pre-activations, grad of c_prev).
  m.def(
      "lstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor activated_gates, "
      "Tensor c_prev, Tensor c) -> (Tensor grad_gates, Tensor grad_c_prev)");
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "lstm_cell_backward");
}
