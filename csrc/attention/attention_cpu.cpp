// CPU attention: K and V packed into 64-key tiles once per call (O(Nk * D), the size
// of K and V: never an (Nq, Nk) buffer), then the tiled kernels of
// attention_cpu_kernels.inc, per ISA. The forward runs in parallel over (batch, query
// head, 64-row query block); the backward over (batch, kv head), each task owning its
// grad_k / grad_v rows and its heads' grad_q rows, so nothing is shared and no atomics
// or reductions across threads are needed: results do not depend on the thread count.
// float16/bfloat16 run the float32 kernels on float32 copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_cpu_kernels.h"
#include "common/cpu_isa.h"
#include "common/reduced_precision.h"

namespace fastdl::attention {
namespace {

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

// Float copies of 16-bit operands, last dimension contiguous.
at::Tensor compute_copy(const at::Tensor& t) {
  return is_16bit_float(t) ? t.to(at::kFloat).contiguous() : t;
}

// src (B, Hkv, Nk, W), last dimension contiguous, as tiles of 64 keys, zero past Nk:
// transposed [tile][W][64] or as rows [tile][64][width_pad].
template <typename T>
at::Tensor pack_tiles(const at::Tensor& src, int64_t tiles, bool transposed, int64_t width_pad) {
  const int64_t heads = src.size(0) * src.size(1), keys = src.size(2), width = src.size(3);
  const int64_t tile_size = kBlockKeys * (transposed ? width : width_pad);
  at::Tensor packed = at::empty({heads * tiles * tile_size}, src.options());
  const T* in = src.const_data_ptr<T>();
  T* out = packed.data_ptr<T>();
  const int64_t sb = src.stride(0), sh = src.stride(1), sr = src.stride(2);
  at::parallel_for(0, heads * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t bh = index / tiles, j0 = (index % tiles) * kBlockKeys;
      const T* rows = in + (bh / src.size(1)) * sb + (bh % src.size(1)) * sh;
      T* tile = out + index * tile_size;
      std::fill(tile, tile + tile_size, T(0));
      for (int64_t j = 0; j < std::min(kBlockKeys, keys - j0); ++j) {
        const T* row = rows + (j0 + j) * sr;
        if (transposed) {
          for (int64_t c = 0; c < width; ++c) tile[c * kBlockKeys + j] = row[c];
        } else {
          std::copy(row, row + width, tile + j * width_pad);
        }
      }
    }
  });
  return packed;
}

template <typename T>
CpuProblem<T> make_problem(const Operands& o, const at::Tensor& q, const at::Tensor& mask) {
  const Shape& s = o.shape;
  CpuProblem<T> p{};
  p.shape = s;
  p.tiles = (s.kv_len + kBlockKeys - 1) / kBlockKeys;
  p.d_pad = round_up(s.head_dim, kRowPad);
  p.dv_pad = round_up(s.value_dim, kRowPad);
  p.causal = o.options.causal;
  p.scale = static_cast<T>(o.options.scale);
  p.dropout = o.options.dropout_p > 0;
  p.seed = static_cast<uint64_t>(o.options.seed);
  p.drop_threshold = dropout_threshold(o.options.dropout_p);
  p.keep_scale = static_cast<T>(1.0 / (1.0 - o.options.dropout_p));
  p.q = q.const_data_ptr<T>();
  p.q_strides = Operands::strides_of(q);
  if (mask.defined()) {
    p.mask = mask.const_data_ptr<T>();
    p.mask_strides = o.mask_strides;
  }
  return p;
}

// The operands in the compute dtype (mask already is).
struct ComputeOperands {
  at::Tensor q, k, v;
  explicit ComputeOperands(const Operands& o)
      : q(compute_copy(o.q)), k(compute_copy(o.k)), v(compute_copy(o.v)) {}
};

// Decode: tasks of up to 4 query rows of one kv head's group, K and V read in place.
template <typename T>
void decode_forward(CpuProblem<T>& p, const at::Tensor& k, const at::Tensor& v) {
  const Shape& s = p.shape;
  p.k = k.const_data_ptr<T>();
  p.v = v.const_data_ptr<T>();
  p.k_strides = Operands::strides_of(k);
  p.v_strides = Operands::strides_of(v);
  const int64_t group_rows = s.group() * s.q_len;
  const int64_t chunks = (group_rows + kDecodeMaxRows - 1) / kDecodeMaxRows;
  with_kernels<T>([&](auto kernels) {
    at::parallel_for(0, s.batch * s.kv_heads * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(decode_scratch_size(s));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / chunks, first = (task % chunks) * kDecodeMaxRows;
        const int64_t kv_head = bh % s.kv_heads;
        int64_t heads[kDecodeMaxRows], rows[kDecodeMaxRows];
        const int64_t count = std::min(kDecodeMaxRows, group_rows - first);
        for (int64_t r = 0; r < count; ++r) {
          heads[r] = kv_head * s.group() + (first + r) / s.q_len;
          rows[r] = (first + r) % s.q_len;
        }
        kernels.decode_rows(p, bh / s.kv_heads, kv_head, heads, rows, count, scratch.data());
      }
    });
  });
}

