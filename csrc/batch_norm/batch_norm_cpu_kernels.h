// The inner loops of the CPU batch norm, compiled once per ISA
// (batch_norm_cpu_{scalar,avx2,avx512}.cpp include batch_norm_cpu_kernels.inc under
// that ISA's target) and chosen at run time by batch_norm_cpu.cpp.
//
// "run" kernels walk `n` contiguous values of one channel (a planar layout's
// plane, or a piece of one); "rows" kernels walk `rows` x `channels` values of a
// channels-last tensor, vectorised across channels.
#pragma once

#include <cstdint>

#include "batch_norm/batch_norm.h"

namespace fastdl::batch_norm {

// Values of one channel (run kernels) or pointers to per-channel arrays (rows
// kernels). Forward reads scale/shift; the backward passes also read mean, and the
// grad_input pass a, b, c (see BackwardCoefficients in batch_norm.h).
template <typename T>
struct ChannelValues {
  T scale, shift, mean, a, b, c;
};
template <typename T>
struct ChannelArrays {
  const T *scale, *shift, *mean, *a, *b, *c;
};

#define FASTDL_BATCH_NORM_KERNEL_LIST(T)                                                       \
  /* Mean and sum of squared deviations (m2) of x[0, n). */                                   \
  static void stats_run(const T* x, int64_t n, double& mean, double& m2);                      \
  /* Per-channel mean and m2 of `rows` rows. */                                                \
  static void stats_rows(const T* x, int64_t rows, int64_t channels, double* mean,            \
                         double* m2);                                                          \
  /* y = act(x * scale + shift (+ residual)); residual may be null. */                         \
  static void forward_run(Activation act, T slope, const T* x, const T* residual,              \
                          const ChannelValues<T>& v, int64_t n, T* y);                         \
  static void forward_rows(Activation act, T slope, const T* x, const T* residual,             \
                           const ChannelArrays<T>& v, int64_t rows, int64_t channels, T* y);   \
  /* Sums of dz and dz * (x - mean). */                                                         \
  static void backward_reduce_run(Activation act, T slope, const T* grad_y, const T* x,        \
                                  const T* residual, const ChannelValues<T>& v, int64_t n,     \
                                  double& sum_dz, double& sum_dz_xmu);                         \
  /* Per-channel sums over `rows` rows. */                                                     \
  static void backward_reduce_rows(Activation act, T slope, const T* grad_y, const T* x,       \
                                   const T* residual, const ChannelArrays<T>& v, int64_t rows, \
                                   int64_t channels, double* sum_dz, double* sum_dz_xmu);      \
  /* grad_x = dz * a + (x - mean) * b + c and grad_residual = dz (either may be null). */      \
  static void backward_input_run(Activation act, T slope, const T* grad_y, const T* x,         \
                                 const T* residual, const ChannelValues<T>& v, int64_t n,      \
                                 T* grad_x, T* grad_residual);                                 \
  static void backward_input_rows(Activation act, T slope, const T* grad_y, const T* x,        \
                                  const T* residual, const ChannelArrays<T>& v, int64_t rows,  \
                                  int64_t channels, T* grad_x, T* grad_residual);

struct ScalarKernels {
  FASTDL_BATCH_NORM_KERNEL_LIST(float)
  FASTDL_BATCH_NORM_KERNEL_LIST(double)
};
struct Avx2Kernels {
  FASTDL_BATCH_NORM_KERNEL_LIST(float)
};
struct Avx512Kernels {
  FASTDL_BATCH_NORM_KERNEL_LIST(float)
};

// Defines `Set`'s members for T by forwarding to the templates of the ISA
// namespace `impl` (in an ISA translation unit, after the kernels are included).
#define FASTDL_BATCH_NORM_DEFINE_KERNELS(Set, impl, T)                                          \
  void Set::stats_run(const T* x, int64_t n, double& mean, double& m2) {                        \
    impl::stats_run<T>(x, n, mean, m2);                                                         \
  }                                                                                             \
  void Set::stats_rows(const T* x, int64_t rows, int64_t channels, double* mean, double* m2) {  \
    impl::stats_rows<T>(x, rows, channels, mean, m2);                                           \
  }                                                                                             \
  void Set::forward_run(Activation act, T slope, const T* x, const T* residual,                 \
                        const ChannelValues<T>& v, int64_t n, T* y) {                           \
    impl::forward_run<T>(act, slope, x, residual, v, n, y);                                     \
  }                                                                                             \
  void Set::forward_rows(Activation act, T slope, const T* x, const T* residual,                \
                         const ChannelArrays<T>& v, int64_t rows, int64_t channels, T* y) {     \
    impl::forward_rows<T>(act, slope, x, residual, v, rows, channels, y);                       \
  }                                                                                             \
  void Set::backward_reduce_run(Activation act, T slope, const T* grad_y, const T* x,           \
                                const T* residual, const ChannelValues<T>& v, int64_t n,        \
                                double& sum_dz, double& sum_dz_xmu) {                           \
    impl::backward_reduce_run<T>(act, slope, grad_y, x, residual, v, n, sum_dz, sum_dz_xmu);    \
  }                                                                                             \
  void Set::backward_reduce_rows(Activation act, T slope, const T* grad_y, const T* x,          \
                                 const T* residual, const ChannelArrays<T>& v, int64_t rows,    \
                                 int64_t channels, double* sum_dz, double* sum_dz_xmu) {        \
    impl::backward_reduce_rows<T>(act, slope, grad_y, x, residual, v, rows, channels, sum_dz,   \
                                  sum_dz_xmu);                                                  \
  }                                                                                             \
  void Set::backward_input_run(Activation act, T slope, const T* grad_y, const T* x,            \
                               const T* residual, const ChannelValues<T>& v, int64_t n,         \
                               T* grad_x, T* grad_residual) {                                   \
    impl::backward_input_run<T>(act, slope, grad_y, x, residual, v, n, grad_x, grad_residual);  \
  }                                                                                             \
  void Set::backward_input_rows(Activation act, T slope, const T* grad_y, const T* x,           \
                                const T* residual, const ChannelArrays<T>& v, int64_t rows,     \
                                int64_t channels, T* grad_x, T* grad_residual) {                \
    impl::backward_input_rows<T>(act, slope, grad_y, x, residual, v, rows, channels, grad_x,    \
                                 grad_residual);                                                \
  }

}  // namespace fastdl::batch_norm
