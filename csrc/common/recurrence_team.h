// What the CPU recurrences (the LSTM's, csrc/lstm, and the GRU's, csrc/gru) share
// around the products of common/simd/tile_product.inc: the kernel set for a dtype, the
// team that splits a step's columns between threads (one barrier between the steps'
// parts), and the weight panels the threads pack once per call and keep between calls.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "common/cpu_isa.h"
#include "common/team_barrier.h"
#include "common/thread_scratch.h"

namespace fastdl {

// Runs fn(kernels, T{}) with the op's kernels (of its Scalar, Avx2 and Avx512 sets) for a
// CPU tensor of float32 (the best ISA's) or float64 (scalar) and returns true; returns
// false, running nothing, for anything else.
template <typename Scalar, typename Avx2, typename Avx512, typename Fn>
bool with_recurrence_kernels(const at::Tensor& t, Fn&& fn) {
  if (!t.is_cpu()) return false;
  if (t.scalar_type() == at::kFloat) {
    with_isa_kernels<float, Scalar, Avx2, Avx512>([&](auto kernels) { fn(kernels, float{}); });
    return true;
  }
  if (t.scalar_type() != at::kDouble) return false;
  fn(Scalar{}, double{});
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
// hidden) (a step's hidden units, or its output columns) into per-thread shares of
// whole `block`s, at least a block per thread; every thread runs body, which meets the
// others at barrier.wait() (between the parts of a step: a TeamBarrier: with libgomp's,
// a batch-1 LSTM layer took 2-6% longer).
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

// A packed weight panel, kept by the thread that packs it in ThreadScratch slot `slot`
// between calls: a char-LM training step at hidden 1024 packs 128 MB of panels (the
// forward's [W_ih | W_hh], the backward's W_hh and W_ih, per layer), and as fresh memory
// their huge pages' zeroing was 6.4% of its profile on an Intel Xeon. Zero-filled, then
// packed. The LSTM forward's panel takes kForwardPanelSlot; backward through time's two
// take kHiddenPanelSlot and kInputPanelSlot (slots 0-2 are the LSTM's
// gates_transposed_times'); the GRU's W_hh panels, forward and backward, kHiddenPanelSlot.
constexpr int kForwardPanelSlot = 3, kHiddenPanelSlot = 3, kInputPanelSlot = 4;

template <typename T>
using Panel = std::unique_ptr<const ThreadScratch<T>>;

template <typename T>
Panel<T> zeroed_panel(int slot, int64_t size) {
  auto panel =
      std::make_unique<const ThreadScratch<T>>(slot, size, ThreadScratch<T>::kPanelKeptBytes);
  T* data = panel->data();
  // In parallel where called outside the recurrence's team (a whole panel to share).
  at::parallel_for(0, size, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    std::fill(data + begin, data + end, T(0));
  });
  return panel;
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

}  // namespace fastdl
