// The GRU cell kernels for CPUs without AVX2, and for float64 everywhere.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "gru/gru_cell_cpu_kernels.h"

namespace fastdl::gru {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "common/simd/tile_product.inc"
#include "common/simd/activations.inc"
#include "gru/gru_cell_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_GRU_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_GRU_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::gru
