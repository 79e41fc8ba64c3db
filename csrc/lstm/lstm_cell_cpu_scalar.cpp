// The LSTM cell kernels for CPUs without AVX2, and for float64 everywhere.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/aligned_vector.h"
#include "common/thread_scratch.h"
#include "lstm/lstm_cell_cpu_kernels.h"

namespace fastdl::lstm {
namespace scalar_impl {
#include "common/simd/scalar.inc"
#include "common/simd/loops.inc"
#include "common/simd/tile_product.inc"
#include "common/simd/activations.inc"
#include "lstm/lstm_cell_cpu_kernels.inc"
}  // namespace scalar_impl

FASTDL_LSTM_DEFINE_KERNELS(ScalarKernels, scalar_impl, float)
FASTDL_LSTM_DEFINE_KERNELS(ScalarKernels, scalar_impl, double)

}  // namespace fastdl::lstm