// Tiled: K and V packed, tasks of 64 query rows.
template <typename T>
void tiled_forward(CpuProblem<T>& p, const at::Tensor& k, const at::Tensor& v) {
  const Shape& s = p.shape;
  const at::Tensor keys_t = pack_tiles<T>(k, p.tiles, true, 0);
  const at::Tensor values = pack_tiles<T>(v, p.tiles, false, p.dv_pad);
  p.keys_t = keys_t.const_data_ptr<T>();
  p.values = values.const_data_ptr<T>();
  const int64_t blocks = (s.q_len + kBlockRows - 1) / kBlockRows;
  with_kernels<T>([&](auto kernels) {
    at::parallel_for(0, s.batch * s.q_heads * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(forward_scratch_size(p.dv_pad));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / blocks;
        kernels.forward_block(p, bh / s.q_heads, bh % s.q_heads, task % blocks, scratch.data());
      }
    });
  });
}

void forward_cpu(const Operands& o, at::Tensor& output, at::Tensor& logsumexp) {
  const ComputeOperands c(o);
  at::Tensor out = c.q.scalar_type() == output.scalar_type() ? output : at::empty_like(output, c.q.options());
  AT_DISPATCH_FLOATING_TYPES(c.q.scalar_type(), "fastdl_attention", [&] {
    CpuProblem<scalar_t> p = make_problem<scalar_t>(o, c.q, o.mask);
    p.output = out.data_ptr<scalar_t>();
    p.logsumexp = logsumexp.data_ptr<scalar_t>();
    if (use_decode_path(o.shape)) {
      decode_forward<scalar_t>(p, c.k, c.v);
    } else {
      tiled_forward<scalar_t>(p, c.k, c.v);
    }
  });
  if (!out.is_same(output)) output.copy_(out);
}

// Rows [0, rows) x columns [0, width) of a (rows_pad, width_pad) accumulator into dst.
template <typename T>
void copy_rows(const T* acc, int64_t rows, int64_t width, int64_t width_pad, T* dst) {
  for (int64_t r = 0; r < rows; ++r) std::copy(acc + r * width_pad, acc + r * width_pad + width, dst + r * width);
}

void backward_cpu(const Operands& o, const at::Tensor& grad_output, const at::Tensor& output,
                  const at::Tensor& logsumexp, at::Tensor& grad_q, at::Tensor& grad_k,
                  at::Tensor& grad_v) {
  const ComputeOperands c(o);
  const at::Tensor grad_out = compute_copy(grad_output), out = compute_copy(output);
  const bool widened = c.q.scalar_type() != grad_q.scalar_type();
  at::Tensor gq = widened ? at::empty(grad_q.sizes(), c.q.options()) : grad_q;
  at::Tensor gk = widened ? at::empty(grad_k.sizes(), c.q.options()) : grad_k;
  at::Tensor gv = widened ? at::empty(grad_v.sizes(), c.q.options()) : grad_v;
  AT_DISPATCH_FLOATING_TYPES(c.q.scalar_type(), "fastdl_attention_backward", [&] {
    CpuProblem<scalar_t> p = make_problem<scalar_t>(o, c.q, o.mask);
    const at::Tensor keys_t = pack_tiles<scalar_t>(c.k, p.tiles, true, 0);
    const at::Tensor keys = pack_tiles<scalar_t>(c.k, p.tiles, false, p.d_pad);
    const at::Tensor values_t = pack_tiles<scalar_t>(c.v, p.tiles, true, 0);
    p.keys_t = keys_t.const_data_ptr<scalar_t>();
    p.keys = keys.const_data_ptr<scalar_t>();
    p.values_t = values_t.const_data_ptr<scalar_t>();
    p.grad_output = grad_out.const_data_ptr<scalar_t>();
    p.grad_output_strides = Operands::strides_of(grad_out);
    p.forward_output = out.const_data_ptr<scalar_t>();
    p.forward_output_strides = Operands::strides_of(out);
    p.saved_logsumexp = logsumexp.const_data_ptr<scalar_t>();
    p.grad_q = gq.data_ptr<scalar_t>();
    const Shape& s = o.shape;
    const int64_t key_rows = p.tiles * kBlockKeys;
    with_kernels<scalar_t>([&](auto kernels) {
      at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(backward_scratch_size(p.d_pad, p.dv_pad));
        std::vector<scalar_t> acc_k(key_rows * p.d_pad), acc_v(key_rows * p.dv_pad);
        for (int64_t task = begin; task < end; ++task) {
          std::fill(acc_k.begin(), acc_k.end(), scalar_t(0));
          std::fill(acc_v.begin(), acc_v.end(), scalar_t(0));
          kernels.backward_kv_head(p, task / s.kv_heads, task % s.kv_heads, scratch.data(),
                                   acc_k.data(), acc_v.data());
          copy_rows(acc_k.data(), s.kv_len, s.head_dim, p.d_pad,
                    gk.data_ptr<scalar_t>() + task * s.kv_len * s.head_dim);
          copy_rows(acc_v.data(), s.kv_len, s.value_dim, p.dv_pad,
                    gv.data_ptr<scalar_t>() + task * s.kv_len * s.value_dim);
        }
      });
    });
  });
  if (widened) {
    grad_q.copy_(gq);
    grad_k.copy_(gk);
    grad_v.copy_(gv);
  }
}

const DeviceKernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace
}  // namespace fastdl::attention

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  fastdl::attention::register_ops<fastdl::attention::kCpuKernels>(m);
}
