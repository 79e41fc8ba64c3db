// The CPU attention kernels, compiled once per ISA (attention_cpu_{scalar,avx2,avx512}.cpp
// include attention_cpu_kernels.inc under that ISA's target) and chosen at run time by
// attention_cpu.cpp, which packs K and V into key tiles, owns the parallel loops and
// the scratch buffers, and handles dtypes.
#pragma once

#include <cstdint>

#include "attention/attention.h"
#include "common/int_math.h"

namespace fastdl::attention {

// Keys per tile and query rows per block: a tile's scores (64 x 64) and a block's
// accumulators stay in L1/L2 while the block sweeps the keys.
constexpr int64_t kBlockKeys = 64;
constexpr int64_t kBlockRows = 64;
// Rows of the packed operands are padded to this many values (a multiple of every
// ISA's vector width), so the kernels never need partial vectors.
constexpr int64_t kRowPad = 16;

// One call as the kernels see it: plain pointers, compute dtype T (float or double).
// Packed per (batch, kv head), tile t of key rows [64 t, 64 t + 64), zero past Nk:
//   keys_t   [tiles][D][64]   k transposed (the scores' right operand)
//   values   [tiles][64][Dvp] v rows, Dv padded to Dvp (forward: P v)
//   keys     [tiles][64][Dp]  k rows, D padded to Dp (backward: dS k)
//   values_t [tiles][Dv][64]  v transposed (backward: dO v^T)
template <typename T>
struct CpuProblem {
  Shape shape;
  int64_t tiles, d_pad, dv_pad;
  bool causal;
  T scale;
  bool dropout;
  uint64_t seed;
  uint32_t drop_threshold;
  T keep_scale;  // 1 / (1 - dropout_p)
  const T *q, *k, *v;  // k and v: read in place by the decode path only
  Strides q_strides, k_strides, v_strides;
  const T* mask;  // additive, or null
  MaskStrides mask_strides;
  const T *keys_t, *values, *keys, *values_t;
  // Forward: output (B, Hq, Nq, Dv) and logsumexp (B, Hq, Nq), contiguous.
  T* output;
  T* logsumexp;
  // Backward: grad_output and output with these strides; logsumexp contiguous;
  // grad_q contiguous.
  const T* grad_output;
  Strides grad_output_strides;
  const T* forward_output;
  Strides forward_output_strides;
  const T* saved_logsumexp;
  T* grad_q;

  // Offset of (batch, kv head)'s packed tiles, in tiles.
  int64_t first_tile(int64_t b, int64_t kv_head) const {
    return (b * shape.kv_heads + kv_head) * tiles;
  }
};

// The decode path (decode_rows: query rows read K and V in place, no packing) serves
// calls with at most this many query rows per head, and head dimensions that are
// whole multiples of every vector width.
constexpr int64_t kDecodeMaxRows = 4;
inline bool use_decode_path(const Shape& s) {
  return s.q_len <= kDecodeMaxRows && s.head_dim % kRowPad == 0 && s.value_dim % kRowPad == 0;
}

// Scratch values a thread needs for forward_block / backward_kv_head / decode_rows.
inline int64_t forward_scratch_size(int64_t dv_pad) {
  return kBlockRows * kBlockKeys + kBlockRows * dv_pad + 2 * kBlockRows;
}
inline int64_t decode_scratch_size(const Shape& s) {
  return kDecodeMaxRows * (s.kv_len + s.value_dim);
}
inline int64_t backward_scratch_size(int64_t d_pad, int64_t dv_pad) {
  return 3 * kBlockRows * kBlockKeys + 2 * kBlockRows * d_pad + kBlockRows * dv_pad +
         2 * kBlockRows;
}

// forward_block: rows [64 q_block, +64) of query head h of batch b: output and
// logsumexp rows. backward_kv_head: every query head of kv head `kv_head`'s group:
// their grad_q rows, and the whole (Nk, Dp) / (Nk, Dvp) accumulators of grad_k /
// grad_v (zeroed by the caller, 64-row aligned to tiles). decode_rows: output and
// logsumexp of `rows` <= 4 query rows (heads[r], q_rows[r]) of kv head `kv_head`'s group.
#define FASTDL_ATTENTION_KERNEL_LIST(T)                                                     \
  static void forward_block(const CpuProblem<T>& p, int64_t b, int64_t h, int64_t q_block, \
                            T* scratch);                                                   \
  static void backward_kv_head(const CpuProblem<T>& p, int64_t b, int64_t kv_head,         \
                               T* scratch, T* grad_k, T* grad_v);                          \
  static void decode_rows(const CpuProblem<T>& p, int64_t b, int64_t kv_head,              \
                          const int64_t* heads, const int64_t* q_rows, int64_t rows,       \
                          T* scratch);

struct ScalarKernels {
  FASTDL_ATTENTION_KERNEL_LIST(float)
  FASTDL_ATTENTION_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_ATTENTION_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_ATTENTION_KERNEL_LIST(float)
};

#define FASTDL_ATTENTION_DEFINE_KERNELS(Set, impl, T)                                       \
  void Set::forward_block(const CpuProblem<T>& p, int64_t b, int64_t h, int64_t q_block,   \
                          T* scratch) {                                                    \
    impl::forward_block<T>(p, b, h, q_block, scratch);                                     \
  }                                                                                        \
  void Set::backward_kv_head(const CpuProblem<T>& p, int64_t b, int64_t kv_head,           \
                             T* scratch, T* grad_k, T* grad_v) {                           \
    impl::backward_kv_head<T>(p, b, kv_head, scratch, grad_k, grad_v);                     \
  }                                                                                        \
  void Set::decode_rows(const CpuProblem<T>& p, int64_t b, int64_t kv_head,                \
                        const int64_t* heads, const int64_t* q_rows, int64_t rows,         \
                        T* scratch) {                                                      \
    impl::decode_rows<T>(p, b, kv_head, heads, q_rows, rows, scratch,                      \
                         scratch + kDecodeMaxRows * p.shape.kv_len);                       \
  }

}  // namespace fastdl::attention
