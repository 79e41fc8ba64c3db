// Fused scaled dot-product attention (the semantics of
// F.scaled_dot_product_attention): for q (B, Hq, Nq, D), k (B, Hkv, Nk, D),
// v (B, Hkv, Nk, Dv), q head h reads kv head h / (Hq / Hkv) (grouped-query attention),
//   S = scale * q k^T + mask,  P = softmax(S) over keys,  out = dropout(P) v.
// The forward saves the log-sum-exp of each row of S (float32, float64 for float64
// inputs) instead of P; the backward recomputes P tile by tile (FlashAttention-2), so
// no (Nq, Nk) buffer exists anywhere. Rows whose every key is masked give 0 and a
// log-sum-exp of -inf, as PyTorch's SDPA.
//
// The shared front end (attention.cpp) checks the arguments, gives the kernels
// operands whose last dimension is contiguous (other strides are free: KV-cache views
// need no copy), turns a boolean mask into an additive one of the same (unexpanded)
// shape, and allocates the outputs; each device supplies DeviceKernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/host_device.h"

namespace fastdl::attention {

// Sizes of one call.
struct Shape {
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
  FASTDL_HOST_DEVICE int64_t group() const { return q_heads / kv_heads; }
};

// Element strides of a 4-d operand whose last dimension is contiguous.
struct Strides {
  int64_t batch, head, row;
};

// The options every kernel honours. scale multiplies q k^T; dropout_p is the
// probability of dropping a (query, key) weight; seed picks the dropout pattern.
struct Options {
  bool causal;
  double scale;
  double dropout_p;
  int64_t seed;
};

// The additive mask viewed as (B, Hq, Nq, Nk): 0 strides on broadcast dimensions.
struct MaskStrides {
  int64_t batch, head, q, k;
};

// Causal attention is top-left aligned, as SDPA's is_causal: query row i sees keys
// j <= i (torch.ones(Nq, Nk).tril()). The keys row i may read end here.
FASTDL_HOST_DEVICE int64_t causal_key_end(int64_t q_row, int64_t kv_len) {
  return q_row + 1 < kv_len ? q_row + 1 : kv_len;
}

// Dropout: weight (b, h, i, j) is kept when a counter-based hash of its linear index
// (((b * Hq + h) * Nq + i) * Nk + j) and the seed clears the threshold. CPU and CUDA
// compute the same pattern, the backward regenerates it instead of storing it, and
// a fixed seed gives a deterministic op (gradcheck works with dropout on).
// splitmix64's finaliser: cheap, and every output bit depends on every input bit.
FASTDL_HOST_DEVICE uint64_t dropout_hash(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The hash's top 24 bits are compared with round(p * 2^24): p is honoured to 3e-8.
constexpr int kDropoutBits = 24;
FASTDL_HOST_DEVICE uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(p * double(1u << kDropoutBits) + 0.5);
}
FASTDL_HOST_DEVICE bool dropout_keep(uint64_t seed, uint64_t index, uint32_t threshold) {
  return static_cast<uint32_t>(dropout_hash(seed, index) >> (64 - kDropoutBits)) >= threshold;
}

// The operands of one call as the kernels read them (see the top of this file).
struct Operands {
  Shape shape;
  Options options;
  at::Tensor q, k, v;
  // Undefined, or additive: float64 for float64 q, else float32 (a boolean mask
  // becomes 0 / -inf), read at batch * mask_strides.batch + ... + key * mask_strides.k.
  at::Tensor mask;
  MaskStrides mask_strides;
  static Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }
};

// output (B, Hq, Nq, Dv) and logsumexp (B, Hq, Nq) are contiguous, in q's dtype and
// in float32 (float64 for float64 q); grad_output and output arrive with a contiguous
// last dimension; grad_q, grad_k, grad_v are contiguous, shaped and typed as q, k, v,
// grad_k and grad_v zeroed (the CUDA kernels accumulate into them; the CPU ones
// overwrite them), grad_q uninitialised. The backward computes its softmax
// correction rowsum(grad_output * output) itself. Kernels run only for non-empty
// problems (B, Hq, Nq, Nk all > 0); the front end fills the empty ones.
struct DeviceKernels {
  void (*forward)(const Operands& o, at::Tensor& output, at::Tensor& logsumexp);
  void (*backward)(const Operands& o, const at::Tensor& grad_output, const at::Tensor& output,
                   const at::Tensor& logsumexp, at::Tensor& grad_q, at::Tensor& grad_k,
                   at::Tensor& grad_v);
};

std::tuple<at::Tensor, at::Tensor> forward_op(const DeviceKernels& kernels, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v,
                                              const std::optional<at::Tensor>& attn_mask,
                                              bool is_causal, double scale, double dropout_p,
                                              int64_t seed);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(
    const DeviceKernels& kernels, const at::Tensor& grad_output, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& output,
    const at::Tensor& logsumexp, const std::optional<at::Tensor>& attn_mask, bool is_causal,
    double scale, double dropout_p, int64_t seed);

// m.impl of both ops with kernels K (an object with static storage).
template <const DeviceKernels& K>
void register_ops(torch::Library& m) {
  m.impl("attention", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& attn_mask, bool is_causal,
                         double scale, double dropout_p, int64_t seed) {
    return forward_op(K, q, k, v, attn_mask, is_causal, scale, dropout_p, seed);
  });
  m.impl("attention_backward",
         [](const at::Tensor& grad_output, const at::Tensor& q, const at::Tensor& k,
            const at::Tensor& v, const at::Tensor& output, const at::Tensor& logsumexp,
            const std::optional<at::Tensor>& attn_mask, bool is_causal, double scale,
            double dropout_p, int64_t seed) {
           return backward_op(K, grad_output, q, k, v, output, logsumexp, attn_mask, is_causal,
                              scale, dropout_p, seed);
         });
}

}  // namespace fastdl::attention
