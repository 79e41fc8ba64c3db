// The recurrence of an LSTM layer on CPU, for inference and training alike (it writes
// what the backward needs, like the general path).
//
// A step of at::addmm with W_hh then the cell costs more than its arithmetic: at
// batch 1 call overhead and re-reading W_hh from memory (measured: 28 us of a 32 us
// step at hidden 256); at batch 64 a library GEMM that repacks W_hh every step and
// writes the gates out for the cell to read back. Here the threads split the hidden
// units once for the whole sequence; each packs its share of W_hh (all four gates of
// its units) into a panel that stays in its core's cache, and per step computes the
// gates and the cell for its units only, so the only exchange between threads is h,
// at one barrier per step.
//   batch <= kMaxRecurrenceBatch: the input projection of all steps as one GEMM, then
//     per step a GEMV per row (gates_gemv) and the cell.
//   larger batches: register tiles of rows x one vector of units x four gates over
//     [x_t | h_prev] against [W_ih | W_hh], with the cell as their epilogue
//     (step_blocks): each weight vector feeds several rows' FMAs, and neither the
//     input projection (T, B, 4H) nor a step's gates go to memory. Measured at batch 64,
//     hidden 256 and 512: the layer went from 48 to 33 ms and from 190 to 152 ms
//     against an MKL GEMM for the projection (72% and 63% of this CPU's peak) plus the
//     tiles on W_hh alone.
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <omp.h>

#include <algorithm>
#include <initializer_list>
#include <utility>
#include <vector>

#include "common/cpu_isa.h"
#include "lstm/lstm_cell.h"
#include "lstm/lstm_cell_cpu_kernels.h"

