// Dilated (atrous) convolution, dense or grouped, 2-D (DeepLab's ASPP) and 1-D (WaveNet,
// TCN; causal = all padding on the left). The 1-D ops run the 2-D kernels on (N, C, 1, L)
// views. Padding is given per side (begin, end), so causal and 'same' padding with an
// even dilated extent need no padded copy: taps that fall outside the input read 0.
//
// Algorithm (CPU; see dilated_conv_cpu.cpp): an implicit GEMM per output row, in one
// of two register tiles. Groups with at least half a lane block of output channels (32
// on AVX-512) put output channels in the vector lanes: 4 vectors of them x 6 pixels
// (24 accumulators) += weight vectors x broadcast input values, read in place, so a
// dilation or stride is only the distance between broadcasts, and (tile, tap) pairs
// whose pixels all read padding are skipped. Narrower groups put columns in the lanes:
// 5 output channels x up to 5 vectors of columns += a broadcast weight x a run of a
// zero-padded copy of the input rows, shifted by kw * dilation. Either way there is
// no space-to-batch and no im2col buffer. Two-tap rows (WaveNet's k=2) in wide groups,
// with a dilation d of at least a vector, pair outputs x and x + d through Winograd
// F(2, 2): three GEMMs over the input channels where the direct kernel does four
// (chunks with non-finite or near-overflow inputs, and such weights, stay direct).
// Taps that fall on zero-padding rows (and, in the lane tile, on whole tiles of
// padding columns) are skipped, not multiplied: a non-finite weight there does not
// turn the output into NaN as F.conv2d's 0 * inf does (padding columns elsewhere are
// multiplied as zeros; so is all padding in the CUDA implicit GEMM, where such a
// weight gives NaN as F.conv2d does).
// grad_input is the same kernel on grad_output with the weights flipped and
// transposed (stride 1; larger strides first spread grad_output onto the stride-1
// grid); grad_weight is a reduction over (batch, rows, columns) per (output channel,
// input channel, tap) tile, in a fixed order: deterministic, no atomics.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/host_device.h"

namespace fastdl::dilated_conv {

struct Geometry {
  int64_t batch, in_channels, out_channels, groups;
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, dilation_h, dilation_w;
  int64_t pad_top, pad_left;  // the end padding is implied by out_h, out_w

  FASTDL_HOST_DEVICE int64_t in_per_group() const { return in_channels / groups; }
  FASTDL_HOST_DEVICE int64_t out_per_group() const { return out_channels / groups; }
  // The input row / column that output row y (column x) reads at tap kh (kw); may be
  // outside [0, in_h) / [0, in_w): that tap reads 0.
  FASTDL_HOST_DEVICE int64_t input_row(int64_t y, int64_t kh) const {
    return y * stride_h + kh * dilation_h - pad_top;
  }
  FASTDL_HOST_DEVICE int64_t input_col(int64_t x, int64_t kw) const {
    return x * stride_w + kw * dilation_w - pad_left;
  }
};

// Kernels read and write NCHW-contiguous tensors: input (N, C, H, W), weight
// (O, C / groups, kH, kW), grad_output / output (N, O, out_H, out_W), all one dtype.
// forward: output = conv(input) + bias (bias undefined: none).
// backward_input: grad_input (N, C, H, W), uninitialised on entry.
// backward_weight: grad_weight (O, C / groups, kH, kW) and grad_bias (O,), each only
// when defined (at least one is), uninitialised on entry.
struct DeviceKernels {
  void (*forward)(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output);
  void (*backward_input)(const Geometry& g, const at::Tensor& grad_output,
                         const at::Tensor& weight, at::Tensor& grad_input);
  void (*backward_weight)(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& input, at::Tensor& grad_weight,
                          at::Tensor& grad_bias);
};

using OptionalTensor = std::optional<at::Tensor>;

at::Tensor conv2d_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& weight,
                     const OptionalTensor& bias, c10::IntArrayRef stride,
                     c10::IntArrayRef padding_begin, c10::IntArrayRef padding_end,
                     c10::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding_begin,
    c10::IntArrayRef padding_end, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);
at::Tensor conv1d_op(const DeviceKernels& k, const at::Tensor& input, const at::Tensor& weight,
                     const OptionalTensor& bias, int64_t stride, int64_t padding_left,
                     int64_t padding_right, int64_t dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1d_backward_op(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, int64_t stride, int64_t padding_left, int64_t padding_right,
    int64_t dilation, int64_t groups, std::array<bool, 3> output_mask);

// m.impl of the four ops with kernels K (an object with static storage).
template <const DeviceKernels& K>
void register_ops(torch::Library& m) {
  m.impl("dilated_conv2d",
         [](const at::Tensor& input, const at::Tensor& weight, const OptionalTensor& bias,
            c10::IntArrayRef stride, c10::IntArrayRef padding_begin,
            c10::IntArrayRef padding_end, c10::IntArrayRef dilation, int64_t groups) {
           return conv2d_op(K, input, weight, bias, stride, padding_begin, padding_end,
                            dilation, groups);
         });
  m.impl("dilated_conv2d_backward",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
            c10::IntArrayRef stride, c10::IntArrayRef padding_begin,
            c10::IntArrayRef padding_end, c10::IntArrayRef dilation, int64_t groups,
            std::array<bool, 3> output_mask) {
           return conv2d_backward_op(K, grad_output, input, weight, stride, padding_begin,
                                     padding_end, dilation, groups, output_mask);
         });
  m.impl("dilated_conv1d",
         [](const at::Tensor& input, const at::Tensor& weight, const OptionalTensor& bias,
            int64_t stride, int64_t padding_left, int64_t padding_right, int64_t dilation,
            int64_t groups) {
           return conv1d_op(K, input, weight, bias, stride, padding_left, padding_right,
                            dilation, groups);
         });
  m.impl("dilated_conv1d_backward",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
            int64_t stride, int64_t padding_left, int64_t padding_right, int64_t dilation,
            int64_t groups, std::array<bool, 3> output_mask) {
           return conv1d_backward_op(K, grad_output, input, weight, stride, padding_left,
                                     padding_right, dilation, groups, output_mask);
         });
}

}  // namespace fastdl::dilated_conv
