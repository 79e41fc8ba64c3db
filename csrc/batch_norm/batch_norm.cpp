// Schemas and argument checks of the fused batch norm ops. Kernels:
// batch_norm_cpu.cpp, batch_norm_cuda.cu. Python API, fake kernels and autograd:
// fastdl/ops/batch_norm.py.
#include "batch_norm/batch_norm.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "batch_norm/batch_norm_ops.h"
#include "common/checks.h"
#include "common/first_order.h"

namespace fastdl::batch_norm {

Activation parse_activation(const char* op, std::string_view name) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "relu6") return Activation::relu6;
  if (name == "silu") return Activation::silu;
  if (name == "leaky_relu") return Activation::leaky_relu;
  TORCH_CHECK_VALUE(false, "fastdl.", op,
                    ": activation must be one of 'none', 'relu', 'relu6', 'silu', 'leaky_relu', "
                    "got '", std::string(name), "'");
}

Layout layout_of(const at::Tensor& input) {
  Layout layout{};
  layout.outer = input.size(0);
  layout.channels = input.size(1);
  layout.inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) layout.inner *= input.size(d);
  // Channels last when PyTorch would keep the data so (its own rule for the output's
  // format), or when there is nothing but channels per sample ((N, C), (N, C, 1, ...)):
  // then vectors run across channels.
  layout.format = input.suggest_memory_format();
  layout.channels_last = layout.format != at::MemoryFormat::Contiguous || layout.inner == 1;
  if (layout.channels_last) {
    layout.outer *= layout.inner;
    layout.inner = 1;
  }
  return layout;
}

at::Tensor dense_in_layout(const at::Tensor& t, const Layout& layout) {
  return t.contiguous(layout.format);
}

at::Tensor empty_in_layout(const at::Tensor& like, const Layout& layout) {
  return at::empty(like.sizes(), like.options().memory_format(layout.format));
}

c10::ScalarType stats_dtype(c10::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

void check_input(const char* op, const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "fastdl.", op,
                    ": input must have shape (N, C, *) with at least 2 dimensions, got ",
                    format_shape(input.sizes()));
  TORCH_CHECK_VALUE(input.size(1) > 0, "fastdl.", op,
                    ": input must have at least one channel, got ", format_shape(input.sizes()));
  check_dtype(op, "input", input, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
}

void check_channel_vector(const char* op, const char* arg, const at::Tensor& input,
                          const at::Tensor& vector) {
  check_shape(op, arg, vector, {input.size(1)}, "(C,) with C = input.size(1)");
  TORCH_CHECK_TYPE(at::isFloatingType(vector.scalar_type()), "fastdl.", op, ": ", arg,
                   " must be a floating-point tensor, got ", format_dtype(vector.scalar_type()));
  check_same_device(op, "input", input, arg, vector);
}

void check_same_as_input(const char* op, const char* arg, const at::Tensor& input,
                         const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.sizes() == input.sizes(), "fastdl.", op, ": ", arg,
                    " must have the input's shape ", format_shape(input.sizes()), ", got ",
                    format_shape(t.sizes()));
  check_same_dtype(op, "input", input, arg, t);
  check_same_device(op, "input", input, arg, t);
}

void check_epilogue(const char* op, const at::Tensor& input, const Epilogue& e) {
  if (e.weight) check_channel_vector(op, "weight", input, *e.weight);
  if (e.bias) check_channel_vector(op, "bias", input, *e.bias);
  if (e.residual) check_same_as_input(op, "residual", input, *e.residual);
  TORCH_CHECK_VALUE(e.eps >= 0 && std::isfinite(e.eps), "fastdl.", op,
                    ": eps must be a finite number >= 0, got ", e.eps);
  TORCH_CHECK_VALUE(std::isfinite(e.negative_slope), "fastdl.", op,
                    ": negative_slope must be finite, got ", e.negative_slope);
}

void check_more_than_one_value(const char* op, const at::Tensor& input) {
  // As PyTorch: an empty batch passes (the output is empty too), one value does not.
  const int64_t values = input.numel() / input.size(1);
  TORCH_CHECK_VALUE(values != 1, "fastdl.", op,
                    ": expected more than 1 value per channel when training, got input size ",
                    format_shape(input.sizes()));
}

Epilogue make_epilogue(const char* op, const at::Tensor& input, const OptionalTensor& weight,
                       const OptionalTensor& bias, const OptionalTensor& residual, double eps,
                       c10::string_view activation, double negative_slope) {
  Epilogue e{weight, bias, residual, eps, parse_activation(op, activation), negative_slope};
  check_epilogue(op, input, e);
  return e;
}

void check_statistics(const char* op, const at::Tensor& input, const at::Tensor& mean,
                      const at::Tensor& var) {
  check_channel_vector(op, "mean", input, mean);
  check_channel_vector(op, "var", input, var);
}

