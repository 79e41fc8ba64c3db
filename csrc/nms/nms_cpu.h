// Internals of the CPU NMS kernel, shared by nms_cpu.cpp (sorting, greedy
// sweep, op registration) and nms_cpu_simd.cpp (the per-ISA suppression loops).
#pragma once

#include <cstdint>

namespace fastdl::nms_cpu {

// Boxes in score order as structure of arrays, so that 8 or 16 consecutive
// candidates load as one vector. The arrays extend kPadding boxes past the last
// one, so the last, partial word of candidates can be loaded whole.
template <typename T>
struct SortedBoxes {
  const T* x1;
  const T* y1;
  const T* x2;
  const T* y2;
  const T* area;
};

// Suppression state: bit (j % 16) of word j / 16 is set once box j is suppressed.
using SuppressionWord = uint16_t;
constexpr int64_t kBoxesPerWord = 16;
constexpr int64_t kPadding = kBoxesPerWord;

// For every pivot p (a kept box) and every box j in words [word_begin, word_end):
// set j's bit if IoU(p, j) > threshold. Bits of boxes at or before a pivot may be
// set too; the greedy sweep never reads them again.
template <typename T>
void suppress_scalar(const SortedBoxes<T>& boxes, const int32_t* pivots, int64_t num_pivots,
                     int64_t word_begin, int64_t word_end, T threshold, SuppressionWord* words);
void suppress_avx2(const SortedBoxes<float>& boxes, const int32_t* pivots, int64_t num_pivots,
                   int64_t word_begin, int64_t word_end, float threshold, SuppressionWord* words);
void suppress_avx512(const SortedBoxes<float>& boxes, const int32_t* pivots, int64_t num_pivots,
                     int64_t word_begin, int64_t word_end, float threshold,
                     SuppressionWord* words);

}  // namespace fastdl::nms_cpu
