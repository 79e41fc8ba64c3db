// The dilated convolution kernels for CPUs without AVX2, and for float64 everywhere.
// GCC 12's vectorizer at -O3 turns lane_tile's channel loop (float, 1-lane Vec) into
// 2-float loads that also read the next channel's values on the last channel, never
// used: past the end of an input read in place (a segfault on a 1024x1024 plane) and
// of the packed weights (valgrind). Scalar code is the fallback path; it goes without
// the vectorizer.
#pragma GCC optimize("no-tree-vectorize")
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "dilated_conv/dilated_conv_cpu_kernels.h"

namespace fastdl::dilated_conv {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "dilated_conv/dilated_conv_cpu_kernels.inc"
#include "dilated_conv/dilated_conv_cpu_winograd.inc"
}  // namespace scalar_impl

FASTDL_DILATED_CONV_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_DILATED_CONV_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::dilated_conv
