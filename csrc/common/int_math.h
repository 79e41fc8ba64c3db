// Integer rounding shared by the CPU kernels' tiling (CUDA code has cuda::ceil_div).
#pragma once

#include <cstdint>

namespace fastdl {

// Tiles of `tile` needed to cover n.
inline int64_t tiles_to_cover(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }
// n rounded up to a multiple of `to`.
inline int64_t round_up(int64_t n, int64_t to) { return tiles_to_cover(n, to) * to; }

// Start of block i of `blocks` near-equal blocks of [0, n), on a multiple of `align`
// (i = blocks gives n). Equal blocks rather than whole multiples of a block size: a
// parallel_for hands each thread a run of consecutive blocks, and 56 rows in blocks
// of 9 went 36 / 20 to two threads.
inline int64_t block_start(int64_t n, int64_t blocks, int64_t i, int64_t align) {
  if (i >= blocks) return n;
  const int64_t even = n * i / blocks;
  const int64_t start = (even + align / 2) / align * align;  // the nearest multiple
  return start < n ? start : n;
}

}  // namespace fastdl
