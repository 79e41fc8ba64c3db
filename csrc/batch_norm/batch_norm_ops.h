// The fused batch norm ops' shared front end (batch_norm.cpp): argument checks,
// operands dense in one layout, outputs allocated, then the device's kernels. Each
// device file defines its DeviceKernels and registers them with register_ops.
#pragma once

#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "batch_norm/batch_norm.h"

namespace fastdl::batch_norm {

// The tensors of one call, dense in `layout` (undefined: not given).
struct Operands {
  Layout layout;
  at::Tensor input, residual, grad_output;
  at::Tensor mean, var;             // the statistics to normalise with
  at::Tensor mean_dz, mean_dz_xmu;  // backward_input with batch statistics
  Epilogue epilogue;
};

struct DeviceKernels {
  void (*stats)(const Operands&, at::Tensor& mean, at::Tensor& var);
  void (*forward)(const Operands&, at::Tensor& output);
  // dz is undefined unless the caller asked for it.
  void (*backward_reduce)(const Operands&, at::Tensor& sum_dz, at::Tensor& sum_dz_xmu,
                          at::Tensor& dz);
  void (*backward_input)(const Operands&, at::Tensor& grad_input, at::Tensor& grad_residual);
};

using OptionalTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> stats_op(const DeviceKernels& k, const at::Tensor& input);
at::Tensor act_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& mean,
                  const at::Tensor& var, const OptionalTensor& weight, const OptionalTensor& bias,
                  const OptionalTensor& residual, double eps, c10::string_view activation,
                  double negative_slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> act_train_op(
    const DeviceKernels& k, const at::Tensor& input, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_reduce_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope, bool write_dz);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, double eps,
    c10::string_view activation, double negative_slope, bool batch_stats,
    std::array<bool, 4> output_mask);
std::tuple<at::Tensor, at::Tensor> backward_input_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
    const OptionalTensor& bias, const OptionalTensor& residual, const OptionalTensor& mean_dz,
    const OptionalTensor& mean_dz_xmu, double eps, c10::string_view activation,
    double negative_slope, std::array<bool, 2> output_mask);

// m.impl of the six ops with kernels K (an object with static storage).
template <const DeviceKernels& K>
void register_ops(torch::Library& m) {
  m.impl("batch_norm_stats", [](const at::Tensor& input) { return stats_op(K, input); });
  m.impl("batch_norm_act",
         [](const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
            const OptionalTensor& weight, const OptionalTensor& bias,
            const OptionalTensor& residual, double eps, c10::string_view activation,
            double negative_slope) {
           return act_op(K, input, mean, var, weight, bias, residual, eps, activation,
                         negative_slope);
         });
  m.impl("batch_norm_act_train",
         [](const at::Tensor& input, const OptionalTensor& weight, const OptionalTensor& bias,
            const OptionalTensor& residual, double eps, c10::string_view activation,
            double negative_slope) {
           return act_train_op(K, input, weight, bias, residual, eps, activation,
                               negative_slope);
         });
  m.impl("batch_norm_act_backward_reduce",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& var, const OptionalTensor& weight, const OptionalTensor& bias,
            const OptionalTensor& residual, double eps, c10::string_view activation,
            double negative_slope, bool write_dz) {
           return backward_reduce_op(K, grad_output, input, mean, var, weight, bias, residual,
                                     eps, activation, negative_slope, write_dz);
         });
  m.impl("batch_norm_act_backward",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& var, const OptionalTensor& weight, const OptionalTensor& bias,
            const OptionalTensor& residual, double eps, c10::string_view activation,
            double negative_slope, bool batch_stats, std::array<bool, 4> output_mask) {
           return backward_op(K, grad_output, input, mean, var, weight, bias, residual, eps,
                              activation, negative_slope, batch_stats, output_mask);
         });
  m.impl("batch_norm_act_backward_input",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& var, const OptionalTensor& weight, const OptionalTensor& bias,
            const OptionalTensor& residual, const OptionalTensor& mean_dz,
            const OptionalTensor& mean_dz_xmu, double eps, c10::string_view activation,
            double negative_slope, std::array<bool, 2> output_mask) {
           return backward_input_op(K, grad_output, input, mean, var, weight, bias, residual,
                                    mean_dz, mean_dz_xmu, eps, activation, negative_slope,
                                    output_mask);
         });
}

}  // namespace fastdl::batch_norm
