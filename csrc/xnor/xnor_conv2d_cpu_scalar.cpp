// The binary convolution kernels for any x86-64 CPU: popcount by SWAR bit tricks,
// since the POPCNT instruction is not part of baseline x86-64.
#include "xnor/xnor_conv2d.h"
#include "xnor/xnor_conv2d_cpu_kernels.h"

namespace fastdl::xnor {
namespace scalar_impl {

struct Bits {
  using Reg = uint64_t;
  static constexpr int64_t kLanes = 1;
  static constexpr int kVectors = 2, kChannels = 4;

  static Reg zero() { return 0; }
  static Reg load(const uint64_t* p) { return *p; }
  static Reg broadcast(uint64_t word) { return word; }
  static Reg accumulate(Reg acc, Reg a, Reg b) { return acc + popcount64(a ^ b); }
  static void store(int32_t* p, Reg acc) { *p = static_cast<int32_t>(acc); }
  static int64_t popcount(uint64_t word) { return popcount64(word); }
};

#include "xnor/xnor_conv2d_cpu_kernels.inc"

}  // namespace scalar_impl

FASTDL_XNOR_DEFINE_KERNELS(ScalarKernels, scalar_impl)

}  // namespace fastdl::xnor
