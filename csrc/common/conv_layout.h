// The memory format of a convolution's output, shared by the convolution ops.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastdl {

// What PyTorch's convolution gives (its output, and its input gradient): channels_last
// when the input or the weight is channels_last, else contiguous, as at::native decides
// it for its oneDNN and cuDNN paths. So a model moved to channels_last (its weights) gives
// channels_last outputs even for an NCHW input, as nn.Conv2d does.
inline at::MemoryFormat conv_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;
  return input.suggest_memory_format() == kChannelsLast ||
                 weight.suggest_memory_format() == kChannelsLast
             ? kChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace fastdl
