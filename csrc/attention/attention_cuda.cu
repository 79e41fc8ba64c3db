// CUDA attention kernels (see attention.h for the semantics).
//
// Forward (FlashAttention-2): one block per (batch, kv head, tile of query rows, key
// split). The query rows of a kv head's group are packed head-major (packed row p is
// row p % Nq of q head kv_head * group + p / Nq), so a block's rows share every key and
// value tile it stages in shared memory. Per key tile: S = Q K^T, an online softmax
// (running max and sum per row), O = alpha O + P V; O is normalised and written once.
// Causal key tiles past the block's last row are never visited; only tiles that cross
// the diagonal (or the end of the keys) are masked per element.
// Decode (few query rows, group * Nq <= 16): 16-row tiles, and the keys are split over
// enough blocks to fill the GPU ("flash-decoding"); each split writes its partial (max,
// sum, unnormalised output) to scratch and a combine kernel merges them. The same split
// is used whenever (batch, kv head, row tile) blocks alone do not fill the GPU.
//
// Backward, deterministic and without atomics, both kernels recomputing P from the
// saved log-sum-exp: the key kernel owns (batch, kv head, key tile) and loops over the
// packed query tiles of the group (skipping those that cannot see the tile under
// causal), accumulating dK and dV; the query kernel owns (batch, kv head, packed query
// tile) and loops over the key tiles, accumulating dQ. Delta = rowsum(dO * O) comes
// from a small kernel first.
//
// Matrix products run on tensor cores (wmma 16x16x16, float accumulation) for float16 and
// bfloat16, forward and backward, with P and dS rounded to the input dtype as in
// FlashAttention; float32 and float64 use a SIMT product accumulating in their own type.
// Tiles live in shared memory zero-padded to a head-dimension bucket (32, 64, 128, 256
// covering max(D, Dv)); rows are padded so that the products' column reads do not
// conflict on banks.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attention/attention.h"
#include "common/cuda_utils.cuh"

namespace fastdl::attention {
namespace {

using cuda::ceil_div;
using cuda::DeviceType;
using cuda::kFullWarpMask;

constexpr int kThreads = 128;  // every attention kernel: 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadDim = 256;
constexpr int kDecodeRows = 16;     // query rows per block on the decode path
constexpr int64_t kMaxSplits = 128;  // key splits of one row tile
// Dynamic shared memory a block may opt in to on sm_80 (A100), the smallest of our targets.
constexpr size_t kMaxSharedMemoryBytes = 163 * 1024;

// ---- tile bounds (host and device; /tmp emulation checks them against brute force) ----

// Packed query rows [first, first + rows) of one kv head (see the top of the file);
// min_row and max_row bound the query positions i among them.
struct RowTile {
  int64_t first, rows, min_row, max_row;
};

FASTDL_HOST_DEVICE RowTile row_tile(int64_t tile, int64_t tile_rows, int64_t q_len,
                                    int64_t packed_rows) {
  const int64_t first = tile * tile_rows;
  const int64_t end = first + tile_rows < packed_rows ? first + tile_rows : packed_rows;
  const bool one_head = first / q_len == (end - 1) / q_len;
  return {first, end - first, one_head ? first % q_len : 0,
          one_head ? (end - 1) % q_len : q_len - 1};
}

// Keys [0, end) hold every key some row of the tile sees: later key tiles are skipped.
FASTDL_HOST_DEVICE int64_t tile_key_end(const RowTile& t, bool causal, int64_t kv_len) {
  return causal ? causal_key_end(t.max_row, kv_len) : kv_len;
}

// Keys [0, end) are seen by every row of a full tile: key tiles inside need no
// per-element test (a tile with padding rows tests every element).
FASTDL_HOST_DEVICE int64_t tile_unmasked_key_end(const RowTile& t, int64_t tile_rows, bool causal,
                                                 int64_t kv_len) {
  if (t.rows < tile_rows) return 0;
  return causal ? causal_key_end(t.min_row, kv_len) : kv_len;
}

// ---- element types ----

template <typename T>
constexpr bool kTensorCores = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Explicit conversions: torch builds with the implicit half conversions disabled.
template <typename T>
__device__ __forceinline__ acc_type<T> widen(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return x;
  }
}
template <typename T>
__device__ __forceinline__ T narrow(acc_type<T> x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}
template <typename A>
__device__ __forceinline__ A warp_max(A x) {
  for (int offset = 16; offset > 0; offset /= 2) {
    x = max(x, __shfl_xor_sync(kFullWarpMask, x, offset));
  }
  return x;
}
template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullWarpMask, x, offset);
  return x;
}

// ---- shared-memory layout ----

constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Rows of a float32/float64 tile when no larger tile fits in shared memory.
template <typename T>
constexpr int simt_tile(int head_dim) {
  const int row_bytes = static_cast<int>(sizeof(T)) * head_dim;
  return row_bytes <= 512 ? 32 : row_bytes <= 1024 ? 16 : 8;
}

// Row strides (elements) of the tiles. Input-dtype tiles: wmma needs 16-byte multiples
// and +8 halves staggers rows over the banks; SIMT reads columns of K and V, which an
// odd stride spreads over all banks. Accumulator tiles: 16-byte multiples for wmma.
template <typename T, int kHeadDim, int kCols>
struct TileStrides {
  static constexpr int kTile = kHeadDim + (kTensorCores<T> ? 8 : 1);
  static constexpr int kScores = kCols + (kTensorCores<T> ? 4 : 1);
  static constexpr int kProbs = kCols + (kTensorCores<T> ? 8 : 1);
  static constexpr int kAcc = kHeadDim + (kTensorCores<T> ? 4 : 0);
};

// Per query row of a tile: its q head and position, and where its keys end (0 for the
// padding rows past the end, which then see no key).
struct RowInfo {
  int64_t head, row, key_end;
};

