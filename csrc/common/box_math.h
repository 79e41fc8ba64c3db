// Box geometry shared by the CPU and CUDA NMS kernels. The expressions follow
// torchvision's CPU NMS term for term (same max/min operand order, same
// evaluation order of the union), so the same float inputs give the same IoU bits.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "common/host_device.h"

namespace fastdl {

// std::max/std::min semantics (NaN in `b` yields `a`), written out so that
// host and device code agree.
template <typename T>
FASTDL_HOST_DEVICE T max_of(T a, T b) { return a < b ? b : a; }
template <typename T>
FASTDL_HOST_DEVICE T min_of(T a, T b) { return b < a ? b : a; }

// A product that nvcc may not fuse with a following add into an FMA (which rounds
// once instead of twice), so GPU IoU bits equal the CPU's. Host code is built
// with -ffp-contract=off, which gives the same guarantee there.
template <typename T>
FASTDL_HOST_DEVICE T mul_unfused(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return __fmul_rn(a, b);
  else if constexpr (std::is_same_v<T, double>) return __dmul_rn(a, b);
  else return a * b;
#else
  return a * b;
#endif
}

template <typename T>
FASTDL_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) { return mul_unfused(x2 - x1, y2 - y1); }

// IoU(a, b) > threshold, for boxes (x1, y1, x2, y2) with precomputed areas.
// Zero-area pairs give 0/0 = NaN, which never exceeds the threshold.
template <typename T>
FASTDL_HOST_DEVICE bool iou_above(T ax1, T ay1, T ax2, T ay2, T a_area,
                                  T bx1, T by1, T bx2, T by2, T b_area, T threshold) {
  T w = max_of(T(0), min_of(ax2, bx2) - max_of(ax1, bx1));
  T h = max_of(T(0), min_of(ay2, by2) - max_of(ay1, by1));
  T inter = mul_unfused(w, h);
  return inter / (a_area + b_area - inter) > threshold;
}

// The largest T not above `threshold`. For a T-valued IoU x,
// `x > threshold_for<T>(t)` equals the exact comparison `double(x) > t`, which is
// what torchvision does; rounding t to nearest could round it up and keep a box
// that should go.
template <typename T>
inline T threshold_for(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

}  // namespace fastdl
