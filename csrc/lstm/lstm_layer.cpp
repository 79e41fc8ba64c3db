// One LSTM layer over a whole sequence, in one direction: the input projection of all
// timesteps as one GEMM, then per step one GEMM with W_hh (at::addmm) and the fused
// cell op (fastdl::lstm_cell, per device), except on CPU without projection or packing,
// where lstm_recurrence_cpu.cpp runs the whole layer (its own input projection
// included, above a few rows). Backward through time runs the fused cell backward per
// step and batches the weight and input gradients across time into three GEMMs, except
// on CPU: without projection or packing lstm_bptt_cpu.cpp runs the steps and the input
// gradient, and the weight gradients run in its tiles for every CPU layer. The
// sequence loop is here in C++, not in Python.
//
// Registered for CPU and CUDA with the same code: the GEMMs and the cell go through
// the dispatcher, so each runs on its device's kernel.
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/first_order.h"
#include "common/packed_batch.h"
#include "common/reduced_precision.h"
#include "lstm/lstm_cell.h"

namespace fastdl::lstm {
namespace {

using Cell = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using CellBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&);

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell(const at::Tensor& gates, const at::Tensor& c) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastdl::lstm_cell", "")
                             .typed<Cell>();
  return op.call(gates, c);
}

std::tuple<at::Tensor, at::Tensor> cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                 const at::Tensor& activated,
                                                 const at::Tensor& c_prev, const at::Tensor& c) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastdl::lstm_cell_backward", "")
                             .typed<CellBackward>();
  return op.call(grad_h, grad_c, activated, c_prev, c);
}

// The CPU kernels write straight into the sequence tensors; other devices and
// dtypes go through the dispatcher and copy.
void cell_into(const at::Tensor& gates, const at::Tensor& c_prev, at::Tensor h, at::Tensor c,
               at::Tensor activated) {
  if (cpu_kernel_dtype(gates)) return cpu_cell_forward_into(gates, c_prev, h, c, activated);
  auto [h_new, c_new, act] = cell(gates, c_prev);
  h.copy_(h_new);
  c.copy_(c_new);
  activated.copy_(act);
}

void cell_backward_into(const at::Tensor& grad_h, const at::Tensor& grad_c,
                        const at::Tensor& activated, const at::Tensor& c_prev,
                        const at::Tensor& c, at::Tensor grad_gates, at::Tensor grad_c_prev) {
  if (cpu_kernel_dtype(activated))
    return cpu_cell_backward_into(grad_h, grad_c, activated, c_prev, c, grad_gates, grad_c_prev);
  auto [d_gates, dc_prev] = cell_backward(grad_h, grad_c, activated, c_prev, c);
  grad_gates.copy_(d_gates);
  grad_c_prev.copy_(dc_prev);
}

