// The recurrence of an LSTM layer on CPU, for inference and training alike (it writes
// what the backward needs, like the general path).
//
// A step of at::addmm with W_hh then the cell costs more than its arithmetic: at
// batch 1 call overhead and re-reading W_hh from memory (measured: 28 us of a 32 us
// step at hidden 256); at batch 64 a library GEMM that repacks W_hh every step and
// writes the gates out for the cell to read back. Here the threads split the work once
// for the whole sequence (lstm_recurrence_split.h: the batch rows where each thread
// gets enough, else the hidden units, with one barrier per step to exchange h) and
// pack their weights once into a panel that stays in cache.
//   batch <= kMaxRecurrenceBatch: the input projection of all steps as one GEMM, then
//     per step a GEMV per row (gates_gemv) and the cell.
//   larger batches: register tiles of rows x one vector of units x four gates over
//     [x_t | h_prev] against [W_ih | W_hh], with the cell as their epilogue
//     (step_blocks): each weight vector feeds several rows' FMAs, and neither the
//     input projection (T, B, 4H) nor a step's gates go to memory. The tiles read x_t and
//     h_prev packed (pack_rows; the cell writes h packed for the next step) and take k
//     in chunks small enough for L1 (kChunkSteps). Measured at batch 64, hidden 256 and
//     512 on an AMD EPYC Zen 4: the layer from 48 to 33 ms and from 190 to 152 ms against
//     an MKL GEMM for the projection plus tiles on W_hh alone; on an Intel Xeon, one
//     thread at hidden 1024: 155 -> 185 GFLOP/s with the packing and chunks.
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "common/cpu_isa.h"
#include "common/packed_batch.h"
#include "common/prefetch.h"
#include "common/thread_scratch.h"
#include "lstm/lstm_cell.h"
#include "lstm/lstm_cell_cpu_kernels.h"
#include "lstm/lstm_recurrence_split.h"

