// Schemas, argument checks and the shared front end of the attention ops (see
// attention.h). Kernels: attention_cpu.cpp, attention_cuda.cu. Python API, fake
// kernels and autograd: fastdl/ops/attention.py.
#include "attention/attention.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "common/first_order.h"

namespace fastdl::attention {
namespace {

constexpr std::initializer_list<c10::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf,
                                                            at::kBFloat16};

at::ScalarType stats_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_operand(const char* op, const char* arg, const at::Tensor& t, const char* pattern,
                   const at::Tensor& q) {
  TORCH_CHECK_VALUE(t.dim() == 4, "fastdl.", op, ": ", arg, " must have shape ", pattern,
                    ", got ", format_shape(t.sizes()));
  check_dtype(op, arg, t, kDtypes);
  if (&t != &q) {
    check_same_dtype(op, "query", q, arg, t);
    check_same_device(op, "query", q, arg, t);
  }
}

Shape check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_operand(op, "query", q, "(B, Hq, Nq, D)", q);
  check_operand(op, "key", k, "(B, Hkv, Nk, D)", q);
  check_operand(op, "value", v, "(B, Hkv, Nk, Dv)", q);
  const Shape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  TORCH_CHECK_VALUE(k.size(0) == s.batch && v.size(0) == s.batch, "fastdl.", op,
                    ": query, key and value must have the same batch size, got ",
                    format_shape(q.sizes()), ", ", format_shape(k.sizes()), " and ",
                    format_shape(v.sizes()));
  TORCH_CHECK_VALUE(k.size(3) == s.head_dim, "fastdl.", op,
                    ": key must have query's head dimension D = ", s.head_dim, ", got ",
                    format_shape(k.sizes()));
  TORCH_CHECK_VALUE(v.size(1) == s.kv_heads && v.size(2) == s.kv_len, "fastdl.", op,
                    ": value must have key's heads and length (B, ", s.kv_heads, ", ", s.kv_len,
                    ", Dv), got ", format_shape(v.sizes()));
  TORCH_CHECK_VALUE(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0, "fastdl.", op,
                    ": query's heads must be a multiple of key's heads (grouped-query "
                    "attention), got ", s.q_heads, " and ", s.kv_heads);
  TORCH_CHECK_VALUE(s.head_dim > 0 && s.value_dim > 0, "fastdl.", op,
                    ": head dimensions must be at least 1, got D = ", s.head_dim,
                    " and Dv = ", s.value_dim);
  return s;
}

void check_options(const char* op, double scale, double dropout_p) {
  TORCH_CHECK_VALUE(std::isfinite(scale), "fastdl.", op, ": scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(dropout_p >= 0 && dropout_p < 1, "fastdl.", op,
                    ": dropout_p must be in [0, 1), got ", dropout_p);
}

// The mask as the kernels read it: additive, in the statistics dtype, expanded (as a
// view) to (B, Hq, Nq, Nk).
at::Tensor prepare_mask(const char* op, const at::Tensor& mask, const at::Tensor& q,
                        const Shape& s) {
  const bool boolean = mask.scalar_type() == at::kBool;
  TORCH_CHECK_TYPE(boolean || mask.scalar_type() == q.scalar_type(), "fastdl.", op,
                   ": attn_mask must be torch.bool or query's dtype ",
                   format_dtype(q.scalar_type()), ", got ", format_dtype(mask.scalar_type()));
  check_same_device(op, "query", q, "attn_mask", mask);
  const std::vector<int64_t> full{s.batch, s.q_heads, s.q_len, s.kv_len};
  bool broadcastable = mask.dim() <= 4;
  for (int64_t d = 0; broadcastable && d < mask.dim(); ++d) {
    const int64_t size = mask.size(mask.dim() - 1 - d);
    broadcastable = size == 1 || size == full[3 - d];
  }
  TORCH_CHECK_VALUE(broadcastable, "fastdl.", op, ": attn_mask must broadcast to (B, Hq, Nq, Nk) = ",
                    format_shape(full), ", got ", format_shape(mask.sizes()));
  at::Tensor additive;
  const auto type = stats_dtype(q);
  if (boolean) {
    // True = attend (SDPA's convention). Same shape as given: never expanded in memory.
    additive = at::zeros(mask.sizes(), mask.options().dtype(type))
                   .masked_fill_(mask.logical_not(), -std::numeric_limits<double>::infinity());
  } else {
    additive = mask.to(type);
  }
  return additive.expand(full);
}

