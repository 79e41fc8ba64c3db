// The inner loops of the CPU LSTM cell, compiled once per ISA
// (lstm_cell_cpu_{scalar,avx2,avx512}.cpp include lstm_cell_cpu_kernels.inc under that
// ISA's target) and chosen at run time by lstm_cell_cpu.cpp. Each works on `rows`
// batch rows of hidden size `hidden`; gate tensors are (rows, 4 * hidden).
#pragma once

#include <cstdint>

namespace fastdl::lstm {

#define FASTDL_LSTM_KERNEL_LIST(T)                                                          \
  static void forward_rows(const T* gates, const T* c_prev, int64_t rows, int64_t hidden,   \
                           T* h, T* c, T* activated);                                       \
  static void backward_rows(const T* grad_h, const T* grad_c, const T* activated,          \
                            const T* c_prev, const T* c, int64_t rows, int64_t hidden,      \
                            T* grad_gates, T* grad_c_prev);

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
  void Set::forward_rows(const T* gates, const T* c_prev, int64_t rows, int64_t hidden,     \
                         T* h, T* c, T* activated) {                                         \
    impl::forward_rows<T>(gates, c_prev, rows, hidden, h, c, activated);                     \
  }                                                                                          \
  void Set::backward_rows(const T* grad_h, const T* grad_c, const T* activated,             \
                          const T* c_prev, const T* c, int64_t rows, int64_t hidden,         \
                          T* grad_gates, T* grad_c_prev) {                                   \
    impl::backward_rows<T>(grad_h, grad_c, activated, c_prev, c, rows, hidden, grad_gates,   \
                           grad_c_prev);                                                     \
  }

}  // namespace fastdl::lstm
