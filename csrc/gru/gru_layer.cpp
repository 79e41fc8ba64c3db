// One GRU layer over a whole sequence, in one direction: the input projection of all
// timesteps as one GEMM, then per step one GEMM with W_hh (at::addmm, b_hh included;
// on CPU without packing, gru_recurrence_cpu.cpp's tiles instead) and the fused cell
// (fastdl::gru_cell, per device); backward through time runs the
// fused cell backward and one GEMM with W_hh per step, and batches the weight, bias
// and input gradients across time into GEMMs and sums over all timesteps. The
// sequence loop is here in C++, not in Python.
//
// Registered for CPU and CUDA with the same code: the GEMMs and the cell go through
// the dispatcher, so each runs on its device's kernel.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/first_order.h"
#include "common/packed_batch.h"
#include "common/reduced_precision.h"
#include "gru/gru_cell.h"

namespace fastdl::gru {
namespace {

using Cell = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&);
using CellBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                    const at::Tensor&,
                                                                    const at::Tensor&);

// The CPU kernels write straight into the sequence tensors; other devices and
// dtypes go through the dispatcher and copy.
void cell_into(const at::Tensor& x_gates, const at::Tensor& h_gates, const at::Tensor& h_prev,
               at::Tensor h, at::Tensor saved) {
  if (cpu_kernel_dtype(x_gates)) return cpu_cell_forward_into(x_gates, h_gates, h_prev, h, saved);
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastdl::gru_cell", "").typed<Cell>();
  auto [h_new, saved_new] = op.call(x_gates, h_gates, h_prev);
  h.copy_(h_new);
  saved.copy_(saved_new);
}

void cell_backward_into(const at::Tensor& grad_h, const at::Tensor& saved,
                        const at::Tensor& h_prev, at::Tensor grad_x_gates,
                        at::Tensor grad_h_gates, at::Tensor grad_h_prev) {
  if (cpu_kernel_dtype(saved))
    return cpu_cell_backward_into(grad_h, saved, h_prev, grad_x_gates, grad_h_gates, grad_h_prev);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastdl::gru_cell_backward", "")
                             .typed<CellBackward>();
  auto [d_x, d_h, d_h_prev] = op.call(grad_h, saved, h_prev);
  grad_x_gates.copy_(d_x);
  grad_h_gates.copy_(d_h);
  grad_h_prev.copy_(d_h_prev);
}

struct LayerShape {
  int64_t steps, batch, input_size, hidden;
};

// t has the given shape and input's dtype and device.
void check_like_input(const char* op, const char* arg, const at::Tensor& t,
                      std::initializer_list<int64_t> shape, const char* shape_text,
                      const at::Tensor& input) {
  check_shape(op, arg, t, shape, shape_text);
  check_same_dtype(op, "input", input, arg, t);
  check_same_device(op, "input", input, arg, t);
}