// last dimension contiguous (the kernels' one layout requirement).
at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

Operands operands(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& attn_mask, bool is_causal, double scale,
                  double dropout_p, int64_t seed) {
  Operands o;
  o.shape = check_qkv(op, q, k, v);
  check_options(op, scale, dropout_p);
  o.options = {is_causal, scale, dropout_p, seed};
  o.q = rows_contiguous(q);
  o.k = rows_contiguous(k);
  o.v = rows_contiguous(v);
  if (attn_mask) {
    o.mask = prepare_mask(op, *attn_mask, q, o.shape);
    o.mask_strides = {o.mask.stride(0), o.mask.stride(1), o.mask.stride(2), o.mask.stride(3)};
  }
  return o;
}

// Nothing to compute; with no keys at all, every row is fully masked: output 0,
// logsumexp -inf, gradients 0 (the outputs' initial values below).
bool empty_problem(const Shape& s) {
  return s.batch == 0 || s.q_heads == 0 || s.q_len == 0 || s.kv_len == 0;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_op(const DeviceKernels& kernels, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v,
                                              const std::optional<at::Tensor>& attn_mask,
                                              bool is_causal, double scale, double dropout_p,
                                              int64_t seed) {
  const Operands o = operands("attention", q, k, v, attn_mask, is_causal, scale, dropout_p, seed);
  const Shape& s = o.shape;
  const auto stats = q.options().dtype(stats_dtype(q));
  if (empty_problem(s)) {
    return {at::zeros({s.batch, s.q_heads, s.q_len, s.value_dim}, q.options()),
            at::full({s.batch, s.q_heads, s.q_len}, -std::numeric_limits<double>::infinity(),
                     stats)};
  }
  at::Tensor output = at::empty({s.batch, s.q_heads, s.q_len, s.value_dim}, q.options());
  at::Tensor logsumexp = at::empty({s.batch, s.q_heads, s.q_len}, stats);
  kernels.forward(o, output, logsumexp);
  return {output, logsumexp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(
    const DeviceKernels& kernels, const at::Tensor& grad_output, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& output,
    const at::Tensor& logsumexp, const std::optional<at::Tensor>& attn_mask, bool is_causal,
    double scale, double dropout_p, int64_t seed) {
  const char* op = "attention_backward";
  const Operands o = operands(op, q, k, v, attn_mask, is_causal, scale, dropout_p, seed);
  const Shape& s = o.shape;
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_output", &grad_output},
                         {"output", &output}}) {
    check_shape(op, name, *t, {s.batch, s.q_heads, s.q_len, s.value_dim},
                "(B, Hq, Nq, Dv) of the forward output");
    check_same_dtype(op, "query", q, name, *t);
    check_same_device(op, "query", q, name, *t);
  }
  check_shape(op, "logsumexp", logsumexp, {s.batch, s.q_heads, s.q_len},
              "(B, Hq, Nq) of the forward");
  TORCH_CHECK_TYPE(logsumexp.scalar_type() == stats_dtype(q), "fastdl.", op,
                   ": logsumexp must be ", format_dtype(stats_dtype(q)), " for query of dtype ",
                   format_dtype(q.scalar_type()), ", got ", format_dtype(logsumexp.scalar_type()));
  check_same_device(op, "query", q, "logsumexp", logsumexp);
  if (empty_problem(s)) {
    return {at::zeros(q.sizes(), q.options()), at::zeros(k.sizes(), k.options()),
            at::zeros(v.sizes(), v.options())};
  }
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::zeros(k.sizes(), k.options());
  at::Tensor grad_v = at::zeros(v.sizes(), v.options());
  kernels.backward(o, rows_contiguous(grad_output), rows_contiguous(output),
                   logsumexp.contiguous(), grad_q, grad_k, grad_v);
  return {grad_q, grad_k, grad_v};
}

}  // namespace fastdl::attention

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // (output, logsumexp) of softmax(scale * q k^T + attn_mask) v; see attention.h.
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, bool is_causal, float scale, "
      "float dropout_p, int seed) -> (Tensor output, Tensor logsumexp)");
  // (grad_q, grad_k, grad_v), recomputing the attention weights from logsumexp.
  m.def(
      "attention_backward(Tensor grad_output, Tensor q, Tensor k, Tensor v, Tensor output, "
      "Tensor logsumexp, Tensor? attn_mask, bool is_causal, float scale, float dropout_p, "
      "int seed) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "attention_backward");
}