// Operands dense in the input's layout; the statistics as the kernels read them
// (contiguous, in the statistics dtype).
Operands operands(const at::Tensor& input, const Epilogue& e, const at::Tensor& grad_output = {},
                  const at::Tensor& mean = {}, const at::Tensor& var = {}) {
  Operands o;
  o.layout = layout_of(input);
  o.input = dense_in_layout(input, o.layout);
  if (e.residual) o.residual = dense_in_layout(*e.residual, o.layout);
  if (grad_output.defined()) o.grad_output = dense_in_layout(grad_output, o.layout);
  const auto type = stats_dtype(input.scalar_type());
  if (mean.defined()) o.mean = mean.to(type).contiguous();
  if (var.defined()) o.var = var.to(type).contiguous();
  o.epilogue = e;
  return o;
}

// The checks every backward op makes; its epilogue.
Epilogue check_backward_args(const char* op, const at::Tensor& grad_output,
                             const at::Tensor& input, const at::Tensor& mean,
                             const at::Tensor& var, const OptionalTensor& weight,
                             const OptionalTensor& bias, const OptionalTensor& residual,
                             double eps, c10::string_view activation, double negative_slope) {
  check_input(op, input);
  check_same_as_input(op, "grad_output", input, grad_output);
  check_statistics(op, input, mean, var);
  return make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
}

