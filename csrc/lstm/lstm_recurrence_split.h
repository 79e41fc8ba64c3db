// What the CPU LSTM recurrence's forward (lstm_recurrence_cpu.cpp) and backward
// (lstm_bptt_cpu.cpp) share: the kernels for a dtype, how the threads split a
// sequence's work, and the weight panels they pack once per call.
//
// Two splits, both fixed for the whole sequence, so each thread keeps its panel:
//   rows (rows_apart: every thread gets at least kMinRowsPerThread batch rows and the
//     whole panel fits in half a core's L2): rows are independent through the whole
//     sequence, so the threads never wait for one another; each streams the whole
//     (shared, read-only) panel every step.
//   units (otherwise): each thread takes a share of the hidden units, all rows, and a
//     panel of its units only; its next step needs the others' h, so one barrier per
//     step. Past L2 a shared panel comes from L3 every step for every thread, while a
//     share is half the size (and, at hidden 256, fits L2). Measured at batch 64, two
//     threads, forward: on an Intel Xeon (2 MB L2) hidden 256 1.00x of oneDNN with
//     units against 0.92x with rows, hidden 512 1.07x against 0.87x; on an AMD EPYC Zen 4
//     (1 MB L2, a faster L3) rows were ahead at hidden 512, 0.90-0.94x against 0.85-0.92x,
//     within that machine's run-to-run spread.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "common/aligned_vector.h"
#include "common/cpu_isa.h"
#include "common/team_barrier.h"
#include "common/thread_scratch.h"
#include "lstm/lstm_cell_cpu_kernels.h"

namespace fastdl::lstm {

// Runs fn(kernels, T{}) with the kernels for a CPU tensor of float32 (the best ISA's) or
// float64 (scalar) and returns true; returns false, running nothing, for anything else.
template <typename Fn>
bool with_recurrence_kernels(const at::Tensor& t, Fn&& fn) {
  if (!t.is_cpu()) return false;
  if (t.scalar_type() == at::kFloat) {
    with_isa_kernels<float, ScalarKernels, Avx2Kernels, Avx512Kernels>(
        [&](auto kernels) { fn(kernels, float{}); });
    return true;
  }
  if (t.scalar_type() != at::kDouble) return false;
  fn(ScalarKernels{}, double{});
  return true;
}

// Thread id's share of [0, n) in whole `block`s, the team's shares as equal as blocks
// allow: {first, count} (count 0 for threads past the end).
inline std::pair<int64_t, int64_t> block_share(int64_t n, int64_t block, int64_t id,
                                               int64_t team) {
  const int64_t share = (n + block * team - 1) / (block * team) * block;
  const int64_t first = std::min(n, id * share);
  return {first, std::min(n, first + share) - first};
}

// Runs body(id, team, first, units, barrier) on a team that splits the units [0,
// hidden) into per-thread shares of whole `block`s, at least a block per thread; every
// thread runs body, which meets the others at barrier.wait() (once per step: a
// TeamBarrier: with libgomp's, a batch-1 layer took 2-6% longer).
template <typename Body>
void split_units(int64_t hidden, int64_t block, Body&& body) {
  const int wanted = static_cast<int>(
      std::clamp<int64_t>((hidden + block - 1) / block, 1, at::get_num_threads()));
  std::optional<TeamBarrier> barrier;
#pragma omp parallel num_threads(wanted)
  {
    // The team may be smaller than asked (e.g. inside another parallel region).
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
#pragma omp single
    barrier.emplace(team);  // the single's own barrier: every thread then sees it
    const auto [first, units] = block_share(hidden, block, id, team);
    body(id, team, first, units, *barrier);
  }
}

// Rows per thread from which the threads split the batch rather than the units: two
// register tiles of rows.
constexpr int64_t kMinRowsPerThread = 12;

// Whether every thread can take kMinRowsPerThread rows of its own and the whole panel
// (`panel_bytes`) fits in half a core's L2, leaving the other half to the rows.
inline bool rows_apart(int64_t batch, int64_t panel_bytes) {
  return batch >= kMinRowsPerThread * at::get_num_threads() &&
         panel_bytes <= cpu_l2_cache_bytes() / 2;
}

// Runs body(first_row, rows) on a team that splits the batch rows.
template <typename Body>
void split_rows(int64_t batch, Body&& body) {
  const int wanted = static_cast<int>(
      std::clamp<int64_t>(batch / kMinRowsPerThread, 1, at::get_num_threads()));
#pragma omp parallel num_threads(wanted)
  {
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t first = batch * id / team;
    body(first, batch * (id + 1) / team - first);
  }
}

// A packed weight panel, kept by the thread that packs it in ThreadScratch slot `slot`
// between calls: a char-LM training step at hidden 1024 packs 128 MB of panels (the
// forward's [W_ih | W_hh], the backward's W_hh and W_ih, per layer), and as fresh memory
// their huge pages' zeroing was 6.4% of its profile on an Intel Xeon. Zero-filled, then
// packed. The forward's panel takes kForwardPanelSlot; backward through time's two
// take kHiddenPanelSlot and kInputPanelSlot (slots 0-2 are gates_transposed_times').
constexpr int kForwardPanelSlot = 3, kHiddenPanelSlot = 3, kInputPanelSlot = 4;

template <typename T>
using Panel = std::unique_ptr<const ThreadScratch<T>>;

template <typename T>
Panel<T> zeroed_panel(int slot, int64_t size) {
  auto panel = std::make_unique<const ThreadScratch<T>>(slot, size, ThreadScratch<T>::kPanelKeptBytes);
  T* data = panel->data();
  // In parallel where called outside the recurrence's team (a whole panel to share).
  at::parallel_for(0, size, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    std::fill(data + begin, data + end, T(0));
  });
  return panel;
}