__device__ __forceinline__ void fill_row_info(RowInfo* info, int tile_rows, const RowTile& t,
                                              int64_t kv_head, const Shape& s, bool causal) {
  for (int r = threadIdx.x; r < tile_rows; r += kThreads) {
    if (r < t.rows) {
      const int64_t p = t.first + r;
      const int64_t i = p % s.q_len;
      info[r] = {kv_head * s.group() + p / s.q_len, i,
                 causal ? causal_key_end(i, s.kv_len) : s.kv_len};
    } else {
      info[r] = {0, 0, 0};
    }
  }
}

// ---- block-level building blocks ----

// dst[r][c] (row stride kLd) = row r of a global tile, c < kHeadDim, from src(r) (null
// past the last row); columns >= cols and missing rows are zero. 16-byte loads when the
// rows allow (vectorized), several in flight per thread before the stores.
template <int kRows, int kHeadDim, int kLd, typename T, typename RowSource>
__device__ __forceinline__ void load_tile(T* dst, RowSource src, int64_t cols, bool vectorized) {
  if (vectorized) {
    constexpr int kVec = 16 / sizeof(T);
    constexpr int kChunksPerRow = kHeadDim / kVec;
    constexpr int kChunks = kRows * kChunksPerRow;
    constexpr int kInFlight = 8;
    for (int base = 0; base < kChunks; base += kThreads * kInFlight) {
      uint4 chunk[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int e = base + u * kThreads + threadIdx.x;
        const int c = e % kChunksPerRow * kVec;
        const T* row = e < kChunks ? src(e / kChunksPerRow) : nullptr;
        chunk[u] = row != nullptr && c < cols ? *reinterpret_cast<const uint4*>(row + c)
                                              : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int e = base + u * kThreads + threadIdx.x;
        if (e >= kChunks) break;
        T* out = dst + e / kChunksPerRow * kLd + e % kChunksPerRow * kVec;
        if constexpr (kLd * sizeof(T) % 16 == 0) {
          *reinterpret_cast<uint4*>(out) = chunk[u];
        } else {
          T parts[kVec];
          memcpy(parts, &chunk[u], sizeof(parts));
#pragma unroll
          for (int x = 0; x < kVec; ++x) out[x] = parts[x];
        }
      }
    }
  } else {
    for (int e = threadIdx.x; e < kRows * kHeadDim; e += kThreads) {
      const int r = e / kHeadDim, c = e % kHeadDim;
      const T* row = src(r);
      dst[r * kLd + c] = row != nullptr && c < cols ? row[c] : narrow<T>(0);
    }
  }
}

// C (M x N, row stride ldc) = [C +] A (M x K) B (K x N), all in shared memory, by the
// whole block. A(m, k) = A[m * lda + k] (A[k * lda + m] if kTransA); B(k, n) =
// B[k * ldb + n] (B[n * ldb + k] if kTransB). Tensor cores: each warp takes 16x16 tiles
// of C in turn; SIMT: each thread takes 2x2 elements of C, a warp sharing one or two rows
// of A (broadcast) and reading consecutive columns of B.
template <int M, int N, int K, bool kTransA, bool kTransB, typename T>
__device__ __forceinline__ void block_gemm(const T* A, int lda, const T* B, int ldb,
                                           acc_type<T>* C, int ldc, bool accumulate) {
  if constexpr (kTensorCores<T>) {
    namespace wmma = nvcuda::wmma;
    static_assert(M % 16 == 0 && N % 16 == 0 && K % 16 == 0, "wmma tiles are 16x16x16");
    using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;
    using LayoutB = std::conditional_t<kTransB, wmma::col_major, wmma::row_major>;
    constexpr int kTilesN = N / 16;
    for (int t = threadIdx.x / 32; t < M / 16 * kTilesN; t += kWarps) {
      const int m0 = t / kTilesN * 16, n0 = t % kTilesN * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      if (accumulate) {
        wmma::load_matrix_sync(c, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(c, 0.0f);
      }
#pragma unroll
      for (int k0 = 0; k0 < K; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> b;
        wmma::load_matrix_sync(a, kTransA ? A + k0 * lda + m0 : A + m0 * lda + k0, lda);
        wmma::load_matrix_sync(b, kTransB ? B + n0 * ldb + k0 : B + k0 * ldb + n0, ldb);
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(C + m0 * ldc + n0, c, ldc, wmma::mem_row_major);
    }
  } else {
    // Each thread: rows m, m + M/2 by columns n, n + N/2 (4 products per 4 loads).
    static_assert(M % 2 == 0 && N % 2 == 0, "SIMT tiles are 2x2 per thread");
    constexpr int kHalfM = M / 2, kHalfN = N / 2;
    for (int e = threadIdx.x; e < kHalfM * kHalfN; e += kThreads) {
      const int m = e / kHalfN, n = e % kHalfN;
      T sum[2][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          sum[i][j] = accumulate ? C[(m + i * kHalfM) * ldc + n + j * kHalfN] : T(0);
        }
      }
#pragma unroll 4
      for (int k = 0; k < K; ++k) {
        T x[2], y[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int row = m + i * kHalfM, col = n + i * kHalfN;
          x[i] = kTransA ? A[k * lda + row] : A[row * lda + k];
          y[i] = kTransB ? B[col * ldb + k] : B[k * ldb + col];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) sum[i][j] += x[i] * y[j];
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) C[(m + i * kHalfM) * ldc + n + j * kHalfN] = sum[i][j];
      }
    }
  }
}

template <typename acc_t>
struct Dropout {
  bool on;
  uint64_t seed;
  uint32_t threshold;
  acc_t keep_scale;  // 1 / (1 - p)
  __device__ __forceinline__ acc_t factor(uint64_t index) const {
    return dropout_keep(seed, index, threshold) ? keep_scale : acc_t(0);
  }
};

