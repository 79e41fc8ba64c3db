// What the CPU LSTM recurrence's forward (lstm_recurrence_cpu.cpp) and backward
// (lstm_bptt_cpu.cpp) share beyond common/recurrence_team.h (the kernels for a dtype,
// the units split, the column panels): the rows split and the forward's panel of
// [W_ih | W_hh].
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
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <utility>

#include "common/cpu_isa.h"
#include "common/recurrence_team.h"

namespace fastdl::lstm {

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

}  // namespace fastdl::lstm
