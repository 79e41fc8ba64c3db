// Schemas and argument checks of the depthwise convolution ops. Kernels:
// depthwise_conv2d_cpu.cpp, depthwise_conv2d_cuda.cu. Python API, fake kernels and
// autograd: fastdl/ops/depthwise_conv2d.py.
#include "depthwise/depthwise_conv2d.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/conv_layout.h"

namespace fastdl::depthwise {
Geometry check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor* bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  check_shape(op, "input", input, {-1, -1, -1, -1}, "(N, C, H, W)");
  check_shape(op, "weight", weight, {-1, 1, -1, -1}, "(C * multiplier, 1, kH, kW)");
  TORCH_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, "fastdl.", op,
                    ": input must have a non-empty image, got ", format_shape(input.sizes()));
  const int64_t channels = input.size(1);
  TORCH_CHECK_VALUE(channels > 0, "fastdl.", op, ": input must have at least one channel, got ",
                    format_shape(input.sizes()));
  TORCH_CHECK_VALUE(weight.size(0) > 0 && weight.size(0) % channels == 0, "fastdl.", op,
                    ": weight must have shape (C * multiplier, 1, kH, kW) with C = ", channels,
                    " input channels, got ", format_shape(weight.sizes()));
  TORCH_CHECK_VALUE(weight.size(2) > 0 && weight.size(3) > 0, "fastdl.", op,
                    ": weight's kernel size must be at least 1x1, got ",
                    format_shape(weight.sizes()));
  check_same_dtype(op, "input", input, "weight", weight);
  check_same_device(op, "input", input, "weight", weight);
  if (bias != nullptr) {
    check_shape(op, "bias", *bias, {weight.size(0)}, "(C * multiplier,)");
    check_same_dtype(op, "input", input, "bias", *bias);
    check_same_device(op, "input", input, "bias", *bias);
  }
  check_conv_pair(op, "stride", stride, 1);
  check_conv_pair(op, "padding", padding, 0);
  check_conv_pair(op, "dilation", dilation, 1);

  Geometry g{};
  g.batch = input.size(0);
  g.channels = channels;
  g.multiplier = weight.size(0) / channels;
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  const auto out_size = conv2d_output_size(op, g.in_h, g.in_w, g.kernel_h, g.kernel_w, stride,
                                           padding, dilation);
  g.out_h = out_size[0];
  g.out_w = out_size[1];
  return g;
}

Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d_backward";
  Geometry g = check_forward_args(op, input, weight, nullptr, stride, padding, dilation);
  check_shape(op, "grad_output", grad_output, {g.batch, g.out_channels(), g.out_h, g.out_w},
              "(N, C * multiplier, out_H, out_W) of the forward output");
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  return g;
}

at::MemoryFormat output_format(const at::Tensor& input, const at::Tensor& weight) {
  return conv_memory_format(input, weight);
}

bool use_channels_last(const at::Tensor& input, const at::Tensor& weight) {
  return output_format(input, weight) == at::MemoryFormat::ChannelsLast;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_grads(const Geometry& g,
                                                              const at::Tensor& input,
                                                              const at::Tensor& weight,
                                                              std::array<bool, 3> output_mask) {
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0])
    grad_input = at::empty(input.sizes(), input.options(), output_format(input, weight));
  if (output_mask[1]) grad_weight = at::zeros(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::zeros({g.out_channels()}, weight.options());
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace fastdl::depthwise

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "depthwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