// The operands every kernel reads.
template <typename T>
struct Inputs {
  using acc_t = acc_type<T>;
  const T *q, *k, *v;
  Strides qs, ks, vs;
  const acc_t* mask;  // null: none
  MaskStrides ms;
  Shape shape;
  bool causal;
  acc_t scale;
  Dropout<acc_t> dropout;
  bool vec_q, vec_k, vec_v;  // 16-byte loads possible

  __device__ __forceinline__ acc_t mask_at(int64_t b, const RowInfo& row, int64_t key) const {
    return mask[b * ms.batch + row.head * ms.head + row.row * ms.q + key * ms.k];
  }
};

// ---- forward ----

template <typename T_, int kHeadDim_, bool kDecode>
struct ForwardConfig {
  using T = T_;
  using acc_t = acc_type<T>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRows = kDecode ? kDecodeRows
                               : kTensorCores<T> ? (kHeadDim <= 64 ? 64 : 32)
                                                 : simt_tile<T>(kHeadDim);
  static constexpr int kCols = kTensorCores<T> ? (kDecode ? 64 : 32) : simt_tile<T>(kHeadDim);
  using Ld = TileStrides<T, kHeadDim, kCols>;
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + align128(sizeof(T) * kRows * Ld::kTile);
  static constexpr size_t kV = kK + align128(sizeof(T) * kCols * Ld::kTile);
  static constexpr size_t kS = kV + align128(sizeof(T) * kCols * Ld::kTile);
  static constexpr size_t kP = kS + align128(sizeof(acc_t) * kRows * Ld::kScores);
  static constexpr size_t kO = kP + align128(sizeof(T) * kRows * Ld::kProbs);
  static constexpr size_t kMax = kO + align128(sizeof(acc_t) * kRows * Ld::kAcc);
  static constexpr size_t kSum = kMax + align128(sizeof(acc_t) * kRows);
  static constexpr size_t kInfo = kSum + align128(sizeof(acc_t) * kRows);
  static constexpr size_t kBytes = kInfo + align128(sizeof(RowInfo) * kRows);
  static_assert(kBytes <= kMaxSharedMemoryBytes, "forward tiles exceed shared memory");
};

template <typename T>
struct ForwardArgs {
  using acc_t = acc_type<T>;
  Inputs<T> in;
  int64_t row_tiles, splits, key_tiles_per_split;
  T* out;        // splits == 1: (B, Hq, Nq, Dv)
  acc_t* lse;    //              (B, Hq, Nq)
  acc_t* part_out;  // splits > 1: (B * Hq * Nq, splits, Dv), unnormalised
  acc_t* part_max;  //             (B * Hq * Nq, splits)
  acc_t* part_sum;
};

// An output value from its unnormalised sum o and the row's sum l, as the CPU kernels
// do: a fully masked row (l = 0, o = 0) gives 0; a NaN or infinite score (the running
// max skips NaN, so l is NaN) gives NaN, as F.scaled_dot_product_attention does.
template <typename acc_t>
__device__ __forceinline__ acc_t finish_row(acc_t o, acc_t l) {
  return l > acc_t(0) ? o / l : o * acc_t(0);
}

