// Shared pieces of the depthwise convolution ops: the geometry of one call and
// the argument checks. Output channel oc reads input channel oc / multiplier.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "common/conv_shape.h"
#include "common/host_device.h"

namespace fastdl::depthwise {

struct Geometry {
  int64_t batch, channels, multiplier;  // out_channels = channels * multiplier
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  FASTDL_HOST_DEVICE int64_t out_channels() const { return channels * multiplier; }
};

// Checks input (N, C, H, W), weight (C * m, 1, kH, kW), optional bias (C * m,),
// stride/padding/dilation (2 values each, stride and dilation >= 1, padding >= 0),
// dtypes and devices, and that the output is not empty; returns the geometry.
Geometry check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor* bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation);

// The same for the backward op, plus grad_output's shape against the geometry.
Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation);

// Layout the output takes: PyTorch's rule (common/conv_layout.h).
at::MemoryFormat output_format(const at::Tensor& input, const at::Tensor& weight);
bool use_channels_last(const at::Tensor& input, const at::Tensor& weight);

// The backward op's outputs that output_mask asks for (undefined otherwise):
// grad_input uninitialised in the output's layout, grad_weight and grad_bias zeroed.
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_grads(const Geometry& g,
                                                              const at::Tensor& input,
                                                              const at::Tensor& weight,
                                                              std::array<bool, 3> output_mask);

}  // namespace fastdl::depthwise
