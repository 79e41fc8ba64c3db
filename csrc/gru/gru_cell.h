// The fused GRU cell: the pointwise part of one GRU step, given the two projections
// x_gates = x W_ih^T + b_ih and h_gates = h W_hh^T + b_hh, each (B, 3H) in PyTorch's
// order (reset, update, new):
//   r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n)
//   h' = (1 - z) * n + z * h
// They stay apart (unlike the LSTM's summed gates) because r scales h_n alone. The
// forward saves [r, z, n, h_n] (B, 4H); the backward turns grad_h' into the gradients
// of both projections and the direct part of grad_h (grad_h' * z; the part through
// h_gates is the caller's GEMM).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastdl::gru {

// The shapes of a call: batch rows, hidden size.
struct CellShape {
  int64_t batch, hidden;
};

CellShape check_cell_forward(const at::Tensor& x_gates, const at::Tensor& h_gates,
                             const at::Tensor& h_prev);
CellShape check_cell_backward(const at::Tensor& grad_h, const at::Tensor& saved,
                              const at::Tensor& h_prev);

// The CPU cell kernels writing into given tensors (contiguous, float32 or float64, the
// shapes the checks above enforce): gru_layer runs them straight into its sequence
// tensors.
void cpu_cell_forward_into(const at::Tensor& x_gates, const at::Tensor& h_gates,
                           const at::Tensor& h_prev, at::Tensor& h, at::Tensor& saved);
void cpu_cell_backward_into(const at::Tensor& grad_h, const at::Tensor& saved,
                            const at::Tensor& h_prev, at::Tensor& grad_x_gates,
                            at::Tensor& grad_h_gates, at::Tensor& grad_h_prev);

// The recurrence of one GRU layer on CPU, every row every step (no packed sequence):
// from x_gates = x W_ih^T + b_ih (T, B, 3H), h0 (B, H), w_hh (3H, H) and b_hh (3H),
// writes output (T, B, H) and saved (T, B, 4H) as the cell does, all contiguous, one
// dtype. Returns false (nothing done) off CPU or for dtypes other than float32/64
// (gru_recurrence_cpu.cpp).
struct RecurrenceArgs {
  at::Tensor x_gates, h0, w_hh, b_hh, output, saved;
  int64_t steps, batch, hidden;
  bool reverse;
};
bool cpu_recurrence(const RecurrenceArgs& args);

// Its backward through time (every row every step): from the forward's output and saved,
// grad_output (T, B, H) and dh = grad_h_n (B, H), writes grad_x_gates and grad_h_gates
// (T, B, 3H) and leaves grad_h0 in dh; contiguous, one dtype. Returns false (nothing
// done) off CPU or for dtypes other than float32/64.
struct RecurrenceBackwardArgs {
  at::Tensor grad_output, output, saved, h0, w_hh, grad_x_gates, grad_h_gates, dh;
  int64_t steps, batch, hidden;
  bool reverse;
};
bool cpu_recurrence_backward(const RecurrenceBackwardArgs& args);

}  // namespace fastdl::gru
