// The inner loops of the CPU batch norm, compiled once per ISA
// (batch_norm_cpu_{scalar,avx2,avx512}.cpp include batch_norm_cpu_kernels.inc under
// that ISA's target) and chosen at run time by batch_norm_cpu.cpp.
//
// "run" kernels walk planar data: runs of contiguous values of one channel each
// (planes, or pieces of one); "rows" kernels walk `rows` x `channels` values of a
// channels-last tensor, vectorised across channels.
#pragma once

#include <cstdint>

#include "batch_norm/batch_norm.h"

namespace fastdl::batch_norm {

// Per-channel coefficient arrays. Forward reads scale/shift; the backward passes also
// read mean, and the grad_input pass a, b, c (see batch_norm.h); arrays a pass does
// not read may be null.
template <typename T>
struct ChannelArrays {
  const T *scale, *shift, *mean, *a, *b, *c;
};

// Planar data for a run kernel: `planes` consecutive runs of `n` values (run p starts
// at p * n) belonging to channels (first_channel + p) % channels. Small planes (7x7)
// go many to a call; a large plane is cut into pieces, one run per call.
struct Runs {
  int64_t n, planes, first_channel, channels;
};

#define FASTDL_BATCH_NORM_KERNEL_LIST(T)                                                       \
  /* Mean and sum of squared deviations (m2) of each run. */                                  \
  static void stats_run(const T* x, const Runs& r, double* mean, double* m2);                  \
  /* Per-channel mean and m2 of `rows` rows. */                                                \
  static void stats_rows(const T* x, int64_t rows, int64_t channels, double* mean,            \
                         double* m2);                                                          \
  /* y = act(x * scale + shift (+ residual)); residual may be null. */                         \
  static void forward_run(Activation act, T slope, const T* x, const T* residual,              \
                          const ChannelArrays<T>& v, const Runs& r, T* y);                     \
  static void forward_rows(Activation act, T slope, const T* x, const T* residual,             \
                           const ChannelArrays<T>& v, int64_t rows, int64_t channels, T* y);   \
  /* Sums of dz and dz * (x - mean) of each run; dz itself stored unless dz is null. */      \
  static void backward_reduce_run(Activation act, T slope, const T* grad_y, const T* x,        \
                                  const T* residual, const ChannelArrays<T>& v, const Runs& r, \
                                  double* sum_dz, double* sum_dz_xmu, T* dz);                  \
  /* Per-channel sums over `rows` rows. */                                                     \
  static void backward_reduce_rows(Activation act, T slope, const T* grad_y, const T* x,       \
                                   const T* residual, const ChannelArrays<T>& v, int64_t rows, \
                                   int64_t channels, double* sum_dz, double* sum_dz_xmu,       \
                                   T* dz);                                                     \
  /* grad_x = dz * a + (x - mean) * b + c and grad_residual = dz (either may be null). */      \
  static void backward_input_run(Activation act, T slope, const T* grad_y, const T* x,         \
                                 const T* residual, const ChannelArrays<T>& v, const Runs& r,  \
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
  void Set::stats_run(const T* x, const Runs& r, double* mean, double* m2) {                    \
    impl::stats_run<T>(x, r, mean, m2);                                                         \
  }                                                                                             \
  void Set::stats_rows(const T* x, int64_t rows, int64_t channels, double* mean, double* m2) {  \
    impl::stats_rows<T>(x, rows, channels, mean, m2);                                           \
  }                                                                                             \
  void Set::forward_run(Activation act, T slope, const T* x, const T* residual,                 \
                        const ChannelArrays<T>& v, const Runs& r, T* y) {                       \
    impl::forward_run<T>(act, slope, x, residual, v, r, y);                                     \
  }                                                                                             \
  void Set::forward_rows(Activation act, T slope, const T* x, const T* residual,                \
                         const ChannelArrays<T>& v, int64_t rows, int64_t channels, T* y) {     \
    impl::forward_rows<T>(act, slope, x, residual, v, rows, channels, y);                       \
  }                                                                                             \
  void Set::backward_reduce_run(Activation act, T slope, const T* grad_y, const T* x,           \
                                const T* residual, const ChannelArrays<T>& v, const Runs& r,    \
                                double* sum_dz, double* sum_dz_xmu, T* dz) {                    \
    impl::backward_reduce_run<T>(act, slope, grad_y, x, residual, v, r, sum_dz, sum_dz_xmu, dz); \
  }                                                                                             \
  void Set::backward_reduce_rows(Activation act, T slope, const T* grad_y, const T* x,          \
                                 const T* residual, const ChannelArrays<T>& v, int64_t rows,    \
                                 int64_t channels, double* sum_dz, double* sum_dz_xmu, T* dz) { \
    impl::backward_reduce_rows<T>(act, slope, grad_y, x, residual, v, rows, channels, sum_dz,   \
                                  sum_dz_xmu, dz);                                              \
  }                                                                                             \
  void Set::backward_input_run(Activation act, T slope, const T* grad_y, const T* x,            \
                               const T* residual, const ChannelArrays<T>& v, const Runs& r,     \
                               T* grad_x, T* grad_residual) {                                   \
    impl::backward_input_run<T>(act, slope, grad_y, x, residual, v, r, grad_x, grad_residual);  \
  }                                                                                             \
  void Set::backward_input_rows(Activation act, T slope, const T* grad_y, const T* x,           \
                                const T* residual, const ChannelArrays<T>& v, int64_t rows,     \
                                int64_t channels, T* grad_x, T* grad_residual) {                \
    impl::backward_input_rows<T>(act, slope, grad_y, x, residual, v, rows, channels, grad_x,    \
                                 grad_residual);                                                \
  }

}  // namespace fastdl::batch_norm