// The tensors both layer ops take.
LayerShape check_layer(const char* op, const at::Tensor& input, const at::Tensor& h0,
                       const at::Tensor& w_ih, const at::Tensor& w_hh) {
  check_shape(op, "input", input, {-1, -1, -1}, "(T, B, I)");
  check_dtype(op, "input", input, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  check_shape(op, "w_hh", w_hh, {-1, -1}, "(3 * H, H)");
  const LayerShape s{input.size(0), input.size(1), input.size(2), w_hh.size(1)};
  check_like_input(op, "w_hh", w_hh, {3 * s.hidden, s.hidden}, "(3 * H, H)", input);
  check_like_input(op, "w_ih", w_ih, {3 * s.hidden, s.input_size},
                   "(3 * H, I) with input (T, B, I)", input);
  check_like_input(op, "h0", h0, {s.batch, s.hidden}, "(B, H)", input);
  return s;
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, bool reverse,
    const std::optional<at::Tensor>& batch_sizes) {
  const char* op = "gru_layer";
  const LayerShape s = check_layer(op, input, h0, w_ih, w_hh);
  check_like_input(op, "b_ih", b_ih, {3 * s.hidden}, "(3 * H,)", input);
  check_like_input(op, "b_hh", b_hh, {3 * s.hidden}, "(3 * H,)", input);
  const std::vector<int64_t> active = active_rows(op, batch_sizes, s.steps, s.batch);
  // The input projection of every timestep at once: (T * B, I) x (I, 3H).
  const at::Tensor x_gates =
      at::addmm(b_ih, input.reshape({s.steps * s.batch, s.input_size}), w_ih.t())
          .view({s.steps, s.batch, 3 * s.hidden});
  // Packed: padding positions stay zero (the output's, as pad_packed_sequence's).
  const auto allocate = [&](int64_t width) {
    return batch_sizes ? at::zeros({s.steps, s.batch, width}, input.options())
                       : at::empty({s.steps, s.batch, width}, input.options());
  };
  at::Tensor output = allocate(s.hidden), saved = allocate(4 * s.hidden);
  if (!batch_sizes && s.steps > 0 &&
      cpu_recurrence({x_gates, h0.contiguous(), w_hh.contiguous(), b_hh.contiguous(), output,
                      saved, s.steps, s.batch, s.hidden, reverse}))
    return {output, output[step_index(s.steps - 1, s.steps, reverse)].clone(), saved};
  at::Tensor h_gates = at::empty({s.batch, 3 * s.hidden}, input.options());
  const at::Tensor w_hh_t = w_hh.t();
  if (!batch_sizes) {  // every row every step: the state is the previous step's output
    at::Tensor h = h0.contiguous();
    for (int64_t step = 0; step < s.steps; ++step) {
      const int64_t t = step_index(step, s.steps, reverse);
      at::addmm_out(h_gates, b_hh, h, w_hh_t);
      cell_into(x_gates[t], h_gates, h, output[t], saved[t]);
      h = output[t];
    }
    return {output, h.clone(), saved};
  }
  // Packed: step t runs rows [0, active[t]); the state lives in its own buffer.
  at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  for (int64_t step = 0; step < s.steps; ++step) {
    const int64_t t = step_index(step, s.steps, reverse), rows = active[t];
    at::Tensor step_h_gates = rows_of(h_gates, rows), step_h = rows_of(h, rows);
    at::addmm_out(step_h_gates, b_hh, step_h, w_hh_t);
    cell_into(rows_of(x_gates[t], rows), step_h_gates, step_h, rows_of(output[t], rows),
              rows_of(saved[t], rows));
    step_h.copy_(rows_of(output[t], rows));
  }
  return {output, h, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_layer_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                   const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const at::Tensor& output_in,
                   const at::Tensor& saved_in, bool reverse,
                   const std::optional<at::Tensor>& batch_sizes) {
  const char* op = "gru_layer_backward";
  const LayerShape s = check_layer(op, input, h0, w_ih, w_hh);
  check_like_input(op, "grad_output", grad_output, {s.steps, s.batch, s.hidden}, "(T, B, H)",
                   input);
  check_like_input(op, "grad_h_n", grad_h_n, {s.batch, s.hidden}, "(B, H)", input);
  check_like_input(op, "output", output_in, {s.steps, s.batch, s.hidden}, "(T, B, H)", input);
  check_like_input(op, "saved", saved_in, {s.steps, s.batch, 4 * s.hidden}, "(T, B, 4 * H)",
                   input);
  // The cell kernels index rows densely (no copies for the forward's own outputs).
  const at::Tensor output = output_in.contiguous(), saved = saved_in.contiguous();
  const at::Tensor h_first = h0.contiguous();
  const std::vector<int64_t> active = active_rows(op, batch_sizes, s.steps, s.batch);
  // Packed: gradients of padding positions stay zero, so the GEMMs over all timesteps
  // below add nothing for them.
  at::Tensor grad_x_gates = batch_sizes
                                ? at::zeros({s.steps, s.batch, 3 * s.hidden}, input.options())
                                : at::empty({s.steps, s.batch, 3 * s.hidden}, input.options());
  at::Tensor grad_h_gates = batch_sizes ? at::zeros_like(grad_x_gates) : at::empty_like(grad_x_gates);
  // dh: the gradient reaching h after step t from later steps (and h_n); rows outside
  // a packed step's active prefix keep theirs.
  at::Tensor dh = grad_h_n.clone(at::MemoryFormat::Contiguous);
  const bool ran_on_cpu =
      !batch_sizes && s.steps > 0 &&
      cpu_recurrence_backward({grad_output.contiguous(), output, saved, h_first, w_hh.contiguous(),
                               grad_x_gates, grad_h_gates, dh, s.steps, s.batch, s.hidden,
                               reverse});
  if (!ran_on_cpu) {
    at::Tensor grad_h = at::empty_like(dh);
    // Only a packed reverse pass joins rows (state_before then needs the scratch).
    at::Tensor h_joined = batch_sizes ? at::empty_like(dh) : at::Tensor();
    for (int64_t step = s.steps - 1; step >= 0; --step) {
      const int64_t t = step_index(step, s.steps, reverse), rows = active[t];
      at::Tensor h_prev = rows_of(h_first, rows);
      if (step > 0) {
        const int64_t before = step_index(step - 1, s.steps, reverse);
        h_prev = state_before(output[before], active[before], h_first, rows, h_joined);
      }
      at::Tensor step_grad_h = rows_of(grad_h, rows), step_dh = rows_of(dh, rows);
      at::add_out(step_grad_h, rows_of(grad_output[t], rows), step_dh);
      cell_backward_into(step_grad_h, rows_of(saved[t], rows), h_prev,
                         rows_of(grad_x_gates[t], rows), rows_of(grad_h_gates[t], rows), step_dh);
      step_dh.addmm_(rows_of(grad_h_gates[t], rows), w_hh);  // through h_gates = h W_hh^T + b_hh
    }
  }
  // h_prev of every step, in time order: (h0, out_0, ..., out_{T-2}), or the mirror.
  const at::Tensor first = h_first.unsqueeze(0);
  at::Tensor h_prev = s.steps == 0 ? output
                      : reverse    ? at::cat({output.slice(0, 1), first})
                                   : at::cat({first, output.slice(0, 0, s.steps - 1)});
  if (batch_sizes && reverse) start_rows_from(h_prev, h_first, active);
  const int64_t rows = s.steps * s.batch;
  const at::Tensor flat_x = grad_x_gates.view({rows, 3 * s.hidden});
  const at::Tensor flat_h = grad_h_gates.view({rows, 3 * s.hidden});
  return {at::mm(flat_x, w_ih).view({s.steps, s.batch, s.input_size}),
          dh,
          at::mm(flat_x.t(), input.reshape({rows, s.input_size})),
          at::mm(flat_h.t(), h_prev.reshape({rows, s.hidden})),
          flat_x.sum(0),
          flat_h.sum(0)};
}

}  // namespace
}  // namespace fastdl::gru

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // One direction of one layer: (output (T, B, H), h_n, saved (T, B, 4H): each step's
  // [r, z, n, h_n] for the backward). bias=False: b_ih and b_hh zeros. batch_sizes: a
  // PackedSequence's, for input padded to (T, B, I) in its sorted order.
  m.def(
      "gru_layer(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, "
      "bool reverse, Tensor? batch_sizes=None) -> (Tensor output, Tensor h_n, Tensor saved)");
  // (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh).
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor h0, "
      "Tensor w_ih, Tensor w_hh, Tensor output, Tensor saved, bool reverse, "
      "Tensor? batch_sizes=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("gru_layer", &fastdl::gru::gru_layer);
  m.impl("gru_layer_backward", &fastdl::gru::gru_layer_backward);
}

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("gru_layer", &fastdl::gru::gru_layer);
  m.impl("gru_layer_backward", &fastdl::gru::gru_layer_backward);
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "gru_layer_backward");
}
