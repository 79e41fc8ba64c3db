// The recurrence of a small-batch LSTM layer on CPU, for inference and training
// alike (it writes what the backward needs, like the general path).
//
// At batch <= kMaxBatch a step's h W_hh^T is a matrix-vector product: at::addmm then
// costs more in call overhead and in re-reading W_hh from memory than in
// arithmetic (measured: 28 us of a 32 us step at batch 1, hidden 256). Here the
// threads split the hidden units once for the whole sequence; each packs its share
// of W_hh (all four gates of its units) into a panel that stays in its core's cache,
// and per step runs the GEMV and the cell for its units only, so the only exchange
// between threads is h, at one barrier per step.
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/cpu_isa.h"
#include "lstm/lstm_cell.h"
#include "lstm/lstm_cell_cpu_kernels.h"

namespace fastdl::lstm {
namespace {

template <typename T, typename Kernels>
void run_recurrence(Kernels kernels, const RecurrenceArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, block = kernels.panel_block(T{});
  const T* x_gates = a.x_gates.const_data_ptr<T>();
  const T* w_hh = a.w_hh.const_data_ptr<T>();
  T* output = a.output.data_ptr<T>();
  T* cells = a.cells.data_ptr<T>();
  T* activated = a.activated.data_ptr<T>();
  const T* h0 = a.h0.const_data_ptr<T>();
  const T* c0 = a.c0.const_data_ptr<T>();
  // At least a panel block of units per thread.
  const int wanted = static_cast<int>(
      std::clamp<int64_t>((hidden + block - 1) / block, 1, at::get_num_threads()));
#pragma omp parallel num_threads(wanted)
  {
    // The team may be smaller than asked (e.g. inside another parallel region).
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t share = (hidden + block * team - 1) / (block * team) * block;
    const int64_t first = std::min(hidden, id * share);
    const int64_t units = std::min(hidden, first + share) - first;
    const int64_t blocks = (units + block - 1) / block;
    std::vector<T> panel(4 * blocks * hidden * block, T(0));
    for (int64_t g = 0; g < 4; ++g)
      for (int64_t u = 0; u < units; ++u) {
        const T* row = w_hh + (g * hidden + first + u) * hidden;
        T* slab = panel.data() + (g * blocks + u / block) * hidden * block + u % block;
        for (int64_t k = 0; k < hidden; ++k) slab[k * block] = row[k];
      }
    std::vector<T> gates(4 * std::max<int64_t>(units, 1));
    const T* h_prev = h0;
    const T* c_prev = c0;
    for (int64_t s = 0; s < a.steps; ++s) {
      const int64_t t = a.reverse ? a.steps - 1 - s : s;
      for (int64_t b = 0; b < batch && units > 0; ++b) {
        const int64_t row = t * batch + b;
        kernels.gates_gemv(panel.data(), hidden, units, h_prev + b * hidden,
                           x_gates + row * 4 * hidden + first, hidden, gates.data());
        kernels.forward_units(gates.data(), c_prev + b * hidden + first, units,
                              output + row * hidden + first, cells + row * hidden + first,
                              activated + row * 4 * hidden + first, hidden);
      }
#pragma omp barrier
      h_prev = output + t * batch * hidden;
      c_prev = cells + t * batch * hidden;
    }
  }
}

}  // namespace

bool cpu_small_batch_recurrence(const RecurrenceArgs& a) {
  if (!a.x_gates.is_cpu() || a.batch > kMaxRecurrenceBatch) return false;
  const auto type = a.x_gates.scalar_type();
  if (type == at::kFloat)
    with_isa_kernels<float, ScalarKernels, Avx2Kernels, Avx512Kernels>(
        [&](auto kernels) { run_recurrence<float>(kernels, a); });
  else if (type == at::kDouble)
    run_recurrence<double>(ScalarKernels{}, a);
  else
    return false;
  return true;
}

}  // namespace fastdl::lstm