template <typename Cfg>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardArgs<typename Cfg::T> a) {
  using T = typename Cfg::T;
  using acc_t = typename Cfg::acc_t;
  using Ld = typename Cfg::Ld;
  constexpr int kRows = Cfg::kRows, kCols = Cfg::kCols, kHeadDim = Cfg::kHeadDim;
  constexpr int kPerLane = ceil_div(kCols, 32);
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + Cfg::kQ);
  T* k_s = reinterpret_cast<T*>(smem + Cfg::kK);
  T* v_s = reinterpret_cast<T*>(smem + Cfg::kV);
  acc_t* s_s = reinterpret_cast<acc_t*>(smem + Cfg::kS);
  T* p_s = reinterpret_cast<T*>(smem + Cfg::kP);
  acc_t* o_s = reinterpret_cast<acc_t*>(smem + Cfg::kO);
  acc_t* row_max = reinterpret_cast<acc_t*>(smem + Cfg::kMax);
  acc_t* row_sum = reinterpret_cast<acc_t*>(smem + Cfg::kSum);
  RowInfo* info = reinterpret_cast<RowInfo*>(smem + Cfg::kInfo);

  const Inputs<T>& in = a.in;
  const Shape& s = in.shape;
  int64_t block = blockIdx.x;
  const int64_t tile = block % a.row_tiles;
  block /= a.row_tiles;
  const int64_t split = block % a.splits;
  block /= a.splits;
  const int64_t g = block % s.kv_heads, b = block / s.kv_heads;
  const int64_t packed_rows = s.group() * s.q_len;
  const RowTile rt = row_tile(tile, kRows, s.q_len, packed_rows);
  // Linear (b, h, i) index of the tile's first row: packed rows are consecutive rows of
  // the (B, Hq, Nq) outputs.
  const int64_t first_row = (b * s.kv_heads + g) * packed_rows + rt.first;

  fill_row_info(info, kRows, rt, g, s, in.causal);
  for (int r = threadIdx.x; r < kRows; r += kThreads) {
    row_max[r] = neg_inf<acc_t>();
    row_sum[r] = 0;
  }
  for (int e = threadIdx.x; e < kRows * kHeadDim; e += kThreads) {
    o_s[e / kHeadDim * Ld::kAcc + e % kHeadDim] = 0;
  }
  __syncthreads();
  load_tile<kRows, kHeadDim, Ld::kTile>(q_s, [&](int r) -> const T* {
    if (r >= rt.rows) return nullptr;
    return in.q + b * in.qs.batch + info[r].head * in.qs.head + info[r].row * in.qs.row;
  }, s.head_dim, in.vec_q);

  const T* k_head = in.k + b * in.ks.batch + g * in.ks.head;
  const T* v_head = in.v + b * in.vs.batch + g * in.vs.head;
  const int64_t key_tiles = ceil_div<int64_t>(tile_key_end(rt, in.causal, s.kv_len), kCols);
  const int64_t unmasked_end = tile_unmasked_key_end(rt, kRows, in.causal, s.kv_len);
  const int64_t kt_begin = split * a.key_tiles_per_split;
  const int64_t kt_end = min(key_tiles, kt_begin + a.key_tiles_per_split);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
    const int64_t k0 = kt * kCols;
    __syncthreads();  // the previous P V has finished with k_s, v_s, p_s
    load_tile<kCols, kHeadDim, Ld::kTile>(k_s, [&](int r) -> const T* {
      return k0 + r < s.kv_len ? k_head + (k0 + r) * in.ks.row : nullptr;
    }, s.head_dim, in.vec_k);
    load_tile<kCols, kHeadDim, Ld::kTile>(v_s, [&](int r) -> const T* {
      return k0 + r < s.kv_len ? v_head + (k0 + r) * in.vs.row : nullptr;
    }, s.value_dim, in.vec_v);
    __syncthreads();
    block_gemm<kRows, kCols, kHeadDim, false, true>(q_s, Ld::kTile, k_s, Ld::kTile, s_s,
                                                    Ld::kScores, false);
    __syncthreads();
    // Online softmax, one warp per row: the new running max, P = exp(S - max) (dropped
    // and rescaled for P V; the running sum takes the undropped P), and O rescaled by
    // exp(old max - new max) before this tile's P V is added.
    const bool per_element = k0 + kCols > unmasked_end;
    for (int r = warp; r < kRows; r += kWarps) {
      const RowInfo row = info[r];
      acc_t x[kPerLane];
      acc_t tile_max = neg_inf<acc_t>();
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int j = lane + 32 * t;
        x[t] = neg_inf<acc_t>();
        if (j < kCols && (!per_element || k0 + j < row.key_end)) {
          x[t] = s_s[r * Ld::kScores + j] * in.scale;
          if (in.mask != nullptr) x[t] += in.mask_at(b, row, k0 + j);
        }
        tile_max = max(tile_max, x[t]);
      }
      const acc_t old_max = row_max[r];
      const acc_t new_max = max(old_max, warp_max(tile_max));
      // Every key so far masked: subtract 0, so exp(-inf) = 0 instead of exp(NaN).
      const acc_t base = new_max == neg_inf<acc_t>() ? acc_t(0) : new_max;
      const acc_t alpha = exp(old_max - base);
      acc_t sum = 0;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int j = lane + 32 * t;
        acc_t p = exp(x[t] - base);
        sum += p;
        if (in.dropout.on && p != acc_t(0)) {
          p *= in.dropout.factor(static_cast<uint64_t>(first_row + r) * s.kv_len + k0 + j);
        }
        if (j < kCols) p_s[r * Ld::kProbs + j] = narrow<T>(p);
      }
      sum = warp_sum(sum);
      for (int c = lane; c < kHeadDim; c += 32) o_s[r * Ld::kAcc + c] *= alpha;
      if (lane == 0) {
        row_max[r] = new_max;
        row_sum[r] = row_sum[r] * alpha + sum;
      }
    }
    __syncthreads();
    block_gemm<kRows, kHeadDim, kCols, false, false>(p_s, Ld::kProbs, v_s, Ld::kTile, o_s,
                                                     Ld::kAcc, true);
  }
  __syncthreads();

  const int64_t dv = s.value_dim;
  for (int e = threadIdx.x; e < kRows * kHeadDim; e += kThreads) {
    const int r = e / kHeadDim, c = e % kHeadDim;
    if (r >= rt.rows || c >= dv) continue;
    const acc_t o = o_s[r * Ld::kAcc + c];
    if (a.splits == 1) {
      const acc_t l = row_sum[r];
      a.out[(first_row + r) * dv + c] = narrow<T>(finish_row(o, l));
    } else {
      a.part_out[((first_row + r) * a.splits + split) * dv + c] = o;
    }
  }
  for (int r = threadIdx.x; r < rt.rows; r += kThreads) {
    const acc_t l = row_sum[r];
    if (a.splits == 1) {
      a.lse[first_row + r] = l > acc_t(0) ? row_max[r] + log(l) : neg_inf<acc_t>();
    } else {
      a.part_max[(first_row + r) * a.splits + split] = row_max[r];
      a.part_sum[(first_row + r) * a.splits + split] = l;
    }
  }
}

// Merges the key splits of each row, one warp per row: weights exp(max_s - max) make the
// partial sums and outputs comparable.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    combine_splits_kernel(const acc_t* part_out, const acc_t* part_max, const acc_t* part_sum,
                          int64_t rows, int64_t splits, int64_t dv, T* out, acc_t* lse) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const acc_t* m = part_max + row * splits;
  const acc_t* l = part_sum + row * splits;
  acc_t row_max = neg_inf<acc_t>();
  for (int64_t sp = 0; sp < splits; ++sp) row_max = max(row_max, m[sp]);
  if (row_max == neg_inf<acc_t>()) {  // every key masked
    for (int64_t c = lane; c < dv; c += 32) out[row * dv + c] = narrow<T>(0);
    if (lane == 0) lse[row] = row_max;
    return;
  }
  acc_t total = 0;
  for (int64_t sp = 0; sp < splits; ++sp) total += exp(m[sp] - row_max) * l[sp];
  for (int64_t c = lane; c < dv; c += 32) {
    acc_t o = 0;
    for (int64_t sp = 0; sp < splits; ++sp) {
      o += exp(m[sp] - row_max) * part_out[(row * splits + sp) * dv + c];
    }
    out[row * dv + c] = narrow<T>(finish_row(o, total));
  }
  if (lane == 0) lse[row] = total > acc_t(0) ? row_max + log(total) : neg_inf<acc_t>();
}

// ---- backward ----