namespace fastdl::lstm {
namespace {

// Runs body(id, team, first, units) on a team that splits the units [0, hidden) into
// per-thread shares of whole `block`s, at least a block per thread; body may hold
// barriers (every thread runs it).
template <typename Body>
void split_units(int64_t hidden, int64_t block, Body&& body) {
  const int wanted = static_cast<int>(
      std::clamp<int64_t>((hidden + block - 1) / block, 1, at::get_num_threads()));
#pragma omp parallel num_threads(wanted)
  {
    // The team may be smaller than asked (e.g. inside another parallel region).
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t share = (hidden + block * team - 1) / (block * team) * block;
    const int64_t first = std::min(hidden, id * share);
    body(id, team, first, std::min(hidden, first + share) - first);
  }
}

// The forward: each thread calls pack(first, units, blocks) once (returning its panel)
// and then, per step, step(panel, first, units, t, h_prev, c_prev), with one barrier
// between steps.
template <typename T, typename Pack, typename Step>
void split_recurrence(const RecurrenceArgs& a, int64_t block, Pack&& pack, Step&& step) {
  const T* output = a.output.const_data_ptr<T>();
  const T* cells = a.cells.const_data_ptr<T>();
  const int64_t size = a.batch * a.hidden;
  split_units(a.hidden, block, [&](int64_t, int64_t, int64_t first, int64_t units) {
    const std::vector<T> panel = pack(first, units, (units + block - 1) / block);
    const T* h_prev = a.h0.const_data_ptr<T>();
    const T* c_prev = a.c0.const_data_ptr<T>();
    for (int64_t s = 0; s < a.steps; ++s) {
      const int64_t t = a.reverse ? a.steps - 1 - s : s;
      if (units > 0) step(panel.data(), first, units, t, h_prev, c_prev);
#pragma omp barrier
      h_prev = output + t * size;
      c_prev = cells + t * size;
    }
  });
}

// The thread's units of [w_ih | w_hh] (or w_hh alone): W[g][first + u][k], k counting
// w_ih's columns first, at panel[slab + k * stride] where (slab, stride) = place(g, u).
template <typename T, typename Place>
std::vector<T> pack_units(std::initializer_list<std::pair<const T*, int64_t>> weights,
                          int64_t hidden, int64_t first, int64_t units, int64_t size,
                          Place&& place) {
  std::vector<T> panel(size, T(0));
  for (int64_t g = 0; g < 4; ++g)
    for (int64_t u = 0; u < units; ++u) {
      const auto [slab, stride] = place(g, u);
      int64_t k = 0;
      for (const auto& [w, columns] : weights) {
        const T* row = w + (g * hidden + first + u) * columns;
        for (int64_t j = 0; j < columns; ++j, ++k) panel[slab + k * stride] = row[j];
      }
    }
  return panel;
}

template <typename T, typename Kernels>
void run_recurrence(Kernels kernels, const RecurrenceArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, in_size = a.input.size(2);
  const T* w_hh = a.w_hh.const_data_ptr<T>();
  T* output = a.output.data_ptr<T>();
  T* cells = a.cells.data_ptr<T>();
  T* activated = a.activated.data_ptr<T>();
  if (batch <= kMaxRecurrenceBatch) {
    // A few rows: the input projection of every step as one GEMM, (T * B, I) x (I, 4H),
    // keeps W_ih out of the per-step stream (its share of L2 goes to W_hh's panel).
    const at::Tensor x_gates =
        at::addmm(a.bias, a.input.reshape({a.steps * batch, in_size}), a.w_ih.t());
    const T* x = x_gates.const_data_ptr<T>();
    // Per gate and block of panel_block units, a (hidden, block) slab of W^T.
    const int64_t block = kernels.panel_block(T{});
    std::vector<T> gates(4 * std::max<int64_t>(hidden, 1));
    split_recurrence<T>(
        a, block,
        [&](int64_t first, int64_t units, int64_t blocks) {
          return pack_units<T>({{w_hh, hidden}}, hidden, first, units, 4 * blocks * hidden * block,
                               [&](int64_t g, int64_t u) {
                                 return std::pair<int64_t, int64_t>(
                                     (g * blocks + u / block) * hidden * block + u % block, block);
                               });
        },
        [&](const T* panel, int64_t first, int64_t units, int64_t t, const T* h_prev,
            const T* c_prev) {
          T* own = gates.data() + 4 * first;  // the thread's own part of the scratch
          for (int64_t b = 0; b < batch; ++b) {
            const int64_t row = t * batch + b;
            kernels.gates_gemv(panel, hidden, units, h_prev + b * hidden,
                               x + row * 4 * hidden + first, hidden, own);
            kernels.forward_units(own, c_prev + b * hidden + first, units,
                                  output + row * hidden + first, cells + row * hidden + first,
                                  activated + row * 4 * hidden + first, hidden);
          }
        });
    return;
  }
  // Per block of unit_block units, per k over [x | h], the four gates' weights side by
  // side.
  const T* x = a.input.const_data_ptr<T>();
  const T* bias = a.bias.const_data_ptr<T>();
  const int64_t block = kernels.unit_block(T{}), depth = in_size + hidden;
  split_recurrence<T>(
      a, block,
      [&](int64_t first, int64_t units, int64_t blocks) {
        return pack_units<T>({{a.w_ih.const_data_ptr<T>(), in_size}, {w_hh, hidden}}, hidden,
                             first, units, blocks * depth * 4 * block, [&](int64_t g, int64_t u) {
                               return std::pair<int64_t, int64_t>(
                                   (u / block) * depth * 4 * block + g * block + u % block,
                                   4 * block);
                             });
      },
      [&](const T* panel, int64_t first, int64_t units, int64_t t, const T* h_prev,
          const T* c_prev) {
        kernels.step_blocks(panel, units, first, batch, x + t * batch * in_size, in_size, bias,
                            h_prev, c_prev, hidden, output + t * batch * hidden,
                            cells + t * batch * hidden, activated + t * batch * 4 * hidden);
      });
}

// Columns [first, first + count) of w (k_size, columns), in blocks of `block` columns:
// panel[(b * k_size + k) * block + c] = w[k][first + b * block + c], zero past count.
template <typename T>
std::vector<T> pack_columns(const T* w, int64_t k_size, int64_t columns, int64_t first,
                            int64_t count, int64_t block) {
  std::vector<T> panel((count + block - 1) / block * k_size * block, T(0));
  for (int64_t k = 0; k < k_size; ++k)
    for (int64_t c = 0; c < count; ++c)
      panel[(c / block * k_size + k) * block + c % block] = w[k * columns + first + c];
  return panel;
}

// Backward through time. Per step, each thread runs the cell backward for its units
// (all rows), then, after the one barrier, its columns of
//   [dh_prev | dx_t] = grad_gates_t (B, 4H) x [W_hh | W_ih]
// in the forward's register tiles, from panels of its columns packed once. dh_prev is
// written for the thread's own units, the only ones its next cell backward reads, so
// a step needs no second barrier; the tile starts from grad_output of the next step, so
// dh_prev arrives as that step's whole grad_h. dx_t is grad_input, whole: the input
// gradient is no GEMM over time any more.
template <typename T, typename Kernels>
void run_recurrence_backward(Kernels kernels, const RecurrenceBackwardArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, steps = a.steps;
  const int64_t in_size = a.w_ih.size(1), width = 4 * hidden;
  const T* grad_output = a.grad_output.const_data_ptr<T>();
  const T* activated = a.activated.const_data_ptr<T>();
  const T* cells = a.cells.const_data_ptr<T>();
  const T* c0 = a.c0.const_data_ptr<T>();
  T* grad_gates = a.grad_gates.data_ptr<T>();
  T* grad_input = a.grad_input.data_ptr<T>();
  T* grad_h = a.grad_h.data_ptr<T>();
  T* grad_c = a.grad_c.data_ptr<T>();
  const auto time = [&](int64_t s) { return a.reverse ? steps - 1 - s : s; };
  const int64_t block = kernels.product_block(T{});
  split_units(hidden, block, [&](int64_t id, int64_t team, int64_t first, int64_t units) {
    const int64_t x_share = (in_size + block * team - 1) / (block * team) * block;
    const int64_t x_first = std::min(in_size, id * x_share);
    const int64_t x_columns = std::min(in_size, x_first + x_share) - x_first;
    const std::vector<T> h_panel =
        pack_columns(a.w_hh.const_data_ptr<T>(), width, hidden, first, units, block);
    const std::vector<T> x_panel =
        pack_columns(a.w_ih.const_data_ptr<T>(), width, in_size, x_first, x_columns, block);
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = time(s);
      const T* c_prev = s > 0 ? cells + time(s - 1) * batch * hidden : c0;
      if (units > 0)
        kernels.backward_rows(grad_h + first, grad_c + first,
                              activated + t * batch * width + first, c_prev + first,
                              cells + t * batch * hidden + first, batch, units, hidden,
                              grad_gates + t * batch * width + first, grad_c + first);
#pragma omp barrier
      const T* step_gates = grad_gates + t * batch * width;
      if (units > 0)
        kernels.rows_times_panel(
            h_panel.data(), width, batch, step_gates, width, units,
            s > 0 ? grad_output + time(s - 1) * batch * hidden + first : nullptr, hidden,
            grad_h + first, hidden);
      if (x_columns > 0)
        kernels.rows_times_panel(x_panel.data(), width, batch, step_gates, width, x_columns,
                                 nullptr, 0, grad_input + t * batch * in_size + x_first,
                                 in_size);
    }
  });
}

template <typename T, typename Kernels>
void run_weight_gradient(Kernels kernels, const at::Tensor& gates, const at::Tensor& inputs,
                         at::Tensor& out) {
  const int64_t k_size = gates.size(0), m = gates.size(1), columns = inputs.size(1);
  const int64_t block = kernels.product_block(T{});
  // The kernel reads whole blocks of columns from every row: pad a narrower tail.
  const at::Tensor padded =
      columns % block ? at::constant_pad_nd(inputs, {0, block - columns % block}) : inputs;
  const T* g = gates.const_data_ptr<T>();
  const T* x = padded.const_data_ptr<T>();
  T* result = out.data_ptr<T>();
  const int64_t x_stride = padded.size(1);
  // Threads take rows of the output (gate units), so every sum runs in one thread in
  // one order, whatever the thread count.
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    kernels.gates_transposed_times(g + begin, m, end - begin, x, x_stride, columns, k_size,
                                   result + begin * columns, columns);
  });
}

}  // namespace

