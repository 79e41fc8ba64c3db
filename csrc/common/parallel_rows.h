// Row-parallel loops shared by the CPU kernels that work on independent batch rows
// (the recurrent cells).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fastdl {

// Values per parallel task: enough work to outweigh a task's overhead.
constexpr int64_t kValuesPerTask = 16384;

// fn(first_row, row_count) over [0, rows) in parallel, each task about
// kValuesPerTask values of rows of `row_values` values.
template <typename Fn>
void parallel_row_blocks(int64_t rows, int64_t row_values, Fn&& fn) {
  const int64_t grain = std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(1, row_values));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { fn(begin, end - begin); });
}

}  // namespace fastdl
