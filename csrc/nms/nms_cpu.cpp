// CPU NMS. Greedy NMS in score order, organised so that almost all work is
// vectorised and parallel:
//   1. boxes are radix-sorted by score and gathered into score order as structure
//      of arrays (nms_cpu.h), so candidates load 8/16 at a time;
//   2. a block of kBlock boxes is decided in order, each kept box suppressing the
//      rest of its block with a vector sweep;
//   3. all boxes kept in that block then sweep the whole tail at once, in parallel
//      chunks that stay in L1 while every pivot passes over them.
// A box is suppressed exactly when an earlier kept box overlaps it by more than
// the threshold, which is what the sequential algorithm computes, so the kept
// set is the same as torchvision's.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/box_math.h"
#include "common/checks.h"
#include "common/cpu_isa.h"
#include "nms/nms.h"
#include "nms/nms_cpu.h"

namespace fastdl::nms_cpu {
namespace {

// Boxes decided per block. Each block costs one parallel region (a fork/join), so
// blocks grow with N to keep the number of regions at most kMaxBlocks; the serial
// in-block work is then about 1/kMaxBlocks of the total.
constexpr int64_t kMinBlock = 256;
constexpr int64_t kMaxBlocks = 8;
static_assert(kMinBlock % kBoxesPerWord == 0, "blocks must end on a word boundary");
// 64 words = 1024 boxes x 5 arrays x 4 bytes = 20 KB: fits L1 with room to spare.
constexpr int64_t kWordsPerChunk = 64;
// Below this many pivot x word steps a sweep is cheaper than waking threads.
constexpr int64_t kMinStepsPerTask = 16384;
// Classes at least this large run alone with a parallel sweep; smaller ones run
// one class per task.
constexpr int64_t kLargeClass = 4096;

// Keys whose ascending order is descending score, NaN first (torch.sort's
// convention: NaN is larger than +inf) and -0.0 tied with +0.0.
template <typename T>
auto descending_score_key(T score) {
  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Key kSign = Key(1) << (8 * sizeof(T) - 1);
  if (std::isnan(score)) return Key(0);
  if (score == 0) score = 0;
  Key bits;
  std::memcpy(&bits, &score, sizeof(T));
  Key ascending = (bits & kSign) ? ~bits : (bits | kSign);
  return Key(~ascending);
}

uint64_t ascending_class_key(int64_t class_id) {
  return static_cast<uint64_t>(class_id) ^ (uint64_t(1) << 63);
}

// Stable LSD radix sort of `values` by `keys` (both permuted), one byte per pass;
// passes where every key has the same byte are skipped (common for the high
// bytes of scores and class ids). Stability gives ties to the lower index.
template <typename Key>
void stable_radix_sort(std::vector<Key>& keys, std::vector<int32_t>& values) {
  const size_t n = keys.size();
  std::vector<Key> keys_out(n);
  std::vector<int32_t> values_out(n);
  for (unsigned shift = 0; shift < 8 * sizeof(Key); shift += 8) {
    std::array<size_t, 257> offset{};
    for (Key k : keys) ++offset[((k >> shift) & 0xFF) + 1];
    if (offset[((keys[0] >> shift) & 0xFF) + 1] == n) continue;
    for (size_t d = 1; d < offset.size(); ++d) offset[d] += offset[d - 1];
    for (size_t i = 0; i < n; ++i) {
      size_t dst = offset[(keys[i] >> shift) & 0xFF]++;
      keys_out[dst] = keys[i];
      values_out[dst] = values[i];
    }
    keys.swap(keys_out);
    values.swap(values_out);
  }
}

template <typename T>
std::vector<int32_t> order_by_descending_score(const T* scores, int64_t n) {
  std::vector<decltype(descending_score_key(T()))> keys(n);
  std::vector<int32_t> order(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = descending_score_key(scores[i]);
    order[i] = static_cast<int32_t>(i);
  }
  stable_radix_sort(keys, order);
  return order;
}

// Gathers boxes (n x 4, contiguous) in `order` into `storage` as SortedBoxes,
// with the area of each box and zeroed padding past the end.
template <typename T>
SortedBoxes<T> gather_sorted(const T* boxes, const std::vector<int32_t>& order,
                             at::Tensor& storage) {
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t stride = n + kPadding;
  storage = at::zeros({5, stride}, c10::CppTypeToScalarType<T>::value);
  T* base = storage.data_ptr<T>();
  T *x1 = base, *y1 = base + stride, *x2 = base + 2 * stride, *y2 = base + 3 * stride,
    *area = base + 4 * stride;
  for (int64_t k = 0; k < n; ++k) {
    const T* box = boxes + 4 * static_cast<int64_t>(order[k]);
    x1[k] = box[0];
    y1[k] = box[1];
    x2[k] = box[2];
    y2[k] = box[3];
    area[k] = box_area(box[0], box[1], box[2], box[3]);
  }
  return {x1, y1, x2, y2, area};
}

template <typename T>
void suppress(CpuIsa isa, const SortedBoxes<T>& b, const int32_t* pivots, int64_t num_pivots,
              int64_t word_begin, int64_t word_end, T threshold, SuppressionWord* words) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == CpuIsa::avx512)
      return suppress_avx512(b, pivots, num_pivots, word_begin, word_end, threshold, words);
    if (isa == CpuIsa::avx2)
      return suppress_avx2(b, pivots, num_pivots, word_begin, word_end, threshold, words);
  }
  suppress_scalar(b, pivots, num_pivots, word_begin, word_end, threshold, words);
}

