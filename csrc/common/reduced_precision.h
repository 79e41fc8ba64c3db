// float16/bfloat16 on CPU: the ops run their float32 kernels on float32 copies, the
// results converted back (statistics and math in float32 either way).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastdl {

inline bool is_16bit_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// t as float32 if it is a 16-bit float, else t itself (undefined stays undefined).
inline at::Tensor widened_to_float32(const at::Tensor& t) {
  return t.defined() && is_16bit_float(t) ? t.to(at::kFloat) : t;
}

// What the float32/float64 CPU kernels read: widened_to_float32(t), contiguous.
inline at::Tensor widened_contiguous(const at::Tensor& t) {
  return widened_to_float32(t).contiguous();
}

// Whether a CPU kernel serves t's dtype itself (float32, float64), so a caller can run
// it in place on its own buffers; 16-bit floats go through the float32 copies.
inline bool cpu_kernel_dtype(const at::Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

}  // namespace fastdl
