// Schemas, argument checks and the float entry point of the binary convolution.
// Kernels: xnor_conv2d_cpu.cpp, xnor_conv2d_cuda.cu. Python API, fake kernels and
// the straight-through autograd: fastdl/ops/xnor_conv2d.py.
#include "xnor/xnor_conv2d.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "common/checks.h"

namespace fastdl::xnor {
namespace {

constexpr std::initializer_list<c10::ScalarType> kFloatTypes = {c10::kFloat, c10::kDouble,
                                                                c10::kHalf, c10::kBFloat16};

void check_groups(const char* op, int64_t groups, int64_t channels, const char* what) {
  TORCH_CHECK_VALUE(groups >= 1, "fastdl.", op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(channels % groups == 0, "fastdl.", op, ": ", what, " (", channels,
                    ") must be divisible by groups (", groups, ")");
}

void check_per_channel(const char* op, const char* arg, const at::Tensor& t, int64_t channels,
                       const at::Tensor& like) {
  check_shape(op, arg, t, {channels}, "(out_channels,)");
  check_dtype(op, arg, t, kFloatTypes);
  check_same_device(op, "input", like, arg, t);
}

at::Tensor pack_signs_op(const at::Tensor& input, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdl::pack_signs", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(input, groups);
}

at::Tensor xnor_conv2d_packed_op(const at::Tensor& input_bits, const at::Tensor& weight_bits,
                                 int64_t in_channels, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 int64_t groups, c10::ScalarType dtype, bool channels_last) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastdl::xnor_conv2d_packed", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                            c10::ScalarType, bool)>();
  return op.call(input_bits, weight_bits, in_channels, scale, bias, stride, padding, dilation,
                 groups, dtype, channels_last);
}

// conv2d(sign(input), sign(weight)) + bias: pack both, convolve the bits. The
// output takes the input's dtype and memory format, as F.conv2d's does.
at::Tensor xnor_conv2d(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const char* op = "xnor_conv2d";
  check_shape(op, "input", input, {-1, -1, -1, -1}, "(N, C, H, W)");
  check_shape(op, "weight", weight, {-1, -1, -1, -1}, "(out_channels, C / groups, kH, kW)");
  check_dtype(op, "input", input, kFloatTypes);
  check_same_dtype(op, "input", input, "weight", weight);
  check_same_device(op, "input", input, "weight", weight);
  check_groups(op, groups, input.size(1), "input's channel count");
  check_groups(op, groups, weight.size(0), "out_channels");
  TORCH_CHECK_VALUE(weight.size(1) * groups == input.size(1) && weight.size(1) > 0, "fastdl.", op,
                    ": weight must have shape (out_channels, C / groups, kH, kW) with C = ",
                    input.size(1), " and groups = ", groups, ", got ", format_shape(weight.sizes()));
  TORCH_CHECK_VALUE(weight.size(0) > 0 && weight.size(2) > 0 && weight.size(3) > 0, "fastdl.", op,
                    ": weight must not be empty, got ", format_shape(weight.sizes()));
  if (bias) {
    check_per_channel(op, "bias", *bias, weight.size(0), input);
    check_same_dtype(op, "input", input, "bias", *bias);
  }
  check_conv_pair(op, "stride", stride, 1);
  check_conv_pair(op, "padding", padding, 0);
  check_conv_pair(op, "dilation", dilation, 1);
  conv2d_output_size(op, input.size(2), input.size(3), weight.size(2), weight.size(3), stride,
                     padding, dilation);
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return xnor_conv2d_packed_op(pack_signs_op(input, groups), pack_signs_op(weight, 1),
                               input.size(1), std::nullopt, bias, stride, padding, dilation, groups,
                               input.scalar_type(), channels_last);
}

}  // namespace

void check_pack_args(const at::Tensor& input, int64_t groups) {
  const char* op = "pack_signs";
  check_shape(op, "input", input, {-1, -1, -1, -1}, "(N, C, H, W)");
  check_dtype(op, "input", input, kFloatTypes);
  TORCH_CHECK_VALUE(input.size(1) > 0, "fastdl.", op, ": input must have at least one channel, got ",
                    format_shape(input.sizes()));
  check_groups(op, groups, input.size(1), "input's channel count");
}

Geometry check_packed_args(const at::Tensor& input_bits, const at::Tensor& weight_bits,
                           int64_t in_channels, const at::Tensor* scale, const at::Tensor* bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups, c10::ScalarType dtype) {
  const char* op = "xnor_conv2d_packed";
  TORCH_CHECK_VALUE(in_channels >= 1, "fastdl.", op, ": in_channels must be >= 1, got ",
                    in_channels);
  check_groups(op, groups, in_channels, "in_channels");
  const int64_t group_channels = in_channels / groups;
  const int64_t group_words = words_for(group_channels);
  check_shape(op, "input_bits", input_bits, {-1, -1, -1, groups * group_words},
              "(N, H, W, groups * ceil(in_channels / groups / 64)) as pack_signs writes it");
  check_shape(op, "weight_bits", weight_bits, {-1, -1, -1, group_words},
              "(out_channels, kH, kW, ceil(in_channels / groups / 64)) as pack_signs writes it");
  check_dtype(op, "input_bits", input_bits, {c10::kLong});
  check_dtype(op, "weight_bits", weight_bits, {c10::kLong});
  check_same_device(op, "input_bits", input_bits, "weight_bits", weight_bits);
  TORCH_CHECK_VALUE(input_bits.size(1) > 0 && input_bits.size(2) > 0, "fastdl.", op,
                    ": input_bits must have a non-empty image, got ",
                    format_shape(input_bits.sizes()));
  TORCH_CHECK_VALUE(weight_bits.size(0) > 0 && weight_bits.size(1) > 0 && weight_bits.size(2) > 0,
                    "fastdl.", op, ": weight_bits must not be empty, got ",
                    format_shape(weight_bits.sizes()));
  check_groups(op, groups, weight_bits.size(0), "out_channels");
  TORCH_CHECK_TYPE(dtype == c10::kFloat || dtype == c10::kDouble || dtype == c10::kHalf ||
                       dtype == c10::kBFloat16,
                   "fastdl.", op, ": dtype must be ", format_dtypes(kFloatTypes), ", got ",
                   format_dtype(dtype));
  if (scale != nullptr) check_per_channel(op, "scale", *scale, weight_bits.size(0), input_bits);
  if (bias != nullptr) check_per_channel(op, "bias", *bias, weight_bits.size(0), input_bits);
  check_conv_pair(op, "stride", stride, 1);
  check_conv_pair(op, "padding", padding, 0);
  check_conv_pair(op, "dilation", dilation, 1);

  Geometry g{};
  g.batch = input_bits.size(0);
  g.in_h = input_bits.size(1);
  g.in_w = input_bits.size(2);
  g.groups = groups;
  g.group_channels = group_channels;
  g.group_words = group_words;
  g.out_channels = weight_bits.size(0);
  g.group_out = g.out_channels / groups;
  g.kernel_h = weight_bits.size(1);
  g.kernel_w = weight_bits.size(2);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  const auto out_size =
      conv2d_output_size(op, g.in_h, g.in_w, g.kernel_h, g.kernel_w, stride, padding, dilation);
  g.out_h = out_size[0];
  g.out_w = out_size[1];
  // The popcount sums are int32: the receptive field must have fewer than 2^31 bits.
  TORCH_CHECK_VALUE(g.row_words() * kWordBits < (int64_t{1} << 31), "fastdl.", op,
                    ": kernel (", g.kernel_h, ", ", g.kernel_w, ") over ", group_channels,
                    " channels per group is too large (at most 2^31 bits per output)");
  return g;
}

std::optional<at::Tensor> per_channel_as(const std::optional<at::Tensor>& t,
                                         c10::ScalarType type) {
  if (!t) return std::nullopt;
  return t->to(type).contiguous();
}

at::Tensor allocate_output(const Geometry& g, const at::Tensor& like, c10::ScalarType dtype,
                           bool channels_last) {
  return at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, like.options().dtype(dtype),
                   channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace fastdl::xnor

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def("pack_signs(Tensor input, int groups=1) -> Tensor");
  m.def(
      "xnor_conv2d_packed(Tensor input_bits, Tensor weight_bits, int in_channels, Tensor? scale, "
      "Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "ScalarType dtype, bool channels_last) -> Tensor");
  m.def(
      "xnor_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { m.impl("xnor_conv2d", &fastdl::xnor::xnor_conv2d); }

#ifdef FASTDL_WITH_CUDA
TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { m.impl("xnor_conv2d", &fastdl::xnor::xnor_conv2d); }
#endif