namespace fastdl::lstm {
namespace {

// Values of T per cache line.
template <typename T>
constexpr int64_t kLineValues = 64 / sizeof(T);

// Where step t's cells and activated gates go (row 0): every step's for the backward,
// or (need_backward=False) two slots of cells reused in turn, as a step reads the one
// before, and no gates (null).
template <typename T>
struct StepOutputs {
  T* cells;
  T* activated;
  int64_t cell_slots, gate_slots, size;  // size: batch * hidden
  explicit StepOutputs(const RecurrenceArgs& a)
      : cells(a.cells.data_ptr<T>()), activated(a.activated.data_ptr<T>()),
        cell_slots(a.cells.size(0)), gate_slots(a.activated.size(0)), size(a.batch * a.hidden) {}
  T* cells_at(int64_t t) const { return cells + t % cell_slots * size; }
  // Step t's gates from `offset` on, or null where no gates are kept.
  T* gates_at(int64_t t, int64_t offset) const {
    return gate_slots == 0 ? nullptr : activated + t % gate_slots * 4 * size + offset;
  }
};

// Runs the steps in time order for the rows from r0: step(t, h_prev, c_prev), both
// pointers at row r0 (h0 and c0, then the step before's), then sync().
template <typename T, typename Step, typename Sync>
void run_steps(const RecurrenceArgs& a, const StepOutputs<T>& saved, int64_t r0, Step&& step,
               Sync&& sync) {
  const T* output = a.output.const_data_ptr<T>();
  const T* h_prev = a.h0.const_data_ptr<T>() + r0 * a.hidden;
  const T* c_prev = a.c0.const_data_ptr<T>() + r0 * a.hidden;
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = step_index(s, a.steps, a.reverse);
    step(t, h_prev, c_prev);
    sync();
    h_prev = output + (t * a.batch + r0) * a.hidden;
    c_prev = saved.cells_at(t) + r0 * a.hidden;
  }
}

// The unit split: each thread calls pack(first, units, blocks) once (returning its
// panel) and then, per step, step(panel, first, units, t, h_prev, c_prev) for every
// row, with one barrier between steps.
template <typename T, typename Pack, typename Step>
void split_recurrence(const RecurrenceArgs& a, const StepOutputs<T>& saved, int64_t block,
                      Pack&& pack, Step&& step) {
  split_units(a.hidden, block, [&](int64_t, int64_t, int64_t first, int64_t units,
                                   TeamBarrier& barrier) {
    const Panel<T> panel = pack(first, units, (units + block - 1) / block);
    run_steps<T>(
        a, saved, 0,
        [&](int64_t t, const T* h_prev, const T* c_prev) {
          if (units > 0) step(panel->data(), first, units, t, h_prev, c_prev);
        },
        [&] { barrier.wait(); });
  });
}

// The packed rows (pack_rows) a step's tiles read: three steps of x_t (a step's tiles
// read one while the team packs the one after next, and a thread still finishing the
// one before may read it), two of h_prev (a step writes the next one's while others may
// still read its own).
template <typename T>
struct RowPacks {
  AlignedVector<T> x, h;
  int64_t x_size, h_size;
  RowPacks(int64_t rows, int64_t in_size, int64_t hidden)
      : x(3 * rows * in_size), h(2 * rows * hidden), x_size(rows * in_size),
        h_size(rows * hidden) {}
  T* x_at(int64_t s) { return x.data() + s % 3 * x_size; }
  T* h_at(int64_t s) { return h.data() + s % 2 * h_size; }
};

// The tiled recurrence of rows [r0, r0 + rows) and units [first, first + units) (a
// thread's share, `panel` its block panel), on a team of `team` threads (this one `id`)
// sharing `packs` and meeting at `barrier` (null: a team of one).
// A step runs in two parts: its x columns' products, which need no other thread's h,
// then its h columns' and the cell, which need every thread's h_prev. So the barrier
// is split: a thread arrives once its h is written (and its share of a later step's
// input packed), runs the next step's x part, and only then waits for the others, so
// that a thread late by up to an x part's time keeps no one waiting. Measured on an
// Intel Xeon, two threads, batch 64, hidden 256: the barrier's waits and yields had been
// ~4.5% of each thread's samples, 0.15% after; the 2-layer forward 42.1-43.4 -> 41.1-42.1
// ms (alternating processes).
template <typename T, typename Kernels>
void tiled_steps(Kernels kernels, const RecurrenceArgs& a, const StepOutputs<T>& saved,
                 const T* panel, int64_t r0, int64_t rows, int64_t first, int64_t units,
                 int64_t id, int64_t team, RowPacks<T>& packs, TeamBarrier* barrier) {
  const int64_t in_size = a.input.size(2), hidden = a.hidden, batch = a.batch;
  const int64_t depth = in_size + hidden, block = kernels.unit_block(T{});
  const T* input = a.input.const_data_ptr<T>();
  const T* bias = a.bias.const_data_ptr<T>();
  T* output = a.output.data_ptr<T>();
  const auto pack_input = [&](int64_t s) {
    const int64_t t = step_index(s, a.steps, a.reverse);
    kernels.pack_rows(input + (t * batch + r0) * in_size, in_size, rows, in_size, 0, in_size, id,
                      team, packs.x_at(s));
  };
  const auto arrive = [&] { return barrier ? barrier->arrive() : 0; };
  const auto wait_for = [&](int64_t token) {
    if (barrier) barrier->wait_for(token);
  };
  pack_input(0);
  if (a.steps > 1) pack_input(1);
  kernels.pack_rows(a.h0.const_data_ptr<T>() + r0 * hidden, hidden, rows, hidden, 0, hidden, id,
                    team, packs.h_at(0));
  wait_for(arrive());
  // Every block's sums between a step's two parts.
  AlignedVector<T> partial(rows * 4 * ((units + block - 1) / block * block));
  // Step s's columns [k_begin, k_end) of [x | h].
  const auto part = [&](int64_t s, int64_t k_begin, int64_t k_end) {
    if (units == 0) return;
    const int64_t t = step_index(s, a.steps, a.reverse);
    const T* c_prev = s == 0 ? a.c0.const_data_ptr<T>() + r0 * hidden
                             : saved.cells_at(step_index(s - 1, a.steps, a.reverse)) + r0 * hidden;
    kernels.step_blocks(panel, units, first, rows, packs.x_at(s), in_size, packs.h_at(s), bias,
                        c_prev, hidden, output + (t * batch + r0) * hidden,
                        saved.cells_at(t) + r0 * hidden, saved.gates_at(t, r0 * 4 * hidden),
                        s + 1 < a.steps ? packs.h_at(s + 1) : nullptr, k_begin, k_end,
                        partial.data());
  };
  part(0, 0, in_size);
  int64_t token = 0;
  for (int64_t s = 0; s < a.steps; ++s) {
    if (s > 0) wait_for(token);  // every thread's h of step s - 1
    part(s, in_size, depth);
    if (s + 2 < a.steps) pack_input(s + 2);
    token = arrive();
    if (s + 1 < a.steps) part(s + 1, 0, in_size);
  }
  wait_for(token);  // the last step's h written everywhere before the team disbands
}

template <typename T, typename Kernels>
void run_recurrence(Kernels kernels, const RecurrenceArgs& a) {
  const int64_t hidden = a.hidden, batch = a.batch, in_size = a.input.size(2);
  const T* w_hh = a.w_hh.const_data_ptr<T>();
  T* output = a.output.data_ptr<T>();
  const StepOutputs<T> saved(a);
  if (batch <= kMaxRecurrenceBatch) {
    // A few rows: the input projection of every step as one GEMM, (T * B, I) x (I, 4H),
    // keeps W_ih out of the per-step stream (its share of L2 goes to W_hh's panel).
    // The bias goes in with the GEMV's sum: addmm's broadcast of it into the (T * B, 4H)
    // output before the GEMM was a pass over 4 MB at batch 1, hidden 256 (1-2% of the
    // layer's profile on an Intel Xeon).
    // Into a buffer the calling thread keeps between calls: a fresh (T * B, 4H) output
    // was 4 MB of page faults every call at batch 1, hidden 256 (measured on an Intel
    // Xeon, in-process A/B: the layer 1.5% faster kept).
    const ThreadScratch<T> x_kept(0, a.steps * batch * 4 * hidden,
                                  ThreadScratch<T>::kCallKeptBytes);
    at::Tensor x_gates =
        at::from_blob(x_kept.data(), {a.steps * batch, 4 * hidden}, a.input.options());
    at::mm_out(x_gates, a.input.reshape({a.steps * batch, in_size}), a.w_ih.t());
    const T* x = x_gates.const_data_ptr<T>();
    const T* bias = a.bias.const_data_ptr<T>();
    // Per gate and block of panel_block units, a (hidden, block) slab of W^T.
    const int64_t block = kernels.panel_block(T{});
    std::vector<T> gates(4 * std::max<int64_t>(hidden, 1));
    split_recurrence<T>(
        a, saved, block,
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
          // h_prev's lines, most of them written by the other threads, all requested now
          // rather than one at a time as the GEMV's broadcasts reach them; and the next
          // step's projected input (in memory) into L2. Measured at batch 1, hidden 256,
          // in-process A/B on an Intel Xeon: the layer 1.8-2.0% faster.
          for (int64_t i = 0; i < batch * hidden; i += kLineValues<T>) prefetch_l1(h_prev + i);
          const int64_t next = a.reverse ? t - 1 : t + 1;
          if (next >= 0 && next < a.steps)
            for (int64_t g = 0; g < 4; ++g)
              for (int64_t b = 0; b < batch; ++b)
                for (int64_t u = 0; u < units; u += kLineValues<T>)
                  prefetch_l2(x + (next * batch + b) * 4 * hidden + g * hidden + first + u);
          for (int64_t b = 0; b < batch; ++b) {
            const int64_t row = t * batch + b;
            kernels.gates_gemv(panel, hidden, units, h_prev + b * hidden,
                               x + row * 4 * hidden + first, bias + first, hidden, own);
            kernels.forward_units(own, c_prev + b * hidden + first, units,
                                  output + row * hidden + first,
                                  saved.cells_at(t) + b * hidden + first,
                                  saved.gates_at(t, b * 4 * hidden + first), hidden);
          }
        });
    return;
  }
  // Per block of unit_block units, per k over [x | h], the four gates' weights side by
  // side.
  const int64_t block = kernels.unit_block(T{}), depth = in_size + hidden;
  const auto pack = [&](int64_t first, int64_t units, int64_t blocks) {
    return pack_units<T>({{a.w_ih.const_data_ptr<T>(), in_size}, {w_hh, hidden}}, hidden, first,
                         units, blocks * depth * 4 * block, [&](int64_t g, int64_t u) {
                           return std::pair<int64_t, int64_t>(
                               (u / block) * depth * 4 * block + g * block + u % block,
                               4 * block);
                         });
  };
  if (rows_apart(batch, 4 * hidden * depth * int64_t(sizeof(T)))) {
    const Panel<T> panel = pack(0, hidden, (hidden + block - 1) / block);
    split_rows(batch, [&](int64_t r0, int64_t rows) {
      RowPacks<T> packs(rows, in_size, hidden);
      // rows never wait for one another
      tiled_steps<T>(kernels, a, saved, panel->data(), r0, rows, 0, hidden, 0, 1, packs, nullptr);
    });
    return;
  }
  RowPacks<T> packs(batch, in_size, hidden);  // shared by the team
  split_units(hidden, block, [&](int64_t id, int64_t team, int64_t first, int64_t units,
                                 TeamBarrier& barrier) {
    const Panel<T> panel = pack(first, units, (units + block - 1) / block);
    tiled_steps<T>(kernels, a, saved, panel->data(), 0, batch, first, units, id, team, packs,
                   &barrier);
  });
}

}  // namespace

bool cpu_recurrence(const RecurrenceArgs& a) {
  return with_recurrence_kernels<ScalarKernels, Avx2Kernels, Avx512Kernels>(
      a.input, [&](auto kernels, auto type) { run_recurrence<decltype(type)>(kernels, a); });
}

}  // namespace fastdl::lstm
