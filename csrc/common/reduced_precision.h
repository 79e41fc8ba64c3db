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

}  // namespace fastdl