// The thread's units of [w_ih | w_hh] (or w_hh alone): W[g][first + u][k], k counting
// w_ih's columns first, at panel[slab + k * stride] where (slab, stride) = place(g, u).
// Copied kPackUnits units at a time, k outer: consecutive units sit side by side in a
// panel, so each k writes one run (a cache line) rather than a scattered element per
// unit as a unit-by-unit copy did. Measured on an Intel Xeon, two threads: batch 1,
// hidden 256, the pack's share of a layer's profile from ~3% to under 1%; char-LM
// batch 64, hidden 1024, 2 layers, forward 586-590 -> 566-577 ms.
template <typename T, typename Place>
Panel<T> pack_units(std::initializer_list<std::pair<const T*, int64_t>> weights, int64_t hidden,
                    int64_t first, int64_t units, int64_t size, Place&& place) {
  constexpr int64_t kPackUnits = 16;
  Panel<T> kept = zeroed_panel<T>(kForwardPanelSlot, size);
  T* panel = kept->data();
  // In parallel where called outside the recurrence's team (a whole panel to share).
  at::parallel_for(0, (units + kPackUnits - 1) / kPackUnits, 1, [&](int64_t begin, int64_t end) {
    int64_t slab[kPackUnits], stride[kPackUnits];
    const T* rows[kPackUnits];
    for (int64_t g = 0; g < 4; ++g)
      for (int64_t group = begin; group < end; ++group) {
        const int64_t u0 = group * kPackUnits, count = std::min(kPackUnits, units - u0);
        for (int64_t i = 0; i < count; ++i) std::tie(slab[i], stride[i]) = place(g, u0 + i);
        int64_t k = 0;
        for (const auto& [w, columns] : weights) {
          for (int64_t i = 0; i < count; ++i)
            rows[i] = w + (g * hidden + first + u0 + i) * columns;
          for (int64_t j = 0; j < columns; ++j, ++k)
            for (int64_t i = 0; i < count; ++i) panel[slab[i] + k * stride[i]] = rows[i][j];
        }
      }
  });
  return kept;
}

// Columns [first, first + count) of w (k_size, columns), in blocks of `block` columns:
// panel[(b * k_size + k) * block + c] = w[k][first + b * block + c], zero past count;
// kept in ThreadScratch slot `slot`.
template <typename T>
Panel<T> pack_columns(int slot, const T* w, int64_t k_size, int64_t columns, int64_t first,
                      int64_t count, int64_t block) {
  Panel<T> kept = zeroed_panel<T>(slot, (count + block - 1) / block * k_size * block);
  T* panel = kept->data();
  // In parallel where called outside the recurrence's team (a whole panel to share).
  at::parallel_for(0, k_size, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      for (int64_t c = 0; c < count; ++c)
        panel[(c / block * k_size + k) * block + c % block] = w[k * columns + first + c];
  });
  return kept;
}

}  // namespace fastdl::lstm