// Greedy NMS over sorted boxes [begin, begin + count); sets keep[begin + k] for
// each kept box k. The sweep of the tail is parallel unless called from inside
// a parallel region (batched_nms runs small classes one per task).
template <typename T>
void greedy_nms(CpuIsa isa, const SortedBoxes<T>& all, int64_t begin, int64_t count, T threshold,
                uint8_t* keep) {
  const SortedBoxes<T> b{all.x1 + begin, all.y1 + begin, all.x2 + begin, all.y2 + begin,
                         all.area + begin};
  const int64_t num_words = (count + kBoxesPerWord - 1) / kBoxesPerWord;
  std::vector<SuppressionWord> words(num_words, 0);
  const int64_t block_words = std::max(kMinBlock / kBoxesPerWord, (num_words + kMaxBlocks - 1) / kMaxBlocks);
  const int64_t block_size = block_words * kBoxesPerWord;
  std::vector<int32_t> pivots;
  for (int64_t block_begin = 0; block_begin < count; block_begin += block_size) {
    const int64_t block_end = std::min(count, block_begin + block_size);
    const int64_t block_end_word = (block_end + kBoxesPerWord - 1) / kBoxesPerWord;
    pivots.clear();
    for (int32_t i = static_cast<int32_t>(block_begin); i < block_end; ++i) {
      if ((words[i / kBoxesPerWord] >> (i % kBoxesPerWord)) & 1) continue;
      keep[begin + i] = 1;
      pivots.push_back(i);
      suppress(isa, b, &i, 1, i / kBoxesPerWord, block_end_word, threshold, words.data());
    }
    if (block_end == count || pivots.empty()) continue;
    const int64_t num_pivots = static_cast<int64_t>(pivots.size());
    const int64_t grain = std::max(kWordsPerChunk, kMinStepsPerTask / num_pivots);
    at::parallel_for(block_end_word, num_words, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t chunk = lo; chunk < hi; chunk += kWordsPerChunk)
        suppress(isa, b, pivots.data(), num_pivots, chunk, std::min(hi, chunk + kWordsPerChunk),
                 threshold, words.data());
    });
  }
}

// Indices (into the original boxes) of the kept positions, in `order`.
at::Tensor gather_kept(const std::vector<int32_t>& order, const std::vector<uint8_t>& keep) {
  int64_t num_kept = 0;
  for (uint8_t k : keep) num_kept += k;
  at::Tensor out = at::empty({num_kept}, at::kLong);
  int64_t* dst = out.data_ptr<int64_t>();
  for (size_t k = 0; k < order.size(); ++k)
    if (keep[k]) *dst++ = order[k];
  return out;
}

