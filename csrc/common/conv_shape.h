// Output-size arithmetic and argument checks shared by the convolution ops.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>

#include "common/checks.h"
#include "common/host_device.h"

namespace fastdl {

// Output length of a convolution along one dimension (PyTorch's formula).
FASTDL_HOST_DEVICE int64_t conv_output_size(int64_t input, int64_t kernel, int64_t stride,
                                            int64_t padding, int64_t dilation) {
  return (input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

// The output position o whose tap k reads input position i (the transposed
// convolution's gather), if there is one: i + pad - k * dilation must be a
// non-negative multiple of the stride, and o inside the output.
FASTDL_HOST_DEVICE bool output_reading(int64_t i, int64_t k, int64_t stride, int64_t pad,
                                       int64_t dilation, int64_t out_size, int64_t& o) {
  const int64_t y = i + pad - k * dilation;
  if (y < 0 || y % stride != 0) return false;
  o = y / stride;
  return o < out_size;
}

#ifndef __CUDA_ARCH__
// stride / padding / dilation: exactly 2 values, each >= min.
inline void check_conv_pair(const char* op, const char* arg, c10::IntArrayRef values, int64_t min) {
  TORCH_CHECK_VALUE(values.size() == 2, "fastdl.", op, ": ", arg, " must have 2 values, got ",
                    values.size());
  TORCH_CHECK_VALUE(values[0] >= min && values[1] >= min, "fastdl.", op, ": ", arg,
                    " must be >= ", min, ", got ", format_shape(values));
}

// (out_h, out_w) of a 2-D convolution; a ValueError when the padded input is shorter
// than the dilated kernel (checked on the numerator, so rounding toward zero can't
// hide it).
inline std::array<int64_t, 2> conv2d_output_size(const char* op, int64_t in_h, int64_t in_w,
                                                 int64_t kernel_h, int64_t kernel_w,
                                                 c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                 c10::IntArrayRef dilation) {
  const int64_t span_h = in_h + 2 * padding[0] - dilation[0] * (kernel_h - 1);
  const int64_t span_w = in_w + 2 * padding[1] - dilation[1] * (kernel_w - 1);
  const int64_t out_h =
      span_h > 0 ? conv_output_size(in_h, kernel_h, stride[0], padding[0], dilation[0]) : 0;
  const int64_t out_w =
      span_w > 0 ? conv_output_size(in_w, kernel_w, stride[1], padding[1], dilation[1]) : 0;
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, "fastdl.", op, ": input of spatial size (", in_h,
                    ", ", in_w, ") with padding ", format_shape(padding),
                    " is too small for kernel (", kernel_h, ", ", kernel_w, ") with dilation ",
                    format_shape(dilation));
  return {out_h, out_w};
}
#endif

}  // namespace fastdl