// kKeyGrads: the key kernel's layout (P, dK and dV tiles); else the query kernel's (dQ).
template <typename T_, int kHeadDim_, bool kKeyGrads>
struct BackwardConfig {
  using T = T_;
  using acc_t = acc_type<T>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRows = kTensorCores<T> ? 32 : simt_tile<T>(kHeadDim);
  static constexpr int kCols = kRows;
  using Ld = TileStrides<T, kHeadDim, kCols>;
  static constexpr size_t kQ = 0;
  static constexpr size_t kDo = kQ + align128(sizeof(T) * kRows * Ld::kTile);
  static constexpr size_t kK = kDo + align128(sizeof(T) * kRows * Ld::kTile);
  static constexpr size_t kV = kK + align128(sizeof(T) * kCols * Ld::kTile);
  static constexpr size_t kS = kV + align128(sizeof(T) * kCols * Ld::kTile);
  static constexpr size_t kDp = kS + align128(sizeof(acc_t) * kRows * Ld::kScores);
  static constexpr size_t kDs = kDp + align128(sizeof(acc_t) * kRows * Ld::kScores);
  static constexpr size_t kP = kDs + align128(sizeof(T) * kRows * Ld::kProbs);
  // dK then dV (key kernel), or dQ (query kernel); kRows == kCols.
  static constexpr size_t kGrad = kP + (kKeyGrads ? align128(sizeof(T) * kRows * Ld::kProbs) : 0);
  static constexpr size_t kGradTile = align128(sizeof(acc_t) * kRows * Ld::kAcc);
  static constexpr size_t kLse = kGrad + (kKeyGrads ? 2 : 1) * kGradTile;
  static constexpr size_t kDelta = kLse + align128(sizeof(acc_t) * kRows);
  static constexpr size_t kInfo = kDelta + align128(sizeof(acc_t) * kRows);
  static constexpr size_t kBytes = kInfo + align128(sizeof(RowInfo) * kRows);
  static_assert(kBytes <= kMaxSharedMemoryBytes, "backward tiles exceed shared memory");
};

template <typename T>
struct BackwardArgs {
  using acc_t = acc_type<T>;
  Inputs<T> in;
  const T* grad_out;
  Strides dos;
  bool vec_do;
  const acc_t* lse;    // (B, Hq, Nq)
  const acc_t* delta;  // (B, Hq, Nq)
  T *grad_q, *grad_k, *grad_v;
};

// Delta = rowsum(dO * O), one warp per (b, h, i) row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_delta_kernel(const T* grad_out, Strides dos, const T* out, Strides os, Shape s,
                         acc_type<T>* delta) {
  using acc_t = acc_type<T>;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= s.batch * s.q_heads * s.q_len) return;
  const int64_t i = row % s.q_len, h = row / s.q_len % s.q_heads;
  const int64_t b = row / (s.q_len * s.q_heads);
  const T* d = grad_out + b * dos.batch + h * dos.head + i * dos.row;
  const T* o = out + b * os.batch + h * os.head + i * os.row;
  acc_t sum = 0;
  for (int64_t c = lane; c < s.value_dim; c += 32) sum += widen(d[c]) * widen(o[c]);
  sum = warp_sum(sum);
  if (lane == 0) delta[row] = sum;
}

// The per-tile state both backward kernels share, and their common steps.
template <typename Cfg>
struct BackwardTile {
  using T = typename Cfg::T;
  using acc_t = typename Cfg::acc_t;
  using Ld = typename Cfg::Ld;
  static constexpr int kRows = Cfg::kRows, kCols = Cfg::kCols, kHeadDim = Cfg::kHeadDim;

  const BackwardArgs<T>& a;
  unsigned char* smem;
  int64_t b, g;
  __device__ T* q_s() const { return reinterpret_cast<T*>(smem + Cfg::kQ); }
  __device__ T* do_s() const { return reinterpret_cast<T*>(smem + Cfg::kDo); }
  __device__ T* k_s() const { return reinterpret_cast<T*>(smem + Cfg::kK); }
  __device__ T* v_s() const { return reinterpret_cast<T*>(smem + Cfg::kV); }
  __device__ acc_t* s_s() const { return reinterpret_cast<acc_t*>(smem + Cfg::kS); }
  __device__ acc_t* dp_s() const { return reinterpret_cast<acc_t*>(smem + Cfg::kDp); }
  __device__ T* ds_s() const { return reinterpret_cast<T*>(smem + Cfg::kDs); }
  __device__ T* p_s() const { return reinterpret_cast<T*>(smem + Cfg::kP); }
  __device__ acc_t* grad_s(int which) const {
    return reinterpret_cast<acc_t*>(smem + Cfg::kGrad + which * Cfg::kGradTile);
  }
  __device__ acc_t* lse_s() const { return reinterpret_cast<acc_t*>(smem + Cfg::kLse); }
  __device__ acc_t* delta_s() const { return reinterpret_cast<acc_t*>(smem + Cfg::kDelta); }
  __device__ RowInfo* info() const { return reinterpret_cast<RowInfo*>(smem + Cfg::kInfo); }

  __device__ int64_t first_row(const RowTile& rt) const {
    const Shape& s = a.in.shape;
    return (b * s.kv_heads + g) * s.group() * s.q_len + rt.first;
  }

  // Row info, log-sum-exp and Delta of a query tile (padding rows: P = 0, Delta = 0).
  __device__ void load_row_stats(const RowTile& rt) const {
    fill_row_info(info(), kRows, rt, g, a.in.shape, a.in.causal);
    for (int r = threadIdx.x; r < kRows; r += kThreads) {
      lse_s()[r] = r < rt.rows ? a.lse[first_row(rt) + r] : neg_inf<acc_t>();
      delta_s()[r] = r < rt.rows ? a.delta[first_row(rt) + r] : acc_t(0);
    }
  }

