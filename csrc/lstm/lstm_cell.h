// The fused LSTM cell: the pointwise part of one LSTM step, given the gate
// pre-activations gates = x W_ih^T + b_ih + h W_hh^T + b_hh of shape (B, 4H) in
// PyTorch's order (input, forget, cell, output):
//   i = sigmoid(gates_i), f = sigmoid(gates_f), g = tanh(gates_g), o = sigmoid(gates_o)
//   c' = f * c + i * g,  h' = o * tanh(c')
// The forward saves the activated gates (B, 4H); the backward turns grad_h' and
// grad_c' into the gradient of the pre-activations and of c in one pass.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastdl::lstm {

// The shapes of a call: batch rows, hidden size.
struct CellShape {
  int64_t batch, hidden;
};

CellShape check_cell_forward(const at::Tensor& gates, const at::Tensor& c_prev);
CellShape check_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                              const at::Tensor& activated, const at::Tensor& c_prev,
                              const at::Tensor& c);

// The CPU cell kernels writing into given tensors (contiguous, float32 or float64, the
// shapes the checks above enforce): lstm_layer runs them straight into its sequence
// tensors.
void cpu_cell_forward_into(const at::Tensor& gates, const at::Tensor& c_prev, at::Tensor& h,
                           at::Tensor& c, at::Tensor& activated);
void cpu_cell_backward_into(const at::Tensor& grad_h, const at::Tensor& grad_c,
                            const at::Tensor& activated, const at::Tensor& c_prev,
                            const at::Tensor& c, at::Tensor& grad_gates,
                            at::Tensor& grad_c_prev);

// The CPU recurrence (lstm_recurrence_cpu.cpp): one direction of one layer, input
// projection included, no projection of h, every row every step. All tensors
// contiguous and of one dtype: input (T, B, I), w_ih (4H, I), w_hh (4H, H), bias (4H,)
// = b_ih + b_hh; writes output, cells (T, B, H) and activated (T, B, 4H) as the
// step-by-step path does (or, for no backward, cells (2, B, H) and activated (1, B, 4H)
// reused in turn). Up to kMaxRecurrenceBatch rows the input projection is one
// GEMM and a step is a GEMV per row; above, register tiles of rows run both.
constexpr int64_t kMaxRecurrenceBatch = 8;
struct RecurrenceArgs {
  at::Tensor input, h0, c0, w_ih, w_hh, bias, output, cells, activated;
  int64_t steps, batch, hidden;
  bool reverse;
};
// Runs it and returns true, or returns false (nothing done) where it does not
// apply: not CPU, or a dtype other than float32/64.
bool cpu_recurrence(const RecurrenceArgs& args);

// Its backward through time, for the same layers (any batch): from the forward's
// activated and cells, grad_output (T, B, H) and grad_h = grad_output[last step] + grad_h_n,
// grad_c = grad_c_n (B, H), writes grad_gates (T, B, 4H) (for the weight gradients) and
// grad_input (T, B, I), and leaves grad_h0, grad_c0 in grad_h, grad_c. Contiguous, one
// dtype; returns false (nothing done) off CPU or for dtypes other than float32/64.
struct RecurrenceBackwardArgs {
  at::Tensor grad_output, c0, w_ih, w_hh, activated, cells;
  at::Tensor grad_gates, grad_input, grad_h, grad_c;
  int64_t steps, batch, hidden;
  bool reverse;
};
bool cpu_recurrence_backward(const RecurrenceBackwardArgs& args);

// A weight gradient over all timesteps: gates (K, M)^T x inputs (K, N), (M, N), in the
// same register tiles; undefined (nothing done) off CPU or for dtypes other than
// float32/64.
at::Tensor cpu_weight_gradient(const at::Tensor& gates, const at::Tensor& inputs);

}  // namespace fastdl::lstm
