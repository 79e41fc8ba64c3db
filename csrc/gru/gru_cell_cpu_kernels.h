// The inner loops of the CPU GRU cell, compiled once per ISA
// (gru_cell_cpu_{scalar,avx2,avx512}.cpp include gru_cell_cpu_kernels.inc under that
// ISA's target) and chosen at run time by gru_cell_cpu.cpp. Each works on `rows`
// batch rows of hidden size `hidden`: projections (rows, 3 * hidden), saved
// (rows, 4 * hidden), states (rows, hidden), all contiguous.
#pragma once

#include <cstdint>

#include "common/tile_product.h"

namespace fastdl::gru {

// The recurrence's per-step products (gru_recurrence_cpu.cpp) run in the register tiles
// of common/simd/tile_product.inc.
#define FASTDL_GRU_KERNEL_LIST(T)                                                          \
  FASTDL_TILE_PRODUCT_KERNEL_LIST(T)                                                       \
  static void forward_rows(const T* x_gates, const T* h_gates, const T* h_prev,           \
                           int64_t rows, int64_t hidden, T* h, T* saved);                  \
  static void backward_rows(const T* grad_h, const T* saved, const T* h_prev, int64_t rows, \
                            int64_t hidden, T* grad_x_gates, T* grad_h_gates,             \
                            T* grad_h_prev);

struct ScalarKernels {
  FASTDL_GRU_KERNEL_LIST(float)
  FASTDL_GRU_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_GRU_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_GRU_KERNEL_LIST(float)
};

#define FASTDL_GRU_DEFINE_KERNELS(Set, impl, T)                                               \
  FASTDL_TILE_PRODUCT_DEFINE_KERNELS(Set, impl, T)                                            \
  void Set::forward_rows(const T* x_gates, const T* h_gates, const T* h_prev, int64_t rows,  \
                         int64_t hidden, T* h, T* saved) {                                    \
    impl::forward_rows<T>(x_gates, h_gates, h_prev, rows, hidden, h, saved);                  \
  }                                                                                           \
  void Set::backward_rows(const T* grad_h, const T* saved, const T* h_prev, int64_t rows,    \
                          int64_t hidden, T* grad_x_gates, T* grad_h_gates, T* grad_h_prev) { \
    impl::backward_rows<T>(grad_h, saved, h_prev, rows, hidden, grad_x_gates, grad_h_gates,   \
                           grad_h_prev);                                                      \
  }

}  // namespace fastdl::gru