  // Q and dO of a query tile; needs the row info in place.
  __device__ void load_query_tiles(const RowTile& rt) const {
    const Inputs<T>& in = a.in;
    const RowInfo* rows = info();
    load_tile<kRows, kHeadDim, Ld::kTile>(q_s(), [&](int r) -> const T* {
      if (r >= rt.rows) return nullptr;
      return in.q + b * in.qs.batch + rows[r].head * in.qs.head + rows[r].row * in.qs.row;
    }, in.shape.head_dim, in.vec_q);
    load_tile<kRows, kHeadDim, Ld::kTile>(do_s(), [&](int r) -> const T* {
      if (r >= rt.rows) return nullptr;
      return a.grad_out + b * a.dos.batch + rows[r].head * a.dos.head + rows[r].row * a.dos.row;
    }, in.shape.value_dim, a.vec_do);
  }

  __device__ void load_key_tiles(int64_t k0) const {
    const Inputs<T>& in = a.in;
    const int64_t kv_len = in.shape.kv_len;
    const T* k_head = in.k + b * in.ks.batch + g * in.ks.head;
    const T* v_head = in.v + b * in.vs.batch + g * in.vs.head;
    load_tile<kCols, kHeadDim, Ld::kTile>(k_s(), [&](int r) -> const T* {
      return k0 + r < kv_len ? k_head + (k0 + r) * in.ks.row : nullptr;
    }, in.shape.head_dim, in.vec_k);
    load_tile<kCols, kHeadDim, Ld::kTile>(v_s(), [&](int r) -> const T* {
      return k0 + r < kv_len ? v_head + (k0 + r) * in.vs.row : nullptr;
    }, in.shape.value_dim, in.vec_v);
  }

  // S = Q K^T and dP = dO V^T of the staged tiles.
  __device__ void scores() const {
    block_gemm<kRows, kCols, kHeadDim, false, true>(q_s(), Ld::kTile, k_s(), Ld::kTile, s_s(),
                                                    Ld::kScores, false);
    block_gemm<kRows, kCols, kHeadDim, false, true>(do_s(), Ld::kTile, v_s(), Ld::kTile, dp_s(),
                                                    Ld::kScores, false);
  }

  // P = exp(S - lse) (0 where masked or where the row is fully masked, lse = -inf),
  // Z the dropout factor: dS = P (dP Z - Delta), and (kWriteP) P Z for dV.
  template <bool kWriteP>
  __device__ void softmax_grad(const RowTile& rt, int64_t k0) const {
    const Inputs<T>& in = a.in;
    const bool per_element =
        k0 + kCols > tile_unmasked_key_end(rt, kRows, in.causal, in.shape.kv_len);
    const int64_t first = first_row(rt);
    for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
      const int r = e / kCols, j = e % kCols;
      const RowInfo& row = info()[r];
      const int64_t key = k0 + j;
      const acc_t lse = lse_s()[r];
      acc_t p = 0;
      if ((!per_element || key < row.key_end) && lse != neg_inf<acc_t>()) {
        acc_t x = s_s()[r * Ld::kScores + j] * in.scale;
        if (in.mask != nullptr) x += in.mask_at(b, row, key);
        p = exp(x - lse);
      }
      acc_t dp = dp_s()[r * Ld::kScores + j];
      acc_t pz = p;
      if (in.dropout.on && p != acc_t(0)) {
        const acc_t z =
            in.dropout.factor(static_cast<uint64_t>(first + r) * in.shape.kv_len + key);
        dp *= z;
        pz *= z;
      }
      ds_s()[r * Ld::kProbs + j] = narrow<T>(p * (dp - delta_s()[r]));
      if constexpr (kWriteP) p_s()[r * Ld::kProbs + j] = narrow<T>(pz);
    }
  }

  __device__ void zero_grad(int which) const {
    for (int e = threadIdx.x; e < kRows * kHeadDim; e += kThreads) {
      grad_s(which)[e / kHeadDim * Ld::kAcc + e % kHeadDim] = 0;
    }
  }

  // Rows [0, rows) of an accumulator tile, times factor, to dst (row stride cols).
  __device__ void store_grad(int which, T* dst, int64_t rows, int64_t cols, acc_t factor) const {
    for (int e = threadIdx.x; e < kRows * kHeadDim; e += kThreads) {
      const int r = e / kHeadDim, c = e % kHeadDim;
      if (r < rows && c < cols) {
        dst[r * cols + c] = narrow<T>(factor * grad_s(which)[r * Ld::kAcc + c]);
      }
    }
  }
};

// dK, dV of one (b, kv head, key tile), over every query tile of the group that sees it.
template <typename Cfg>
__global__ void __launch_bounds__(kThreads)
    backward_key_kernel(const BackwardArgs<typename Cfg::T> a) {
  using Tile = BackwardTile<Cfg>;
  constexpr int kRows = Cfg::kRows, kCols = Cfg::kCols, kHeadDim = Cfg::kHeadDim;
  using Ld = typename Cfg::Ld;
  extern __shared__ __align__(128) unsigned char smem[];
  const Shape& s = a.in.shape;
  const int64_t key_tiles = ceil_div<int64_t>(s.kv_len, kCols);
  const int64_t kt = blockIdx.x % key_tiles, bg = blockIdx.x / key_tiles;
  const Tile t{a, smem, bg / s.kv_heads, bg % s.kv_heads};
  const int64_t k0 = kt * kCols;
  const int64_t packed_rows = s.group() * s.q_len;

  t.load_key_tiles(k0);
  t.zero_grad(0);
  t.zero_grad(1);
  for (int64_t qt = 0; qt < ceil_div<int64_t>(packed_rows, kRows); ++qt) {
    const RowTile rt = row_tile(qt, kRows, s.q_len, packed_rows);
    if (tile_key_end(rt, a.in.causal, s.kv_len) <= k0) continue;  // no row sees these keys
    __syncthreads();  // the previous tile's products have finished with the query tiles
    t.load_row_stats(rt);
    __syncthreads();
    t.load_query_tiles(rt);
    __syncthreads();
    t.scores();
    __syncthreads();
    t.template softmax_grad<true>(rt, k0);
    __syncthreads();
    // dV += (P Z)^T dO, dK += dS^T Q (scaled once at the end).
    block_gemm<kCols, kHeadDim, kRows, true, false>(t.p_s(), Ld::kProbs, t.do_s(), Ld::kTile,
                                                    t.grad_s(1), Ld::kAcc, true);
    block_gemm<kCols, kHeadDim, kRows, true, false>(t.ds_s(), Ld::kProbs, t.q_s(), Ld::kTile,
                                                    t.grad_s(0), Ld::kAcc, true);
  }
  __syncthreads();
  const int64_t keys = min(static_cast<int64_t>(kCols), s.kv_len - k0);
  const int64_t row0 = (t.b * s.kv_heads + t.g) * s.kv_len + k0;
  t.store_grad(0, a.grad_k + row0 * s.head_dim, keys, s.head_dim, a.in.scale);
  t.store_grad(1, a.grad_v + row0 * s.value_dim, keys, s.value_dim, 1);
}

