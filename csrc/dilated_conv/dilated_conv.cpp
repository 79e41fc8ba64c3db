// Schemas, argument checks and the shared front end of the dilated convolution ops
// (see dilated_conv.h). Kernels: dilated_conv_cpu.cpp, dilated_conv_cuda.cu. Python
// API, fake kernels and autograd: fastdl/ops/dilated_conv.py.
#include "dilated_conv/dilated_conv.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/checks.h"
#include "common/conv_layout.h"
#include "common/conv_shape.h"

namespace fastdl::dilated_conv {
namespace {

constexpr std::initializer_list<c10::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf,
                                                            at::kBFloat16};

// How the op was called: 2-D, or 1-D on (N, C, 1, L) views, whose messages must name
// the 1-D op, its arguments and the shapes the caller passed.
struct Call {
  const char* op;
  bool one_d;
  c10::IntArrayRef input_sizes, weight_sizes;
};

int64_t output_size(const Call& call, const char* dim, int64_t in, int64_t kernel,
                    int64_t stride, int64_t pad_begin, int64_t pad_end, int64_t dilation) {
  const int64_t span = in + pad_begin + pad_end - dilation * (kernel - 1);
  TORCH_CHECK_VALUE(span > 0, "fastdl.", call.op, ": input ", dim, " ", in, " with padding (",
                    pad_begin, ", ", pad_end, ") is too small for kernel size ", kernel,
                    " with dilation ", dilation);
  return (span - 1) / stride + 1;
}

Geometry check_args(const Call& call, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor* bias, c10::IntArrayRef stride,
                    c10::IntArrayRef padding_begin, c10::IntArrayRef padding_end,
                    c10::IntArrayRef dilation, int64_t groups) {
  const char* op = call.op;
  if (!call.one_d) {  // the 1-D ops check their ranks and scalar arguments themselves
    check_shape(op, "input", input, {-1, -1, -1, -1}, "(N, C, H, W)");
    check_shape(op, "weight", weight, {-1, -1, -1, -1}, "(out_channels, C / groups, kH, kW)");
  }
  check_dtype(op, "input", input, kDtypes);
  check_same_dtype(op, "input", input, "weight", weight);
  check_same_device(op, "input", input, "weight", weight);
  TORCH_CHECK_VALUE(groups >= 1, "fastdl.", op, ": groups must be >= 1, got ", groups);
  const int64_t channels = input.size(1), out_channels = weight.size(0);
  TORCH_CHECK_VALUE(channels > 0 && channels % groups == 0, "fastdl.", op,
                    ": input channels must be a positive multiple of groups = ", groups,
                    ", got ", channels);
  TORCH_CHECK_VALUE(out_channels > 0 && out_channels % groups == 0, "fastdl.", op,
                    ": weight's out_channels must be a positive multiple of groups = ", groups,
                    ", got ", format_shape(call.weight_sizes));
  TORCH_CHECK_VALUE(weight.size(1) == channels / groups, "fastdl.", op,
                    ": weight must have shape (out_channels, C / groups = ", channels / groups,
                    call.one_d ? ", k)" : ", kH, kW)", " for input ",
                    format_shape(call.input_sizes), " and groups ", groups, ", got ",
                    format_shape(call.weight_sizes));
  TORCH_CHECK_VALUE(weight.size(2) > 0 && weight.size(3) > 0, "fastdl.", op,
                    ": weight's kernel size must be at least 1, got ",
                    format_shape(call.weight_sizes));
  if (bias != nullptr) {
    check_shape(op, "bias", *bias, {out_channels}, "(out_channels,)");
    check_same_dtype(op, "input", input, "bias", *bias);
    check_same_device(op, "input", input, "bias", *bias);
  }
  check_conv_pair(op, "stride", stride, 1);
  check_conv_pair(op, "padding_begin", padding_begin, 0);
  check_conv_pair(op, "padding_end", padding_end, 0);
  check_conv_pair(op, "dilation", dilation, 1);
  Geometry g{};
  g.batch = input.size(0);
  g.in_channels = channels;
  g.out_channels = out_channels;
  g.groups = groups;
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.pad_top = padding_begin[0];
  g.pad_left = padding_begin[1];
  g.out_h = output_size(call, "height", g.in_h, g.kernel_h, g.stride_h, padding_begin[0],
                        padding_end[0], g.dilation_h);
  g.out_w = output_size(call, call.one_d ? "length" : "width", g.in_w, g.kernel_w, g.stride_w,
                        padding_begin[1], padding_end[1], g.dilation_w);
  return g;
}

// t (an output or an input gradient, NCHW from the kernels) in the layout PyTorch's
// convolution gives it (common/conv_layout.h).
at::Tensor in_conv_layout(const at::Tensor& t, const at::Tensor& input, const at::Tensor& weight) {
  return t.contiguous(conv_memory_format(input, weight));
}

// The kernels' outputs, NCHW (the callers pick the layout).
at::Tensor forward(const DeviceKernels& k, const Call& call, const at::Tensor& input,
                   const at::Tensor& weight, const OptionalTensor& bias, c10::IntArrayRef stride,
                   c10::IntArrayRef padding_begin, c10::IntArrayRef padding_end,
                   c10::IntArrayRef dilation, int64_t groups) {
  const Geometry g = check_args(call, input, weight, bias ? &*bias : nullptr, stride,
                                padding_begin, padding_end, dilation, groups);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (g.batch > 0) {
    k.forward(g, input.contiguous(), weight.contiguous(),
              bias ? bias->contiguous() : at::Tensor(), output);
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const DeviceKernels& k, const Call& call, const at::Tensor& grad_output,
    const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding_begin, c10::IntArrayRef padding_end, c10::IntArrayRef dilation,
    int64_t groups, std::array<bool, 3> output_mask) {
  const char* op = call.op;
  const Geometry g = check_args(call, input, weight, nullptr, stride, padding_begin, padding_end,
                                dilation, groups);
  check_shape(op, "grad_output", grad_output, {g.batch, g.out_channels, g.out_h, g.out_w},
              "(N, out_channels, out_H, out_W) of the forward output");
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  at::Tensor grad_input, grad_weight, grad_bias;
  const at::Tensor grad = grad_output.contiguous();
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options());
    // An empty input (rows or columns of 0, the output all padding) has nothing to fill:
    // the CUDA kernel would be launched on a grid of 0 blocks, an error.
    if (grad_input.numel() > 0) k.backward_input(g, grad, weight.contiguous(), grad_input);
  }
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({g.out_channels}, weight.options());
  if (output_mask[1] || output_mask[2]) {
    if (g.batch > 0) {
      k.backward_weight(g, grad, input.contiguous(), grad_weight, grad_bias);
    } else {
      if (grad_weight.defined()) grad_weight.zero_();
      if (grad_bias.defined()) grad_bias.zero_();
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

// 1-D tensors as (N, C, 1, L) views, 2-D results back as (N, C, L).
at::Tensor as_2d(const at::Tensor& t) { return t.defined() ? t.unsqueeze(2) : t; }
at::Tensor as_1d(const at::Tensor& t) { return t.defined() ? t.squeeze(2) : t; }

void check_1d(const char* op, const at::Tensor& input, const at::Tensor& weight, int64_t stride,
              int64_t padding_left, int64_t padding_right, int64_t dilation) {
  check_shape(op, "input", input, {-1, -1, -1}, "(N, C, L)");
  check_shape(op, "weight", weight, {-1, -1, -1}, "(out_channels, C / groups, k)");
  TORCH_CHECK_VALUE(stride >= 1, "fastdl.", op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(padding_left >= 0, "fastdl.", op, ": padding_left must be >= 0, got ",
                    padding_left);
  TORCH_CHECK_VALUE(padding_right >= 0, "fastdl.", op, ": padding_right must be >= 0, got ",
                    padding_right);
  TORCH_CHECK_VALUE(dilation >= 1, "fastdl.", op, ": dilation must be >= 1, got ", dilation);
}

}  // namespace

at::Tensor conv2d_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& weight,
                     const OptionalTensor& bias, c10::IntArrayRef stride,
                     c10::IntArrayRef padding_begin, c10::IntArrayRef padding_end,
                     c10::IntArrayRef dilation, int64_t groups) {
  const Call call{"dilated_conv2d", false, input.sizes(), weight.sizes()};
  return in_conv_layout(forward(k, call, input, weight, bias, stride, padding_begin,
                                padding_end, dilation, groups),
                        input, weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding_begin,
    c10::IntArrayRef padding_end, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const Call call{"dilated_conv2d_backward", false, input.sizes(), weight.sizes()};
  auto [grad_input, grad_weight, grad_bias] =
      backward(k, call, grad_output, input, weight, stride, padding_begin, padding_end, dilation,
               groups, output_mask);
  if (grad_input.defined()) grad_input = in_conv_layout(grad_input, input, weight);
  return {grad_input, grad_weight, grad_bias};
}

at::Tensor conv1d_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& weight,
                     const OptionalTensor& bias, int64_t stride, int64_t padding_left,
                     int64_t padding_right, int64_t dilation, int64_t groups) {
  const char* op = "dilated_conv1d";
  check_1d(op, input, weight, stride, padding_left, padding_right, dilation);
  const Call call{op, true, input.sizes(), weight.sizes()};
  const int64_t s[2] = {1, stride}, b[2] = {0, padding_left}, e[2] = {0, padding_right},
                d[2] = {1, dilation};
  return as_1d(forward(k, call, as_2d(input), as_2d(weight), bias, s, b, e, d, groups));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1d_backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, int64_t stride, int64_t padding_left, int64_t padding_right,
    int64_t dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const char* op = "dilated_conv1d_backward";
  check_1d(op, input, weight, stride, padding_left, padding_right, dilation);
  check_shape(op, "grad_output", grad_output, {-1, -1, -1}, "(N, out_channels, out_L)");
  const Call call{op, true, input.sizes(), weight.sizes()};
  const int64_t s[2] = {1, stride}, b[2] = {0, padding_left}, e[2] = {0, padding_right},
                d[2] = {1, dilation};
  const Geometry g = check_args(call, as_2d(input), as_2d(weight), nullptr, s, b, e, d, groups);
  check_shape(op, "grad_output", grad_output, {g.batch, g.out_channels, g.out_w},
              "(N, out_channels, out_L) of the forward output");
  auto [gi, gw, gb] = backward(k, call, as_2d(grad_output), as_2d(input), as_2d(weight), s, b,
                               e, d, groups, output_mask);
  return {as_1d(gi), as_1d(gw), gb};
}

}  // namespace fastdl::dilated_conv

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // conv2d with padding per side: (top, left) before, (bottom, right) after.
  m.def(
      "dilated_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding_begin, int[2] padding_end, int[2] dilation, int groups) -> Tensor");
  // (grad_input, grad_weight, grad_bias); an entry is None unless output_mask asks for it.
  m.def(
      "dilated_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding_begin, int[2] padding_end, int[2] dilation, int groups, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // conv1d with left / right padding (causal: padding_left = dilation * (k - 1)).
  m.def(
      "dilated_conv1d(Tensor input, Tensor weight, Tensor? bias, int stride, int padding_left, "
      "int padding_right, int dilation, int groups) -> Tensor");
  m.def(
      "dilated_conv1d_backward(Tensor grad_output, Tensor input, Tensor weight, int stride, "
      "int padding_left, int padding_right, int dilation, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
