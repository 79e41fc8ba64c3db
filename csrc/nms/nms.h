#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastdl {

// Shape, dtype-agreement, device-agreement and threshold checks shared by the CPU
// and CUDA kernels of nms and batched_nms (`idxs` undefined for nms). The
// per-device dtype lists are checked by each kernel.
void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                      const at::Tensor* idxs, double iou_threshold);

// CUDA and CPU both index boxes with 32-bit positions after sorting.
constexpr int64_t kMaxNmsBoxes = (int64_t(1) << 31) - 1;

}  // namespace fastdl
