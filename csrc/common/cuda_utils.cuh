// Small helpers shared by the CUDA kernels.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <limits>

namespace fastdl::cuda {

// torch's scalar types as device code (CUDA's intrinsics, wmma) sees them: the same
// bits; at::Half and at::BFloat16 become __half and __nv_bfloat16.
template <typename scalar_t>
struct DeviceType {
  using type = scalar_t;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Default block size for one-thread-per-element kernels.
constexpr int kThreadsPerBlock = 256;
constexpr unsigned kFullWarpMask = 0xffffffffu;

// Dynamic shared memory a block may use without opting in per kernel
// (cudaFuncSetAttribute), on every architecture we build for.
constexpr size_t kDefaultSharedMemoryBytes = 48 * 1024;

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// The logistic function, for the recurrent cells' gates (LSTM, GRU).
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// Grid size for `n` elements at `threads` per block; grid.x is limited to 2^31 - 1.
inline unsigned grid_for(int64_t n, int threads = kThreadsPerBlock) {
  const int64_t blocks = ceil_div<int64_t>(n, threads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastdl: ", n,
              " elements exceed the CUDA grid size limit");
  return static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

}  // namespace fastdl::cuda