// dQ of one (b, kv head, packed query tile), over the key tiles its rows see.
template <typename Cfg>
__global__ void __launch_bounds__(kThreads)
    backward_query_kernel(const BackwardArgs<typename Cfg::T> a) {
  using Tile = BackwardTile<Cfg>;
  constexpr int kRows = Cfg::kRows, kCols = Cfg::kCols, kHeadDim = Cfg::kHeadDim;
  using Ld = typename Cfg::Ld;
  extern __shared__ __align__(128) unsigned char smem[];
  const Shape& s = a.in.shape;
  const int64_t packed_rows = s.group() * s.q_len;
  const int64_t row_tiles = ceil_div<int64_t>(packed_rows, kRows);
  const int64_t qt = blockIdx.x % row_tiles, bg = blockIdx.x / row_tiles;
  const Tile t{a, smem, bg / s.kv_heads, bg % s.kv_heads};
  const RowTile rt = row_tile(qt, kRows, s.q_len, packed_rows);

  t.load_row_stats(rt);
  t.zero_grad(0);
  __syncthreads();
  t.load_query_tiles(rt);
  const int64_t key_tiles = ceil_div<int64_t>(tile_key_end(rt, a.in.causal, s.kv_len), kCols);
  for (int64_t kt = 0; kt < key_tiles; ++kt) {
    __syncthreads();  // the previous dS K has finished with k_s, ds_s
    t.load_key_tiles(kt * kCols);
    __syncthreads();
    t.scores();
    __syncthreads();
    t.template softmax_grad<false>(rt, kt * kCols);
    __syncthreads();
    block_gemm<kRows, kHeadDim, kCols, false, false>(t.ds_s(), Ld::kProbs, t.k_s(), Ld::kTile,
                                                     t.grad_s(0), Ld::kAcc, true);
  }
  __syncthreads();
  t.store_grad(0, a.grad_q + t.first_row(rt) * s.head_dim, rt.rows, s.head_dim, a.in.scale);
}

// ---- host side ----

void check_head_dims(const char* op, const Shape& s) {
  TORCH_CHECK_VALUE(s.head_dim <= kMaxHeadDim, "fastdl.", op,
                    ": query and key head dimension D must be at most ", kMaxHeadDim,
                    " on CUDA, got D = ", s.head_dim);
  TORCH_CHECK_VALUE(s.value_dim <= kMaxHeadDim, "fastdl.", op,
                    ": value head dimension Dv must be at most ", kMaxHeadDim,
                    " on CUDA, got Dv = ", s.value_dim);
}

// fn(integral_constant<int, bucket>) for the smallest head-dimension bucket >= d.
template <typename Fn>
void with_head_dim(int64_t d, Fn&& fn) {
  if (d <= 32) return fn(std::integral_constant<int, 32>{});
  if (d <= 64) return fn(std::integral_constant<int, 64>{});
  if (d <= 128) return fn(std::integral_constant<int, 128>{});
  fn(std::integral_constant<int, 256>{});
}

// Whether every row of t can be read with 16-byte loads.
bool rows_vectorizable(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0 || t.size(3) * elem % 16 != 0) {
    return false;
  }
  for (int d = 0; d < 3; ++d) {
    if (t.size(d) > 1 && t.stride(d) * elem % 16 != 0) return false;
  }
  return true;
}

template <typename T>
Inputs<T> inputs_of(const Operands& o) {
  using acc_t = acc_type<T>;
  const double p = o.options.dropout_p;
  return {reinterpret_cast<const T*>(o.q.const_data_ptr()),
          reinterpret_cast<const T*>(o.k.const_data_ptr()),
          reinterpret_cast<const T*>(o.v.const_data_ptr()),
          Operands::strides_of(o.q),
          Operands::strides_of(o.k),
          Operands::strides_of(o.v),
          o.mask.defined() ? o.mask.const_data_ptr<acc_t>() : nullptr,
          o.mask_strides,
          o.shape,
          o.options.causal,
          static_cast<acc_t>(o.options.scale),
          {p > 0, static_cast<uint64_t>(o.options.seed), dropout_threshold(p),
           static_cast<acc_t>(1.0 / (1.0 - p))},
          rows_vectorizable(o.q),
          rows_vectorizable(o.k),
          rows_vectorizable(o.v)};
}

// Opts kernel in to `bytes` of dynamic shared memory, or fails clearly.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(bytes <= prop->sharedMemPerBlockOptin, "fastdl.attention: the CUDA kernel needs ",
              bytes, " bytes of shared memory per block, ", prop->name, " allows ",
              prop->sharedMemPerBlockOptin);
  if (bytes > cuda::kDefaultSharedMemoryBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

unsigned grid_of(int64_t blocks) {
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastdl.attention: ", blocks,
              " blocks exceed the CUDA grid size limit");
  return static_cast<unsigned>(blocks);
}

