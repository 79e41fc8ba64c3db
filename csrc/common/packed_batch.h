// The recurrent layers' steps: the order a direction runs them in, and for packed
// (variable-length) batches the rows a PackedSequence's batch_sizes make active at each.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/checks.h"

namespace fastdl {

// The timestep a direction runs s-th: s, or from the end for the reverse direction.
inline int64_t step_index(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}

// Rows of the batch active at each timestep. With a PackedSequence's batch_sizes
// (sequences sorted by decreasing length) step t runs only rows [0, batch_sizes[t]);
// the others keep their state. Without it every row runs every step.
inline std::vector<int64_t> active_rows(const char* op, const std::optional<at::Tensor>& batch_sizes,
                                 int64_t steps, int64_t batch) {
  if (!batch_sizes) return std::vector<int64_t>(steps, batch);
  const at::Tensor& sizes = *batch_sizes;
  check_shape(op, "batch_sizes", sizes, {steps}, "(T,) with input (T, B, I)");
  check_dtype(op, "batch_sizes", sizes, {c10::kLong});
  TORCH_CHECK(sizes.is_cpu(), "fastdl.", op, ": batch_sizes must be on the CPU (as a "
              "PackedSequence keeps it), got ", sizes.device());
  const at::Tensor contiguous = sizes.contiguous();
  const int64_t* data = contiguous.const_data_ptr<int64_t>();
  std::vector<int64_t> rows(data, data + steps);
  for (int64_t t = 0; t < steps; ++t)
    TORCH_CHECK_VALUE(rows[t] >= 1 && rows[t] <= (t == 0 ? batch : rows[t - 1]) &&
                          (t > 0 || rows[0] == batch),
                      "fastdl.", op, ": batch_sizes must start at the batch size (", batch,
                      ") and not increase, as a PackedSequence's do; got ", rows[t], " at step ",
                      t);
  return rows;
}

// The first `rows` rows of t (a view).
inline at::Tensor rows_of(const at::Tensor& t, int64_t rows) { return t.narrow(0, 0, rows); }

// The state of rows [0, rows) before a step: `previous` (the last step's state) for
// the `carried` rows that ran it, and `first` (h0 or c0) for rows that start here,
// which happens in a reverse pass over a packed batch. `scratch` (B, width) receives
// the rows when both are needed.
inline at::Tensor state_before(const at::Tensor& previous, int64_t carried, const at::Tensor& first,
                               int64_t rows, at::Tensor& scratch) {
  if (carried >= rows) return rows_of(previous, rows);
  rows_of(scratch, carried).copy_(rows_of(previous, carried));
  scratch.narrow(0, carried, rows - carried).copy_(first.narrow(0, carried, rows - carried));
  return rows_of(scratch, rows);
}

// prev_over_time[t] is the state each row had before step t of a reverse pass,
// built as "the output of step t + 1": rows that start at step t (active at t but
// not at t + 1) get `first` instead of that padding.
inline void start_rows_from(at::Tensor& prev_over_time, const at::Tensor& first,
                            const std::vector<int64_t>& active) {
  for (size_t t = 0; t + 1 < active.size(); ++t)
    if (active[t + 1] < active[t])
      prev_over_time[t].narrow(0, active[t + 1], active[t] - active[t + 1])
          .copy_(first.narrow(0, active[t + 1], active[t] - active[t + 1]));
}

}  // namespace fastdl
