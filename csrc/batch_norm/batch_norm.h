// Fused batch norm: shared declarations of the schema file, the CPU and the CUDA
// kernels.
//
// Every op sees its input as (N, C, *) and works per channel c:
//   forward   z = x * scale[c] + shift[c] (+ residual),  y = act(z)
//             scale = weight / sqrt(var + eps),  shift = bias - mean * scale
//   backward  dz = grad_y * act'(z), with z recomputed from x (never stored)
//             sum_dz[c] = sum dz,  sum_dz_xmu[c] = sum dz * (x - mean[c])
//             grad_x = dz * a[c] + (x - mean[c]) * b[c] + c[c]      (BackwardCoefficients)
// Training needs two passes over the data in each direction (statistics, then the
// elementwise pass), evaluation one. Statistics are float32 for float32/16 and
// bfloat16 inputs, float64 for float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cmath>
#include <optional>
#include <string_view>

#include "common/host_device.h"

namespace fastdl::batch_norm {

enum class Activation : int { none = 0, relu = 1, relu6 = 2, silu = 3, leaky_relu = 4 };

// "none", "relu", "relu6", "silu" or "leaky_relu"; anything else is a ValueError.
Activation parse_activation(const char* op, std::string_view name);

// What every op needs besides the tensors it reads: the affine parameters (null
// means weight 1 and bias 0), the optional residual, eps and the activation.
struct Epilogue {
  std::optional<at::Tensor> weight, bias, residual;
  double eps;
  Activation activation;
  double negative_slope;
};

// How a kernel walks the data: `outer` x `channels` x `inner` with inner contiguous
// (NCHW-like, "planar"), or `outer` rows of `channels` contiguous values
// (channels last, inner == 1). Inputs are made dense in the chosen format first.
struct Layout {
  int64_t outer, channels, inner;
  bool channels_last;
  at::MemoryFormat format;  // input.suggest_memory_format(): the inputs' and outputs' format
  int64_t count_per_channel() const { return outer * inner; }
};

// Layout of `input`; a tensor of the input's shape dense in that layout (itself when
// it already is); a new tensor of that shape and layout.
Layout layout_of(const at::Tensor& input);
at::Tensor dense_in_layout(const at::Tensor& t, const Layout& layout);
at::Tensor empty_in_layout(const at::Tensor& like, const Layout& layout);

c10::ScalarType stats_dtype(c10::ScalarType input_dtype);

// Chan et al.'s merge of two sets' (count, mean, m2 = sum of squared deviations):
// numerically stable, so statistics can be summed in pieces and in any order.
template <typename T>
FASTDL_HOST_DEVICE void merge_moments(T& count, T& mean, T& m2, T other_count, T other_mean,
                                      T other_m2) {
  const T total = count + other_count;
  if (other_count == T(0)) return;
  const T delta = other_mean - mean;
  const T other_share = other_count / total;
  mean += delta * other_share;
  m2 += other_m2 + delta * delta * count * other_share;
  count = total;
}

// Per-channel forward coefficients (T = float or double).
template <typename T>
FASTDL_HOST_DEVICE void forward_coefficients(T mean, T var, T weight, T bias, T eps, T& scale,
                                             T& shift) {
  const T invstd = T(1) / std::sqrt(var + eps);
  scale = weight * invstd;
  shift = bias - mean * scale;
}

// grad_x = dz * a + (x - mean) * b + c. With batch statistics, mean_dz and
// mean_dz_xmu are the per-channel means of dz and dz * (x - mean); with fixed
// (running) statistics both are 0 and grad_x = dz * scale.
template <typename T>
FASTDL_HOST_DEVICE void backward_coefficients(T var, T weight, T eps, T mean_dz, T mean_dz_xmu,
                                              T& a, T& b, T& c) {
  const T invstd = T(1) / std::sqrt(var + eps);
  a = weight * invstd;
  b = -a * invstd * invstd * mean_dz_xmu;
  c = -a * mean_dz;
}

}  // namespace fastdl::batch_norm