at::Tensor channel_vector_like(const at::Tensor& input) {
  return at::empty({input.size(1)}, input.options().dtype(stats_dtype(input.scalar_type())));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> stats_op(const DeviceKernels& k, const at::Tensor& input) {
  const char* op = "batch_norm_stats";
  check_input(op, input);
  const Operands o = operands(input, Epilogue{});
  at::Tensor mean = channel_vector_like(input), var = channel_vector_like(input);
  k.stats(o, mean, var);
  return {mean, var};
}

namespace {

at::Tensor forward(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& mean,
                   const at::Tensor& var, const Epilogue& e) {
  const Operands o = operands(input, e, {}, mean, var);
  at::Tensor output = empty_in_layout(input, o.layout);
  k.forward(o, output);
  return output;
}

}  // namespace

at::Tensor act_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& mean,
                  const at::Tensor& var, const OptionalTensor& weight, const OptionalTensor& bias,
                  const OptionalTensor& residual, double eps, c10::string_view activation,
                  double negative_slope) {
  const char* op = "batch_norm_act";
  check_input(op, input);
  check_statistics(op, input, mean, var);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  return forward(k, input, mean, var, e);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> act_train_op(
    const DeviceKernels& k, const at::Tensor& input, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope) {
  const char* op = "batch_norm_act_train";
  check_input(op, input);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  check_more_than_one_value(op, input);
  auto [mean, var] = stats_op(k, input);
  // Normalise with the rounded statistics the backward pass will read, so both
  // passes compute the same z.
  at::Tensor output = forward(k, input, mean, var, e);
  return {output, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_reduce_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope, bool write_dz) {
  const char* op = "batch_norm_act_backward_reduce";
  const Epilogue e = check_backward_args(op, grad_output, input, mean, var, weight, bias,
                                         residual, eps, activation, negative_slope);
  const Operands o = operands(input, e, grad_output, mean, var);
  at::Tensor sum_dz = channel_vector_like(input), sum_dz_xmu = channel_vector_like(input);
  at::Tensor dz = write_dz ? empty_in_layout(input, o.layout) : at::Tensor();
  k.backward_reduce(o, sum_dz, sum_dz_xmu, dz);
  return {sum_dz, sum_dz_xmu, dz};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope, bool batch_stats,
    std::array<bool, 4> output_mask) {
  const char* op = "batch_norm_act_backward";
  const Epilogue e = check_backward_args(op, grad_output, input, mean, var, weight, bias,
                                         residual, eps, activation, negative_slope);
  TORCH_CHECK_VALUE(!output_mask[1] || weight, "fastdl.", op,
                    ": grad_weight was asked for, but weight is None");
  TORCH_CHECK_VALUE(!output_mask[2] || bias, "fastdl.", op,
                    ": grad_bias was asked for, but bias is None");
  TORCH_CHECK_VALUE(!output_mask[3] || residual, "fastdl.", op,
                    ": grad_residual was asked for, but residual is None");
  Operands o = operands(input, e, grad_output, mean, var);
  at::Tensor grad_input = output_mask[0] ? empty_in_layout(input, o.layout) : at::Tensor();
  at::Tensor grad_weight = output_mask[1] ? at::empty({input.size(1)}, weight->options()) : at::Tensor();
  at::Tensor grad_bias = output_mask[2] ? at::empty({input.size(1)}, bias->options()) : at::Tensor();
  // The two passes: sums (writing dz when there is a residual: it is the residual's
  // gradient and all grad_input needs of grad_output and residual), then grad_input.
  const bool write_dz = residual && (output_mask[0] || output_mask[3]);
  at::Tensor sum_dz = channel_vector_like(input), sum_dz_xmu = channel_vector_like(input);
  at::Tensor dz = write_dz ? empty_in_layout(input, o.layout) : at::Tensor();
  k.backward_reduce(o, sum_dz, sum_dz_xmu, dz);
  if (output_mask[1]) grad_weight.copy_(sum_dz_xmu * (o.var + eps).rsqrt());
  if (output_mask[2]) grad_bias.copy_(sum_dz);
  at::Tensor grad_residual = output_mask[3] ? dz : at::Tensor();
  if (output_mask[0]) {
    Operands from_dz = o;
    if (write_dz) {  // with dz given, the residual and the activation are behind us
      from_dz.grad_output = dz;
      from_dz.residual = at::Tensor();
      from_dz.epilogue.residual.reset();
      from_dz.epilogue.activation = Activation::none;
    }
    if (batch_stats) {
      const double count = static_cast<double>(std::max<int64_t>(1, o.layout.count_per_channel()));
      from_dz.mean_dz = sum_dz / count;
      from_dz.mean_dz_xmu = sum_dz_xmu / count;
    }
    at::Tensor unused;
    k.backward_input(from_dz, grad_input, unused);
  }
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

std::tuple<at::Tensor, at::Tensor> backward_input_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, const OptionalTensor& mean_dz,
    const OptionalTensor& mean_dz_xmu, double eps, c10::string_view activation,
    double negative_slope, std::array<bool, 2> output_mask) {
  const char* op = "batch_norm_act_backward_input";
  const Epilogue e = check_backward_args(op, grad_output, input, mean, var, weight, bias,
                                         residual, eps, activation, negative_slope);
  TORCH_CHECK_VALUE(mean_dz.has_value() == mean_dz_xmu.has_value(), "fastdl.", op,
                    ": mean_dz and mean_dz_xmu must be given together (batch statistics) or "
                    "both be None (fixed statistics)");
  if (mean_dz) check_channel_vector(op, "mean_dz", input, *mean_dz);
  if (mean_dz_xmu) check_channel_vector(op, "mean_dz_xmu", input, *mean_dz_xmu);
  TORCH_CHECK_VALUE(!output_mask[1] || e.residual, "fastdl.", op,
                    ": grad_residual was asked for, but residual is None");
  Operands o = operands(input, e, grad_output, mean, var);
  const auto type = stats_dtype(input.scalar_type());
  if (mean_dz) o.mean_dz = mean_dz->to(type).contiguous();
  if (mean_dz_xmu) o.mean_dz_xmu = mean_dz_xmu->to(type).contiguous();
  at::Tensor grad_input = output_mask[0] ? empty_in_layout(input, o.layout) : at::Tensor();
  at::Tensor grad_residual = output_mask[1] ? empty_in_layout(input, o.layout) : at::Tensor();
  if (output_mask[0] || output_mask[1]) k.backward_input(o, grad_input, grad_residual);
  return {grad_input, grad_residual};
}

}  // namespace fastdl::batch_norm

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  // Per-channel mean and biased variance of an (N, C, *) input.
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  // act(normalize(input) (+ residual)) with the given statistics.
  m.def(
      "batch_norm_act(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, "
      "Tensor? residual, float eps, str activation, float negative_slope) -> Tensor");
  // The same with batch statistics, which it also returns (for the running averages).
  m.def(
      "batch_norm_act_train(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "float eps, str activation, float negative_slope) -> (Tensor output, Tensor mean, "
      "Tensor var)");
  // Per-channel sums of dz and dz * (input - mean), dz = grad_output * act'(z); with
  // write_dz, dz itself too (the residual's gradient, and what grad_input needs).
  m.def(
      "batch_norm_act_backward_reduce(Tensor grad_output, Tensor input, Tensor mean, "
      "Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, float eps, str activation, "
      "float negative_slope, bool write_dz=False) -> (Tensor sum_dz, Tensor sum_dz_xmu, "
      "Tensor dz)");
  // All gradients (input, weight, bias, residual) in one op; batch_stats: the
  // statistics were the batch's own (training), so grad_input includes their
  // dependence on the input.
  m.def(
      "batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor var, "
      "Tensor? weight, Tensor? bias, Tensor? residual, float eps, str activation, "
      "float negative_slope, bool batch_stats, bool[4] output_mask) -> (Tensor grad_input, "
      "Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)");
  // grad_input and grad_residual (= dz). mean_dz and mean_dz_xmu (the sums divided
  // by the count) are given with batch statistics and None with fixed statistics.
  m.def(
      "batch_norm_act_backward_input(Tensor grad_output, Tensor input, Tensor mean, "
      "Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, Tensor? mean_dz, "
      "Tensor? mean_dz_xmu, float eps, str activation, float negative_slope, "
      "bool[2] output_mask) -> (Tensor grad_input, Tensor grad_residual)");
}

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  fastdl::register_first_order_only(m, "batch_norm_act_backward");
  fastdl::register_first_order_only(m, "batch_norm_act_backward_input");
  fastdl::register_first_order_only(m, "batch_norm_act_backward_reduce");
}