// Checks one layer's tensors; H is the cell size, P the size of h (P = H without a
// projection, else w_hr is (P, H) and h = w_hr * (o * tanh(c)), as nn.LSTM's proj_size).
void check_layer(const char* op, const at::Tensor& input, const at::Tensor& h0,
                 const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const at::Tensor& bias, const std::optional<at::Tensor>& w_hr) {
  check_shape(op, "input", input, {-1, -1, -1}, "(T, B, I)");
  const int64_t batch = input.size(1);
  int64_t hidden, proj;
  if (w_hr) {
    check_shape(op, "w_hr", *w_hr, {-1, -1}, "(P, H)");
    proj = w_hr->size(0);
    hidden = w_hr->size(1);
    check_shape(op, "w_hh", w_hh, {4 * hidden, proj}, "(4 * H, P) with w_hr (P, H)");
    check_shape(op, "h0", h0, {batch, proj}, "(B, P) with w_hr (P, H)");
  } else {
    check_shape(op, "w_hh", w_hh, {-1, -1}, "(4 * H, H)");
    hidden = proj = w_hh.size(1);
    check_shape(op, "w_hh", w_hh, {4 * hidden, hidden}, "(4 * H, H)");
    check_shape(op, "h0", h0, {batch, hidden}, "(B, H)");
  }
  check_shape(op, "w_ih", w_ih, {4 * hidden, input.size(2)}, "(4 * H, I) with input (T, B, I)");
  check_shape(op, "bias", bias, {4 * hidden}, "(4 * H,)");
  check_shape(op, "c0", c0, {batch, hidden}, "(B, H)");
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"h0", &h0}, {"c0", &c0},
                         {"w_ih", &w_ih}, {"w_hh", &w_hh}, {"bias", &bias},
                         {"w_hr", w_hr ? &*w_hr : &bias}}) {
    check_same_dtype(op, "input", input, name, *t);
    check_same_device(op, "input", input, name, *t);
  }
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& bias, bool reverse,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& w_hr,
    bool need_backward) {
  check_layer("lstm_layer", input, h0, c0, w_ih, w_hh, bias, w_hr);
  const int64_t steps = input.size(0), batch = input.size(1), hidden = c0.size(1);
  const std::vector<int64_t> active = active_rows("lstm_layer", batch_sizes, steps, batch);
  // Packed: the padding positions of the output are zeros, as pad_packed_sequence's.
  const auto allocate = [&](int64_t width) {
    return batch_sizes ? at::zeros({steps, batch, width}, input.options())
                       : at::empty({steps, batch, width}, input.options());
  };
  at::Tensor output = allocate(h0.size(1));
  // With a projection the cell's own h (o * tanh(c)) is kept for the backward.
  at::Tensor unprojected = w_hr ? allocate(hidden) : at::empty({0}, input.options());
  // On CPU without projection or packing lstm_recurrence_cpu.cpp runs the layer. Without
  // a backward it keeps only what the next step reads: two alternating steps of cells,
  // which stay in cache, and no gates (otherwise five sixths of its memory).
  const bool cpu_layer = cpu_kernel_dtype(input) && !batch_sizes && !w_hr && steps > 0;
  const bool keep_steps = need_backward || !cpu_layer;
  at::Tensor cells = keep_steps ? allocate(hidden)
                                : at::empty({std::min<int64_t>(steps, 2), batch, hidden},
                                            input.options());
  at::Tensor activated =
      keep_steps ? allocate(4 * hidden) : at::empty({0, batch, 4 * hidden}, input.options());
  // What the backward needs, or nothing.
  const auto result = [&](const at::Tensor& h_n, const at::Tensor& c_n) {
    const auto none = [&] { return at::empty({0}, input.options()); };  // no aliases
    if (!need_backward) return std::make_tuple(output, h_n, c_n, none(), none(), none());
    return std::make_tuple(output, h_n, c_n, activated, cells, unprojected);
  };
  if (cpu_layer) {
    const bool ran = cpu_recurrence({input.contiguous(), h0.contiguous(), c0.contiguous(),
                                     w_ih.contiguous(), w_hh.contiguous(), bias.contiguous(),
                                     output, cells, activated, steps, batch, hidden, reverse});
    TORCH_INTERNAL_ASSERT(ran, "lstm_layer: the CPU recurrence refused a float32/64 layer");
    const int64_t last = reverse ? 0 : steps - 1;
    return result(output[last].clone(), cells[last % cells.size(0)].clone());
  }
  // The input projection of every timestep at once: (T * B, I) x (I, 4H).
  const at::Tensor x_gates =
      at::addmm(bias, input.reshape({steps * batch, input.size(2)}), w_ih.t())
          .view({steps, batch, 4 * hidden});
  at::Tensor gates = at::empty({batch, 4 * hidden}, input.options());
  const at::Tensor w_hh_t = w_hh.t();
  const at::Tensor w_hr_t = w_hr ? w_hr->t() : at::Tensor();
  // One step on the first `rows` rows, from state (h, c) (views of those rows).
  const auto step = [&](int64_t t, int64_t rows, const at::Tensor& h, const at::Tensor& c) {
    at::Tensor step_gates = rows_of(gates, rows);
    at::addmm_out(step_gates, rows_of(x_gates[t], rows), h, w_hh_t);
    at::Tensor h_out = rows_of(output[t], rows);
    if (!w_hr) return cell_into(step_gates, c, h_out, rows_of(cells[t], rows), rows_of(activated[t], rows));
    at::Tensor h_cell = rows_of(unprojected[t], rows);
    cell_into(step_gates, c, h_cell, rows_of(cells[t], rows), rows_of(activated[t], rows));
    at::mm_out(h_out, h_cell, w_hr_t);
  };
  if (!batch_sizes) {  // every row every step: the state is the previous step's output
    at::Tensor h = h0.contiguous(), c = c0.contiguous();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = step_index(s, steps, reverse);
      step(t, batch, h, c);
      h = output[t];
      c = cells[t];
    }
    return result(h.clone(), c.clone());
  }
  // Packed: rows drop out (or, in reverse, join from h0/c0) between steps, so the
  // state lives in its own buffers and each step updates their active prefix.
  at::Tensor h = h0.clone(at::MemoryFormat::Contiguous), c = c0.clone(at::MemoryFormat::Contiguous);
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = step_index(s, steps, reverse), rows = active[t];
    step(t, rows, rows_of(h, rows), rows_of(c, rows));
    rows_of(h, rows).copy_(rows_of(output[t], rows));
    rows_of(c, rows).copy_(rows_of(cells[t], rows));
  }
  return result(h, c);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward(const at::Tensor& grad_output, const at::Tensor& grad_hn,
                    const at::Tensor& grad_cn, const at::Tensor& input, const at::Tensor& h0,
                    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const at::Tensor& output, const at::Tensor& activated,
                    const at::Tensor& cells, bool reverse,
                    const std::optional<at::Tensor>& batch_sizes,
                    const std::optional<at::Tensor>& w_hr,
                    const std::optional<at::Tensor>& unprojected) {
  const int64_t steps = input.size(0), batch = input.size(1), hidden = c0.size(1);
  const int64_t proj = h0.size(1);
  TORCH_CHECK_VALUE(w_hr.has_value() == unprojected.has_value(), "fastdl.lstm_layer_backward: "
                    "w_hr and unprojected come together (the forward's), got only one of them");
  const std::vector<int64_t> active =
      active_rows("lstm_layer_backward", batch_sizes, steps, batch);
  // Packed: gradients of padding positions stay zero, so the GEMMs over all
  // timesteps below add nothing for them.
  at::Tensor grad_gates = batch_sizes ? at::zeros({steps, batch, 4 * hidden}, input.options())
                                      : at::empty({steps, batch, 4 * hidden}, input.options());
  at::Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous), grad_h = at::empty_like(dh);
  // dc and dc_prev alternate between two buffers (copied back when packed, where
  // rows outside the active prefix must keep their gradient).
  at::Tensor dc = grad_cn.clone(at::MemoryFormat::Contiguous), dc_prev = at::empty_like(dc);
  // Only a packed reverse pass joins rows (state_before then needs the scratch).
  at::Tensor c_joined = batch_sizes ? at::empty_like(dc) : at::Tensor();
  // With a projection: the gradient of each step's projected h (for w_hr's gradient,
  // zeros at packed padding) and of the cell's own h.
  at::Tensor grad_projected = w_hr ? at::zeros({steps, batch, proj}, input.options()) : at::Tensor();
  at::Tensor grad_cell_h = w_hr ? at::empty_like(dc) : at::Tensor();
  const at::Tensor c_first = c0.contiguous();
  // On CPU without projection or packing, lstm_bptt_cpu.cpp runs the steps, and the
  // input gradient with them; elsewhere the steps below, and one GEMM for it.
  at::Tensor grad_input;
  if (input.is_cpu() && !batch_sizes && !w_hr && steps > 0) {
    at::Tensor grad_h0 = at::add(grad_output[step_index(steps - 1, steps, reverse)], grad_hn);
    at::Tensor cpu_grad_input = at::empty({steps, batch, input.size(2)}, input.options());
    if (cpu_recurrence_backward({grad_output.contiguous(), c_first, w_ih.contiguous(),
                                 w_hh.contiguous(), activated.contiguous(), cells.contiguous(),
                                 grad_gates, cpu_grad_input, grad_h0, dc, steps, batch, hidden,
                                 reverse})) {
      dh = grad_h0;
      grad_input = cpu_grad_input;
    }
  }
  if (!grad_input.defined()) {
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = step_index(s, steps, reverse), rows = active[t];
      // c before step t: the previous step's cells, or c0 for rows that start at t
      // (the first step, or rows joining a reverse pass over a packed batch).
      at::Tensor c_prev = rows_of(c_first, rows);
      if (s > 0) {
        const int64_t before = step_index(s - 1, steps, reverse);
        c_prev = state_before(cells[before], active[before], c_first, rows, c_joined);
      }
      at::Tensor step_grad_h = rows_of(grad_h, rows), step_dh = rows_of(dh, rows);
      at::add_out(step_grad_h, rows_of(grad_output[t], rows), step_dh);
      if (w_hr) {  // h = w_hr * h_cell
        rows_of(grad_projected[t], rows).copy_(step_grad_h);
        step_grad_h = rows_of(grad_cell_h, rows);
        at::mm_out(step_grad_h, rows_of(grad_projected[t], rows), *w_hr);
      }
      cell_backward_into(step_grad_h, rows_of(dc, rows), rows_of(activated[t], rows), c_prev,
                         rows_of(cells[t], rows), rows_of(grad_gates[t], rows),
                         rows_of(dc_prev, rows));
      at::mm_out(step_dh, rows_of(grad_gates[t], rows), w_hh);
      if (batch_sizes)
        rows_of(dc, rows).copy_(rows_of(dc_prev, rows));
      else
        std::swap(dc, dc_prev);
    }
  }
  const at::Tensor flat_gates = grad_gates.view({steps * batch, 4 * hidden});
  if (!grad_input.defined())
    grad_input = at::mm(flat_gates, w_ih).view({steps, batch, input.size(2)});
  // (4H, columns): the sum over steps of gates[step]^T x inputs[step] (both (steps,
  // B, ...)).
  const auto weight_gradient = [&](const at::Tensor& gates, const at::Tensor& inputs,
                                   int64_t columns) {
    const int64_t rows = gates.size(0) * batch;
    const at::Tensor g = gates.reshape({rows, 4 * hidden}), x = inputs.reshape({rows, columns});
    at::Tensor ours = cpu_weight_gradient(g, x);
    return ours.defined() ? ours : at::mm(g.t(), x);
  };
  const at::Tensor grad_w_ih = weight_gradient(grad_gates, input, input.size(2));
  // Step t's h_prev is the output of the step before it (in the pass's order), or h0 for
  // the first step. Of a (steps, ...) tensor: the steps that have a step before them,
  // and the steps that are one (index-aligned: step i of the first reads step i of the
  // second).
  const auto later_steps = [&](const at::Tensor& t) {
    return reverse ? t.slice(0, 0, steps - 1) : t.slice(0, 1);
  };
  const auto earlier_steps = [&](const at::Tensor& t) {
    return reverse ? t.slice(0, 1) : t.slice(0, 0, steps - 1);
  };
  at::Tensor grad_w_hh;
  if (batch_sizes || steps == 0) {
    // h_prev of every step, (h0, out_0, ..., out_{T-2}) or the mirror; packed, rows that
    // join a reverse pass late start from h0 too. (No steps: no first step for h0.)
    at::Tensor h_prev = steps == 0 ? output
                        : reverse  ? at::cat({earlier_steps(output), h0.unsqueeze(0)})
                                   : at::cat({h0.unsqueeze(0), earlier_steps(output)});
    if (batch_sizes && reverse) start_rows_from(h_prev, h0, active);
    grad_w_hh = weight_gradient(grad_gates, h_prev, proj);
  } else {
    // The later steps against views of the output (none for one step), then the first
    // step against h0: no (T, B, P) copy of the output shifted by a step.
    grad_w_hh = weight_gradient(later_steps(grad_gates), earlier_steps(output), proj);
    grad_w_hh.addmm_(grad_gates[reverse ? steps - 1 : 0].t(), h0);
  }
  const at::Tensor grad_bias = flat_gates.sum(0);
  const at::Tensor grad_w_hr =
      w_hr ? at::mm(grad_projected.view({steps * batch, proj}).t(),
                    unprojected->reshape({steps * batch, hidden}))
           : at::empty({0}, input.options());
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr};
}

}  // namespace
}  // namespace fastdl::lstm

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // One direction of one layer: (output (T, B, H), h_n, c_n, activated gates, cells);
  // bias = b_ih + b_hh (zeros for bias=False). batch_sizes: a PackedSequence's, for
  // input padded to (T, B, I) in its sorted order. w_hr (P, H): nn.LSTM's proj_size,
  // h = w_hr * (o * tanh(c)); unprojected is o * tanh(c) (empty without w_hr).
  // need_backward=False: activated gates, cells and unprojected come back empty (an
  // inference pass keeps none of its steps but the output).
  m.def(
      "lstm_layer(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor bias, "
      "bool reverse, Tensor? batch_sizes=None, Tensor? w_hr=None, bool need_backward=True) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor activated_gates, Tensor cells, "
      "Tensor unprojected)");
  // (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr (empty
  // without w_hr)).
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor activated_gates, "
      "Tensor cells, bool reverse, Tensor? batch_sizes=None, Tensor? w_hr=None, "
      "Tensor? unprojected=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("lstm_layer", &fastdl::lstm::lstm_layer);
  m.impl("lstm_layer_backward", &fastdl::lstm::lstm_layer_backward);
}

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("lstm_layer", &fastdl::lstm::lstm_layer);
  m.impl("lstm_layer_backward", &fastdl::lstm::lstm_layer_backward);
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "lstm_layer_backward");
}
