// Binary (XNOR-Net) convolution: shared pieces of the ops in this folder.
//
// Bit format ("packed signs"). A float tensor (N, C, H, W) split into `groups`
// channel groups becomes an int64 tensor (N, H, W, groups * group_words): for each
// pixel, the Cg = C / groups channels of a group are packed into group_words =
// ceil(Cg / 64) 64-bit words, channel c of the group at bit c % 64 of word c / 64.
// A set bit means -1, a clear bit +1: bit = !(x >= 0), so sign(0) = +1 and NaN
// reads as -1 (as torch.where(x >= 0, 1, -1) does). Bits past Cg in a group's last
// word are padding: pack_signs writes them 0 and the convolution ignores them.
// Weights (O, Cg, kH, kW) pack the same way (groups = 1) to (O, kH, kW, group_words).
//
// The convolution of the +-1 tensors: for output (n, o, ho, wo),
//   dot = sum over taps t inside the image of (Cg - 2 * popcount(x_t XOR w_t))
// because matching signs add +1 and differing signs -1. Taps in the zero padding
// add exactly 0, as in F.conv2d on the float +-1 tensors (padding has no +-1 code,
// so those taps are skipped, not padded with a sign).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>

#include "common/conv_shape.h"
#include "common/host_device.h"

namespace fastdl::xnor {

constexpr int64_t kWordBits = 64;

FASTDL_HOST_DEVICE int64_t words_for(int64_t channels) {
  return (channels + kWordBits - 1) / kWordBits;
}

// Mask of the channel bits that exist in word `word` of a group of `channels`.
FASTDL_HOST_DEVICE uint64_t valid_bits(int64_t channels, int64_t word) {
  const int64_t left = channels - word * kWordBits;
  return left >= kWordBits ? ~uint64_t{0} : ((uint64_t{1} << left) - 1);
}

// Set bits of a word by SWAR arithmetic: POPCNT is not in baseline x86-64, and
// without it GCC's __builtin_popcountll is a libgcc call per word.
FASTDL_HOST_DEVICE int64_t popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<int64_t>((x * 0x0101010101010101ull) >> 56);
}

struct Geometry {
  int64_t batch, in_h, in_w, out_h, out_w;
  int64_t groups, group_channels, group_words;  // per group: Cg channels in words
  int64_t out_channels, group_out;              // group_out = out_channels / groups
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  FASTDL_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  // Words of one output's receptive field in one group (the GEMM's K).
  FASTDL_HOST_DEVICE int64_t row_words() const { return taps() * group_words; }
  FASTDL_HOST_DEVICE int64_t pixels() const { return batch * out_h * out_w; }
};

// Checks pack_signs' arguments: input (N, C, *) floating, C divisible by groups.
void check_pack_args(const at::Tensor& input, int64_t groups);

// Checks xnor_conv2d_packed's arguments and returns the geometry: input_bits
// (N, H, W, groups * words(Cg)) int64, weight_bits (O, kH, kW, words(Cg)) int64,
// O divisible by groups, optional scale/bias (O,) floating on the same device,
// stride/padding/dilation pairs, a floating output dtype.
Geometry check_packed_args(const at::Tensor& input_bits, const at::Tensor& weight_bits,
                           int64_t in_channels, const at::Tensor* scale, const at::Tensor* bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups, c10::ScalarType dtype);

// The float output the packed convolution writes: (N, O, out_h, out_w) in `dtype`,
// channels_last or contiguous.
at::Tensor allocate_output(const Geometry& g, const at::Tensor& like, c10::ScalarType dtype,
                           bool channels_last);

// scale or bias as a contiguous tensor of the epilogue's math type (or nullopt).
std::optional<at::Tensor> per_channel_as(const std::optional<at::Tensor>& t,
                                         c10::ScalarType type);

// Which CPU kernel set the packed convolution uses now: "avx512-vpopcntdq",
// "avx2-pshufb" or "scalar-swar" (depends on the CPU and fastdl._C.set_cpu_isa).
const char* cpu_kernel_path();

}  // namespace fastdl::xnor
