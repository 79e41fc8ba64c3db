// The suppression loops of the CPU NMS, one per ISA. Vector versions are
// compiled with target attributes and picked at run time (common/cpu_isa.h).
// They compute IoU with the same operations in the same order as the scalar
// `iou_above` (max/min operand order chosen so NaN behaves like std::max), so
// every path keeps the same boxes. -ffp-contract=off keeps the compiler from
// fusing the union's multiply and subtract into an FMA, which would round differently.
#include "nms/nms_cpu.h"

// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (_mm512_undefined_ps).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "common/box_math.h"

namespace fastdl::nms_cpu {

template <typename T>
void suppress_scalar(const SortedBoxes<T>& b, const int32_t* pivots, int64_t num_pivots,
                     int64_t word_begin, int64_t word_end, T threshold, SuppressionWord* words) {
  for (int64_t p = 0; p < num_pivots; ++p) {
    const int64_t i = pivots[p];
    for (int64_t w = word_begin; w < word_end; ++w) {
      SuppressionWord bits = 0;
      for (int64_t lane = 0; lane < kBoxesPerWord; ++lane) {
        const int64_t j = w * kBoxesPerWord + lane;
        bits |= SuppressionWord(iou_above(b.x1[i], b.y1[i], b.x2[i], b.y2[i], b.area[i], b.x1[j],
                                          b.y1[j], b.x2[j], b.y2[j], b.area[j], threshold))
                << lane;
      }
      words[w] |= bits;
    }
  }
}
template void suppress_scalar<float>(const SortedBoxes<float>&, const int32_t*, int64_t, int64_t,
                                     int64_t, float, SuppressionWord*);
template void suppress_scalar<double>(const SortedBoxes<double>&, const int32_t*, int64_t,
                                      int64_t, int64_t, double, SuppressionWord*);

#if defined(__x86_64__)

__attribute__((target("avx2,fma"))) static inline int iou_above_mask8(
    const SortedBoxes<float>& b, int64_t j, __m256 px1, __m256 py1, __m256 px2, __m256 py2,
    __m256 parea, __m256 threshold) {
  const __m256 zero = _mm256_setzero_ps();
  // _mm256_max_ps(a, b) is a > b ? a : b, i.e. std::max(b, a) with b the pivot.
  __m256 xx1 = _mm256_max_ps(_mm256_loadu_ps(b.x1 + j), px1);
  __m256 yy1 = _mm256_max_ps(_mm256_loadu_ps(b.y1 + j), py1);
  __m256 xx2 = _mm256_min_ps(_mm256_loadu_ps(b.x2 + j), px2);
  __m256 yy2 = _mm256_min_ps(_mm256_loadu_ps(b.y2 + j), py2);
  __m256 w = _mm256_max_ps(_mm256_sub_ps(xx2, xx1), zero);
  __m256 h = _mm256_max_ps(_mm256_sub_ps(yy2, yy1), zero);
  __m256 inter = _mm256_mul_ps(w, h);
  __m256 uni = _mm256_sub_ps(_mm256_add_ps(parea, _mm256_loadu_ps(b.area + j)), inter);
  __m256 iou = _mm256_div_ps(inter, uni);
  return _mm256_movemask_ps(_mm256_cmp_ps(iou, threshold, _CMP_GT_OQ));
}

__attribute__((target("avx2,fma"))) void suppress_avx2(const SortedBoxes<float>& b,
                                                        const int32_t* pivots, int64_t num_pivots,
                                                        int64_t word_begin, int64_t word_end,
                                                        float threshold, SuppressionWord* words) {
  const __m256 thr = _mm256_set1_ps(threshold);
  for (int64_t p = 0; p < num_pivots; ++p) {
    const int64_t i = pivots[p];
    const __m256 px1 = _mm256_set1_ps(b.x1[i]), py1 = _mm256_set1_ps(b.y1[i]);
    const __m256 px2 = _mm256_set1_ps(b.x2[i]), py2 = _mm256_set1_ps(b.y2[i]);
    const __m256 parea = _mm256_set1_ps(b.area[i]);
    for (int64_t w = word_begin; w < word_end; ++w) {
      if (words[w] == SuppressionWord(0xFFFF)) continue;
      const int64_t j = w * kBoxesPerWord;
      int lo = iou_above_mask8(b, j, px1, py1, px2, py2, parea, thr);
      int hi = iou_above_mask8(b, j + 8, px1, py1, px2, py2, parea, thr);
      words[w] |= SuppressionWord(lo | (hi << 8));
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void suppress_avx512(
    const SortedBoxes<float>& b, const int32_t* pivots, int64_t num_pivots, int64_t word_begin,
    int64_t word_end, float threshold, SuppressionWord* words) {
  const __m512 thr = _mm512_set1_ps(threshold);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = 0; p < num_pivots; ++p) {
    const int64_t i = pivots[p];
    const __m512 px1 = _mm512_set1_ps(b.x1[i]), py1 = _mm512_set1_ps(b.y1[i]);
    const __m512 px2 = _mm512_set1_ps(b.x2[i]), py2 = _mm512_set1_ps(b.y2[i]);
    const __m512 parea = _mm512_set1_ps(b.area[i]);
    for (int64_t w = word_begin; w < word_end; ++w) {
      if (words[w] == SuppressionWord(0xFFFF)) continue;
      const int64_t j = w * kBoxesPerWord;
      __m512 xx1 = _mm512_max_ps(_mm512_loadu_ps(b.x1 + j), px1);
      __m512 yy1 = _mm512_max_ps(_mm512_loadu_ps(b.y1 + j), py1);
      __m512 xx2 = _mm512_min_ps(_mm512_loadu_ps(b.x2 + j), px2);
      __m512 yy2 = _mm512_min_ps(_mm512_loadu_ps(b.y2 + j), py2);
      __m512 wd = _mm512_max_ps(_mm512_sub_ps(xx2, xx1), zero);
      __m512 ht = _mm512_max_ps(_mm512_sub_ps(yy2, yy1), zero);
      __m512 inter = _mm512_mul_ps(wd, ht);
      __m512 uni = _mm512_sub_ps(_mm512_add_ps(parea, _mm512_loadu_ps(b.area + j)), inter);
      __m512 iou = _mm512_div_ps(inter, uni);
      words[w] |= SuppressionWord(_mm512_cmp_ps_mask(iou, thr, _CMP_GT_OQ));
    }
  }
}

#else  // Not x86-64: cpu_isa() never selects these.

void suppress_avx2(const SortedBoxes<float>& b, const int32_t* pivots, int64_t num_pivots,
                   int64_t word_begin, int64_t word_end, float threshold, SuppressionWord* words) {
  suppress_scalar(b, pivots, num_pivots, word_begin, word_end, threshold, words);
}
void suppress_avx512(const SortedBoxes<float>& b, const int32_t* pivots, int64_t num_pivots,
                     int64_t word_begin, int64_t word_end, float threshold,
                     SuppressionWord* words) {
  suppress_scalar(b, pivots, num_pivots, word_begin, word_end, threshold, words);
}

#endif

}  // namespace fastdl::nms_cpu