template <typename Cfg>
void launch_forward(const Operands& o, at::Tensor& output, at::Tensor& logsumexp) {
  using T = typename Cfg::T;
  using acc_t = typename Cfg::acc_t;
  const Shape& s = o.shape;
  ForwardArgs<T> a{};
  a.in = inputs_of<T>(o);
  const int64_t rows = s.batch * s.q_heads * s.q_len;
  a.row_tiles = ceil_div<int64_t>(s.group() * s.q_len, Cfg::kRows);
  const int64_t key_tiles = ceil_div<int64_t>(s.kv_len, Cfg::kCols);
  // Split the keys when the row tiles leave SMs idle: aim at a few blocks per SM, each
  // still reading at least two key tiles.
  const int64_t blocks = s.batch * s.kv_heads * a.row_tiles;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t splits = 1;
  if (blocks < 2 * sms) {
    splits = std::min({ceil_div<int64_t>(4 * sms, blocks), key_tiles / 2, kMaxSplits});
    splits = std::max<int64_t>(splits, 1);
  }
  a.key_tiles_per_split = ceil_div(key_tiles, splits);
  a.splits = ceil_div(key_tiles, a.key_tiles_per_split);
  at::Tensor part_out, part_max, part_sum;
  a.out = reinterpret_cast<T*>(output.data_ptr());
  a.lse = logsumexp.data_ptr<acc_t>();
  if (a.splits > 1) {
    const auto options = logsumexp.options();
    part_out = at::empty({rows, a.splits, s.value_dim}, options);
    part_max = at::empty({rows, a.splits}, options);
    part_sum = at::empty({rows, a.splits}, options);
    a.part_out = part_out.data_ptr<acc_t>();
    a.part_max = part_max.data_ptr<acc_t>();
    a.part_sum = part_sum.data_ptr<acc_t>();
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  allow_shared_memory(forward_kernel<Cfg>, Cfg::kBytes);
  forward_kernel<Cfg><<<grid_of(blocks * a.splits), kThreads, Cfg::kBytes, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (a.splits > 1) {
    combine_splits_kernel<T, acc_t>
        <<<grid_of(ceil_div<int64_t>(rows, kWarps)), kThreads, 0, stream>>>(
            a.part_out, a.part_max, a.part_sum, rows, a.splits, s.value_dim, a.out, a.lse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void forward_cuda(const Operands& o, at::Tensor& output, at::Tensor& logsumexp) {
  const Shape& s = o.shape;
  check_head_dims("attention", s);
  const c10::cuda::CUDAGuard guard(o.q.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.q.scalar_type(),
                                  "fastdl_attention_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    with_head_dim(std::max(s.head_dim, s.value_dim), [&](auto head_dim) {
      if (s.group() * s.q_len <= kDecodeRows) {
        launch_forward<ForwardConfig<T, decltype(head_dim)::value, true>>(o, output, logsumexp);
      } else {
        launch_forward<ForwardConfig<T, decltype(head_dim)::value, false>>(o, output, logsumexp);
      }
    });
  });
}

template <typename T, int kHeadDim>
void launch_backward(const Operands& o, const at::Tensor& grad_output, const at::Tensor& output,
                     const at::Tensor& logsumexp, at::Tensor& grad_q, at::Tensor& grad_k,
                     at::Tensor& grad_v) {
  using acc_t = acc_type<T>;
  using KeyCfg = BackwardConfig<T, kHeadDim, true>;
  using QueryCfg = BackwardConfig<T, kHeadDim, false>;
  const Shape& s = o.shape;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = s.batch * s.q_heads * s.q_len;
  at::Tensor delta = at::empty({rows}, logsumexp.options());
  softmax_delta_kernel<T><<<grid_of(ceil_div<int64_t>(rows, kWarps)), kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(grad_output.const_data_ptr()), Operands::strides_of(grad_output),
      reinterpret_cast<const T*>(output.const_data_ptr()), Operands::strides_of(output), s,
      delta.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const BackwardArgs<T> a{inputs_of<T>(o),
                          reinterpret_cast<const T*>(grad_output.const_data_ptr()),
                          Operands::strides_of(grad_output),
                          rows_vectorizable(grad_output),
                          logsumexp.const_data_ptr<acc_t>(),
                          delta.const_data_ptr<acc_t>(),
                          reinterpret_cast<T*>(grad_q.data_ptr()),
                          reinterpret_cast<T*>(grad_k.data_ptr()),
                          reinterpret_cast<T*>(grad_v.data_ptr())};
  const int64_t heads = s.batch * s.kv_heads;
  allow_shared_memory(backward_key_kernel<KeyCfg>, KeyCfg::kBytes);
  const int64_t key_tiles = ceil_div<int64_t>(s.kv_len, KeyCfg::kCols);
  backward_key_kernel<KeyCfg>
      <<<grid_of(heads * key_tiles), kThreads, KeyCfg::kBytes, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  allow_shared_memory(backward_query_kernel<QueryCfg>, QueryCfg::kBytes);
  const int64_t row_tiles = ceil_div<int64_t>(s.group() * s.q_len, QueryCfg::kRows);
  backward_query_kernel<QueryCfg>
      <<<grid_of(heads * row_tiles), kThreads, QueryCfg::kBytes, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void backward_cuda(const Operands& o, const at::Tensor& grad_output, const at::Tensor& output,
                   const at::Tensor& logsumexp, at::Tensor& grad_q, at::Tensor& grad_k,
                   at::Tensor& grad_v) {
  const Shape& s = o.shape;
  check_head_dims("attention_backward", s);
  const c10::cuda::CUDAGuard guard(o.q.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.q.scalar_type(),
                                  "fastdl_attention_backward_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    with_head_dim(std::max(s.head_dim, s.value_dim), [&](auto head_dim) {
      launch_backward<T, decltype(head_dim)::value>(o, grad_output, output, logsumexp, grad_q,
                                                    grad_k, grad_v);
    });
  });
}

}  // namespace

constexpr DeviceKernels kCudaKernels{&forward_cuda, &backward_cuda};

}  // namespace fastdl::attention

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  fastdl::attention::register_ops<fastdl::attention::kCudaKernels>(m);
}
