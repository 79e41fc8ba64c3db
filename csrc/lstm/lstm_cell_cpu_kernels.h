// The inner loops of the CPU LSTM cell, compiled once per ISA
// (lstm_cell_cpu_{scalar,avx2,avx512}.cpp include lstm_cell_cpu_kernels.inc under that
// ISA's target) and chosen at run time by lstm_cell_cpu.cpp. Each works on `rows`
// batch rows of hidden size `hidden`; gate tensors are (rows, 4 * hidden).
#pragma once

#include <cstdint>

#include "common/prefetch.h"
#include "common/tile_product.h"

namespace fastdl::lstm {

// Columns per block of a recurrence panel (see lstm_recurrence_cpu.cpp): 8 vectors.
#define FASTDL_LSTM_KERNEL_LIST(T)                                                          \
  static int64_t panel_block(T);                                                            \
  /* out[g * units + u] = x[g * x_stride + u] + bias[g * x_stride + u] + sum over       */ \
  /*   k < k_size of W[g][u][k] * h[k] (g < 4 gates, u < units), W packed by pack_units.  */ \
  static void gates_gemv(const T* panel, int64_t k_size, int64_t units, const T* h,         \
                         const T* x, const T* bias, int64_t x_stride, T* out);              \
  /* One row's cell on `units` units: gates (4 * units, [i f g o]) -> h, c, and the     */ \
  /* activated gates at act[g * act_stride + u]. */                                         \
  static void forward_units(const T* gates, const T* c_prev, int64_t units, T* h, T* c,    \
                            T* act, int64_t act_stride);                                    \
  /* Units per block of the tiled recurrence's panel: one vector.                       */ \
  static int64_t unit_block(T);                                                             \
  FASTDL_TILE_PRODUCT_KERNEL_LIST(T)                                                        \
  /* One step of `units` units (from unit `first`) for every row, input projection     */ \
  /* included, from the block panel of lstm_cell_cpu_kernels.inc and rows packed by     */ \
  /* pack_rows: h, c, act as forward_rows writes them, and h packed for the next step   */ \
  /* (if h_pack_next); only k in [k_begin, k_end) of [x | h], the sums in between kept  */ \
  /* in partial.                                                                        */ \
  static void step_blocks(const T* panel, int64_t units, int64_t first, int64_t batch,     \
                          const T* x_pack, int64_t in_size, const T* h_pack, const T* bias, \
                          const T* c_prev, int64_t hidden, T* h, T* c, T* act,              \
                          T* h_pack_next, int64_t k_begin, int64_t k_end, T* partial);      \
  static void forward_rows(const T* gates, const T* c_prev, int64_t rows, int64_t hidden,   \
                           T* h, T* c, T* activated);                                       \
  /* The cell backward on `units` units of `rows` rows (pointers at the first unit,    */ \
  /* rows hidden apart, gates 4 * hidden); grad_c_prev may alias grad_c.                */ \
  static void backward_rows(const T* grad_h, const T* grad_c, const T* activated,          \
                            const T* c_prev, const T* c, int64_t rows, int64_t units,       \
                            int64_t hidden, T* grad_gates, T* grad_c_prev);                 \
  /* out (m, columns) = gates[:, :m]^T x inputs[:, :columns].                          */ \
  static void gates_transposed_times(const T* gates, int64_t gates_stride, int64_t m,       \
                                     const T* inputs, int64_t inputs_stride,                \
                                     int64_t columns, int64_t k_size, T* out,               \
                                     int64_t out_stride);

struct ScalarKernels {
  FASTDL_LSTM_KERNEL_LIST(float)
  FASTDL_LSTM_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_LSTM_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_LSTM_KERNEL_LIST(float)
};

#define FASTDL_LSTM_DEFINE_KERNELS(Set, impl, T)                                             \
  int64_t Set::panel_block(T) { return impl::kPanelVectors * impl::Vec<T>::kWidth; }         \
  void Set::gates_gemv(const T* panel, int64_t k_size, int64_t units, const T* h, const T* x, \
                       const T* bias, int64_t x_stride, T* out) {                            \
    impl::gates_gemv<T>(panel, k_size, units, h, x, bias, x_stride, out);                    \
  }                                                                                          \
  void Set::forward_units(const T* gates, const T* c_prev, int64_t units, T* h, T* c, T* act, \
                          int64_t act_stride) {                                              \
    impl::forward_units<T>(gates, c_prev, units, h, c, act, act_stride);                     \
  }                                                                                          \
  int64_t Set::unit_block(T) { return impl::Vec<T>::kWidth; }                               \
  FASTDL_TILE_PRODUCT_DEFINE_KERNELS(Set, impl, T)                                          \
  void Set::step_blocks(const T* panel, int64_t units, int64_t first, int64_t batch,       \
                        const T* x_pack, int64_t in_size, const T* h_pack, const T* bias,    \
                        const T* c_prev, int64_t hidden, T* h, T* c, T* act,                 \
                        T* h_pack_next, int64_t k_begin, int64_t k_end, T* partial) {        \
    impl::step_blocks<T>(panel, units, first, batch, x_pack, in_size, h_pack, bias, c_prev,   \
                         hidden, h, c, act, h_pack_next, k_begin, k_end, partial);           \
  }                                                                                          \
  void Set::forward_rows(const T* gates, const T* c_prev, int64_t rows, int64_t hidden,     \
                         T* h, T* c, T* activated) {                                         \
    impl::forward_rows<T>(gates, c_prev, rows, hidden, h, c, activated);                     \
  }                                                                                          \
  void Set::backward_rows(const T* grad_h, const T* grad_c, const T* activated,             \
                          const T* c_prev, const T* c, int64_t rows, int64_t units,          \
                          int64_t hidden, T* grad_gates, T* grad_c_prev) {                   \
    impl::backward_rows<T>(grad_h, grad_c, activated, c_prev, c, rows, units, hidden,        \
                           grad_gates, grad_c_prev);                                         \
  }                                                                                          \
  void Set::gates_transposed_times(const T* gates, int64_t gates_stride, int64_t m,          \
                                   const T* inputs, int64_t inputs_stride, int64_t columns,  \
                                   int64_t k_size, T* out, int64_t out_stride) {             \
    impl::gates_transposed_times<T>(gates, gates_stride, m, inputs, inputs_stride, columns,   \
                                    k_size, out, out_stride);                                \
  }

}  // namespace fastdl::lstm
