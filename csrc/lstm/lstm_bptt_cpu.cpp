// Backward through time of the CPU recurrence (lstm_recurrence_cpu.cpp), and the
// weight gradients of every CPU LSTM layer, in the forward's register tiles (the
// rows x four-vector tiles of common/simd/tile_product.inc) over packed rows. Measured at
// batch 64, seq 100, 2 layers, fwd+bwd against oneDNN on an AMD EPYC Zen 4: hidden 256
// 0.99x -> 1.08-1.23x, hidden 512 0.81x -> 1.01-1.02x; the at::mm (MKL) GEMMs they
// replace ran at 63-72% of that CPU's peak.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "common/cpu_isa.h"
#include "common/packed_batch.h"
#include "lstm/lstm_cell.h"
#include "lstm/lstm_cell_cpu_kernels.h"
#include "lstm/lstm_recurrence_split.h"

namespace fastdl::lstm {
namespace {

// Backward through time. Per step, each thread runs the cell backward for its rows and
// units, then its columns of
//   [dh_prev | dx_t] = grad_gates_t (B, 4H) x [W_hh | W_ih]
// in the forward's register tiles, from panels packed once. Split by rows, a thread
// needs nobody's grad_gates but its own; split by units, each needs all of them (one
// barrier), and writes dh_prev for its own units, the only ones its next cell backward
// reads, so a step needs no second barrier. The tile starts from the grad_output of
// the next step, so dh_prev arrives as that step's whole grad_h; dx_t is grad_input
// itself (no GEMM over time for it).
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
  const auto time = [&](int64_t s) { return step_index(s, steps, a.reverse); };
  const int64_t block = kernels.product_block(T{});
  // Rows [r0, r0 + rows), units [first, first + units) of dh and the columns of dx the
  // panels hold; with a barrier, a wait between the cell backward and the products (the
  // threads share the rows and split the units). The products read the step's gates
  // packed as the tiles read rows (pack_rows), each thread packing the columns it wrote,
  // into `packs`: two of (rows, 4H), a step's own and the next one's, as a thread may
  // pack step s while another still reads step s + 1's.
  const auto run = [&](int64_t r0, int64_t rows, int64_t first, int64_t units,
                       int64_t x_first, int64_t x_columns, const T* h_panel,
                       const T* x_panel, T* packs, TeamBarrier* barrier) {
    AlignedVector<T> partial(rows * block);  // the products' sums between chunks
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = time(s), row = t * batch + r0;
      const T* c_prev = (s > 0 ? cells + time(s - 1) * batch * hidden : c0) + r0 * hidden;
      T* h = grad_h + r0 * hidden + first;
      T* step_gates = grad_gates + row * width;
      T* pack = packs + s % 2 * rows * width;
      if (units > 0) {
        kernels.backward_rows(h, grad_c + r0 * hidden + first, activated + row * width + first,
                              c_prev + first, cells + row * hidden + first, rows, units, hidden,
                              step_gates + first, grad_c + r0 * hidden + first);
        for (int64_t g = 0; g < 4; ++g)
          kernels.pack_rows(step_gates, width, rows, width, g * hidden + first,
                            g * hidden + first + units, 0, 1, pack);
      }
      if (barrier != nullptr) barrier->wait();
      if (units > 0)
        kernels.packed_times_panel(
            h_panel, width, rows, pack, units,
            s > 0 ? grad_output + (time(s - 1) * batch + r0) * hidden + first : nullptr, hidden,
            h, hidden, partial.data());
      if (x_columns > 0)
        kernels.packed_times_panel(x_panel, width, rows, pack, x_columns, nullptr, 0,
                                   grad_input + row * in_size + x_first, in_size,
                                   partial.data());
    }
  };
  const T* w_hh = a.w_hh.const_data_ptr<T>();
  const T* w_ih = a.w_ih.const_data_ptr<T>();
  if (rows_apart(batch, width * (hidden + in_size) * int64_t(sizeof(T)))) {
    const Panel<T> h_panel = pack_columns(kHiddenPanelSlot, w_hh, width, hidden, 0, hidden, block);
    const Panel<T> x_panel = pack_columns(kInputPanelSlot, w_ih, width, in_size, 0, in_size, block);
    split_rows(batch, [&](int64_t r0, int64_t rows) {
      AlignedVector<T> packs(2 * rows * width);
      run(r0, rows, 0, hidden, 0, in_size, h_panel->data(), x_panel->data(), packs.data(), nullptr);
    });
    return;
  }
  AlignedVector<T> packs(2 * batch * width);  // shared by the team
  split_units(hidden, block, [&](int64_t id, int64_t team, int64_t first, int64_t units,
                                 TeamBarrier& barrier) {
    const auto [x_first, x_columns] = block_share(in_size, block, id, team);
    const Panel<T> h_panel = pack_columns(kHiddenPanelSlot, w_hh, width, hidden, first, units, block);
    const Panel<T> x_panel =
        pack_columns(kInputPanelSlot, w_ih, width, in_size, x_first, x_columns, block);
    run(0, batch, first, units, x_first, x_columns, h_panel->data(), x_panel->data(), packs.data(),
        &barrier);
  });
}

// Output rows per call of gates_transposed_times: 512 rows x kChunkSteps (128) steps of
// transposed gates are 256 KB. Each call copies every input block into L1 once, so
// fewer, taller calls copy less: with 256 rows, hidden-1024 char-LM training took
// 2528-2788 ms, with 512 2402-2833 (medians 2764 and 2601; Intel Xeon, 2 threads).
constexpr int64_t kGradientRows = 512;

// grad_W = grad_gates^T x inputs, summed over every step's rows.
template <typename T, typename Kernels>
void run_weight_gradient(Kernels kernels, const at::Tensor& gates, const at::Tensor& inputs,
                         at::Tensor& out) {
  const int64_t k_size = gates.size(0), m = gates.size(1), columns = inputs.size(1);
  const T* g = gates.const_data_ptr<T>();
  const T* x = inputs.const_data_ptr<T>();
  T* result = out.data_ptr<T>();
  // Threads take rows of the output (gate units), so every sum runs in one thread in
  // one order, whatever the thread count; each takes them kGradientRows at a time, so
  // that the kernel's transposed chunk of gates is 256 KB whatever the thread count
  // (a thread's 2048 rows at hidden 1024 made it 1 MB; measured no faster at two
  // threads, where the kernel is bound elsewhere).
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t first = begin; first < end; first += kGradientRows)
      kernels.gates_transposed_times(g + first, m, std::min(kGradientRows, end - first), x,
                                     columns, columns, k_size, result + first * columns,
                                     columns);
  });
}

}  // namespace

bool cpu_recurrence_backward(const RecurrenceBackwardArgs& a) {
  return with_recurrence_kernels<ScalarKernels, Avx2Kernels, Avx512Kernels>(
      a.grad_output,
      [&](auto kernels, auto type) { run_recurrence_backward<decltype(type)>(kernels, a); });
}

at::Tensor cpu_weight_gradient(const at::Tensor& gates, const at::Tensor& inputs) {
  at::Tensor out;  // stays undefined where no kernel ran
  with_recurrence_kernels<ScalarKernels, Avx2Kernels, Avx512Kernels>(
      gates, [&](auto kernels, auto type) {
        const at::Tensor g = gates.contiguous(), x = inputs.contiguous();
        out = at::empty({g.size(1), x.size(1)}, g.options());
        if (g.size(0) == 0)
          out.zero_();  // no timesteps
        else
          run_weight_gradient<decltype(type)>(kernels, g, x, out);
      });
  return out;
}

}  // namespace fastdl::lstm