template <typename T>
at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const int64_t n = boxes.size(0);
  std::vector<int32_t> order = order_by_descending_score(scores.data_ptr<T>(), n);
  at::Tensor storage;
  SortedBoxes<T> sorted = gather_sorted(boxes.data_ptr<T>(), order, storage);
  std::vector<uint8_t> keep(n, 0);
  greedy_nms(cpu_isa(), sorted, 0, n, threshold_for<T>(iou_threshold), keep.data());
  return gather_kept(order, keep);
}

// Per-class NMS: boxes are grouped by class (stably, so each class stays in score
// order) and each class runs its own greedy NMS. Work is the sum of squares of
// the class sizes, never the square of the total.
template <typename T>
at::Tensor batched_nms_impl(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  const int64_t n = boxes.size(0);
  const std::vector<int32_t> score_order = order_by_descending_score(scores.data_ptr<T>(), n);
  const int64_t* class_ids = idxs.data_ptr<int64_t>();
  std::vector<uint64_t> class_keys(n);
  for (int64_t k = 0; k < n; ++k) class_keys[k] = ascending_class_key(class_ids[score_order[k]]);
  std::vector<int32_t> class_order = score_order;
  stable_radix_sort(class_keys, class_order);

  std::vector<std::pair<int64_t, int64_t>> small_classes;  // (begin, count)
  at::Tensor storage;
  SortedBoxes<T> sorted = gather_sorted(boxes.data_ptr<T>(), class_order, storage);
  std::vector<uint8_t> keep_by_position(n, 0);
  const CpuIsa isa = cpu_isa();
  const T threshold = threshold_for<T>(iou_threshold);
  for (int64_t begin = 0, end; begin < n; begin = end) {
    for (end = begin + 1; end < n && class_keys[end] == class_keys[begin];) ++end;
    if (end - begin >= kLargeClass)
      greedy_nms(isa, sorted, begin, end - begin, threshold, keep_by_position.data());
    else
      small_classes.emplace_back(begin, end - begin);
  }
  at::parallel_for(0, static_cast<int64_t>(small_classes.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c)
      greedy_nms(isa, sorted, small_classes[c].first, small_classes[c].second, threshold,
                 keep_by_position.data());
  });

  // Back to score order for the output.
  std::vector<uint8_t> keep_by_index(n, 0);
  for (int64_t k = 0; k < n; ++k) keep_by_index[class_order[k]] = keep_by_position[k];
  std::vector<uint8_t> keep_in_score_order(n);
  for (int64_t k = 0; k < n; ++k) keep_in_score_order[k] = keep_by_index[score_order[k]];
  return gather_kept(score_order, keep_in_score_order);
}

void check_cpu_dtype(const char* op, const at::Tensor& boxes) {
  check_dtype(op, "boxes", boxes, {c10::kFloat, c10::kDouble}, " on CPU");
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs("nms", boxes, scores, nullptr, iou_threshold);
  check_cpu_dtype("nms", boxes);
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor boxes_c = boxes.contiguous(), scores_c = scores.contiguous();
  if (boxes.scalar_type() == at::kDouble) return nms_impl<double>(boxes_c, scores_c, iou_threshold);
  return nms_impl<float>(boxes_c, scores_c, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs("batched_nms", boxes, scores, &idxs, iou_threshold);
  check_cpu_dtype("batched_nms", boxes);
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor boxes_c = boxes.contiguous(), scores_c = scores.contiguous();
  const at::Tensor idxs_c = idxs.to(at::kLong).contiguous();
  if (boxes.scalar_type() == at::kDouble)
    return batched_nms_impl<double>(boxes_c, scores_c, idxs_c, iou_threshold);
  return batched_nms_impl<float>(boxes_c, scores_c, idxs_c, iou_threshold);
}

}  // namespace
}  // namespace fastdl::nms_cpu

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("nms", &fastdl::nms_cpu::nms_cpu);
  m.impl("batched_nms", &fastdl::nms_cpu::batched_nms_cpu);
}
