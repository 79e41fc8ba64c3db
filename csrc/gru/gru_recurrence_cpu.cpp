// The recurrence of a GRU layer on CPU (float32/64, every row every step): per step
// h_gates = h_prev W_hh^T + b_hh, then the fused cell.
//
// at::addmm ran that product at about half of this CPU's peak: a library GEMM packs
// W_hh (12 MB at hidden 1024) again on every call. Here the product runs in the register
// tiles the LSTM's recurrence runs in too (common/simd/tile_product.inc:
// packed_times_panel) over a panel of W_hh^T packed once per call, each thread taking
// whole blocks of h_gates' columns; then each thread runs the cell on its share of the
// rows. Every h_gates value is summed by one thread in one
// order, whatever the thread count (the input projection before, at::addmm, is MKL's).
// Measured on an Intel Xeon, two threads, against nn.GRU (oneDNN) in the bench: the
// char-LM forward (batch 64, 100 steps, 2 layers) at hidden 512 0.99x -> 1.27x and at
// hidden 1024 0.93x -> 1.07x; batch-1 inference (1000 steps, hidden 256) 1.64x ->
// 2.74x; training 1.09-1.41x -> 1.14-1.44x.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/aligned_vector.h"
#include "common/packed_batch.h"
#include "common/recurrence_team.h"
#include "common/team_barrier.h"
#include "gru/gru_cell.h"
#include "gru/gru_cell_cpu_kernels.h"

namespace fastdl::gru {
namespace {

template <typename T, typename Kernels>
void run_recurrence(Kernels kernels, const RecurrenceArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, width = 3 * hidden;
  const int64_t block = kernels.product_block(T{});
  const at::Tensor w_t = a.w_hh.t().contiguous();  // (H, 3H): the panel's columns in rows
  const T* x_gates = a.x_gates.const_data_ptr<T>();
  const T* b_hh = a.b_hh.const_data_ptr<T>();
  T* output = a.output.data_ptr<T>();
  T* saved = a.saved.data_ptr<T>();
  const auto time = [&](int64_t s) { return step_index(s, a.steps, a.reverse); };
  // Shared by the team: h_prev packed as the tiles read rows, and the step's h_gates.
  AlignedVector<T> pack(batch * hidden), h_gates(batch * width);
  split_units(width, block, [&](int64_t id, int64_t team, int64_t first, int64_t columns,
                                TeamBarrier& barrier) {
    const Panel<T> panel = pack_columns(kHiddenPanelSlot, w_t.const_data_ptr<T>(), hidden, width,
                                        first, columns, block);
    AlignedVector<T> partial(batch * block);  // the product's sums between k chunks
    const int64_t r0 = batch * id / team, rows = batch * (id + 1) / team - r0;
    for (int64_t s = 0; s < a.steps; ++s) {
      const int64_t t = time(s);
      const T* h_prev = s == 0 ? a.h0.const_data_ptr<T>() : output + time(s - 1) * batch * hidden;
      kernels.pack_rows(h_prev, hidden, batch, hidden, 0, hidden, id, team, pack.data());
      barrier.wait();  // the whole pack
      if (columns > 0)
        kernels.packed_times_panel(panel->data(), hidden, batch, pack.data(), columns,
                                   b_hh + first, 0, h_gates.data() + first, width,
                                   partial.data());
      barrier.wait();  // every column of h_gates
      if (rows > 0)
        kernels.forward_rows(x_gates + (t * batch + r0) * width, h_gates.data() + r0 * width,
                             h_prev + r0 * hidden, rows, hidden,
                             output + (t * batch + r0) * hidden,
                             saved + (t * batch + r0) * 4 * hidden);
      barrier.wait();  // step t's h, which the next step packs
    }
  });
}

// Backward through time: per step, each thread runs the cell backward on its rows
// (grad_h = grad_output + dh in, the direct part of dh out), then, once every row's
// grad_h_gates is packed, adds grad_h_gates W_hh to its own columns of dh in the same
// tiles, over a panel of W_hh packed once per call. Measured at hidden 1024: a layer's
// backward 576-596 -> 544-588 ms, within the noise (this product is ~20% of it; the
// weight and input gradients' GEMMs over all steps are most of the rest).
template <typename T, typename Kernels>
void run_recurrence_backward(Kernels kernels, const RecurrenceBackwardArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, width = 3 * hidden;
  const int64_t block = kernels.product_block(T{});
  const T* grad_output = a.grad_output.const_data_ptr<T>();
  const T* output = a.output.const_data_ptr<T>();
  const T* saved = a.saved.const_data_ptr<T>();
  T* grad_x_gates = a.grad_x_gates.data_ptr<T>();
  T* grad_h_gates = a.grad_h_gates.data_ptr<T>();
  T* dh = a.dh.data_ptr<T>();
  const auto time = [&](int64_t s) { return step_index(s, a.steps, a.reverse); };
  AlignedVector<T> pack(batch * width);  // shared: the step's grad_h_gates packed
  split_units(hidden, block, [&](int64_t id, int64_t team, int64_t first, int64_t units,
                                 TeamBarrier& barrier) {
    const Panel<T> panel = pack_columns(kHiddenPanelSlot, a.w_hh.const_data_ptr<T>(), width,
                                        hidden, first, units, block);
    AlignedVector<T> partial(batch * block);
    const int64_t r0 = batch * id / team, rows = batch * (id + 1) / team - r0;
    AlignedVector<T> grad_h(rows * hidden);
    for (int64_t s = a.steps - 1; s >= 0; --s) {
      const int64_t t = time(s);
      const T* h_prev = s == 0 ? a.h0.const_data_ptr<T>() : output + time(s - 1) * batch * hidden;
      const int64_t row = t * batch + r0;
      for (int64_t i = 0; i < rows * hidden; ++i)
        grad_h[i] = grad_output[row * hidden + i] + dh[r0 * hidden + i];
      if (rows > 0)
        kernels.backward_rows(grad_h.data(), saved + row * 4 * hidden, h_prev + r0 * hidden,
                              rows, hidden, grad_x_gates + row * width,
                              grad_h_gates + row * width, dh + r0 * hidden);
      barrier.wait();  // every row's grad_h_gates, and dh's direct part
      kernels.pack_rows(grad_h_gates + t * batch * width, width, batch, width, 0, width, id, team,
                        pack.data());
      barrier.wait();  // the whole pack
      if (units > 0)
        kernels.packed_times_panel(panel->data(), width, batch, pack.data(), units, dh + first,
                                   hidden, dh + first, hidden, partial.data());
      barrier.wait();  // dh whole, for the next step's cells
    }
  });
}

}  // namespace

bool cpu_recurrence_backward(const RecurrenceBackwardArgs& a) {
  return with_recurrence_kernels<ScalarKernels, Avx2Kernels, Avx512Kernels>(
      a.grad_output,
      [&](auto kernels, auto type) { run_recurrence_backward<decltype(type)>(kernels, a); });
}

bool cpu_recurrence(const RecurrenceArgs& a) {
  return with_recurrence_kernels<ScalarKernels, Avx2Kernels, Avx512Kernels>(
      a.x_gates, [&](auto kernels, auto type) { run_recurrence<decltype(type)>(kernels, a); });
}

}  // namespace fastdl::gru
