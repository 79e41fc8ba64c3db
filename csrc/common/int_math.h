// Integer rounding shared by the CPU kernels' tiling (CUDA code has cuda::ceil_div).
#pragma once

#include <cstdint>

namespace fastdl {

// Tiles of `tile` needed to cover n.
inline int64_t tiles_to_cover(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }
// n rounded up to a multiple of `to`.
inline int64_t round_up(int64_t n, int64_t to) { return tiles_to_cover(n, to) * to; }

}  // namespace fastdl