bool cpu_recurrence(const RecurrenceArgs& a) {
  if (!a.input.is_cpu()) return false;
  const auto type = a.input.scalar_type();
  if (type == at::kFloat)
    with_isa_kernels<float, ScalarKernels, Avx2Kernels, Avx512Kernels>(
        [&](auto kernels) { run_recurrence<float>(kernels, a); });
  else if (type == at::kDouble)
    run_recurrence<double>(ScalarKernels{}, a);
  else
    return false;
  return true;
}

bool cpu_recurrence_backward(const RecurrenceBackwardArgs& a) {
  if (!a.grad_output.is_cpu()) return false;
  const auto type = a.grad_output.scalar_type();
  if (type == at::kFloat)
    with_isa_kernels<float, ScalarKernels, Avx2Kernels, Avx512Kernels>(
        [&](auto kernels) { run_recurrence_backward<float>(kernels, a); });
  else if (type == at::kDouble)
    run_recurrence_backward<double>(ScalarKernels{}, a);
  else
    return false;
  return true;
}

at::Tensor cpu_weight_gradient(const at::Tensor& gates, const at::Tensor& inputs) {
  const auto type = gates.scalar_type();
  if (!gates.is_cpu() || (type != at::kFloat && type != at::kDouble)) return at::Tensor();
  const at::Tensor g = gates.contiguous(), x = inputs.contiguous();
  at::Tensor out = at::empty({g.size(1), x.size(1)}, g.options());
  if (g.size(0) == 0) return out.zero_();
  if (type == at::kFloat)
    with_isa_kernels<float, ScalarKernels, Avx2Kernels, Avx512Kernels>(
        [&](auto kernels) { run_weight_gradient<float>(kernels, g, x, out); });
  else
    run_weight_gradient<double>(ScalarKernels{}, g, x, out);
  return out;
}

}  // namespace fastdl::lstm
