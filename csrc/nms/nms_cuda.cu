// CUDA kernels of nms and batched_nms (schemas in nms.cpp).
//
// Boxes are put in processing order (score descending; for batched_nms grouped by
// class first), a mask kernel records which later boxes each box suppresses, 64
// columns per uint64 word, and a single-block kernel runs the greedy pass over the
// mask on the GPU. The host only reads back the kept count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common/box_math.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "nms/nms.h"

namespace fastdl {
namespace {

using cuda::ceil_div;

// Boxes per mask word: a tile is kTile rows x kTile columns, one word per row.
constexpr int kTile = 64;
// The greedy pass is one block; its parallel part is ORing kept rows into the
// removed bitset, which wants enough warps in flight to cover memory latency.
constexpr int kReduceThreads = 512;

// Aligned so that float boxes move as one 16-byte shared-memory access.
template <typename T>
struct alignas(4 * sizeof(T)) Box {
  T x1, y1, x2, y2;
};

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ Box<acc_t> load_box(const scalar_t* __restrict__ boxes, int i) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    // Sorted boxes are a fresh contiguous tensor, so rows are 16-byte aligned.
    const float4 v = reinterpret_cast<const float4*>(boxes)[i];
    return {v.x, v.y, v.z, v.w};
  } else {
    const scalar_t* p = boxes + 4 * static_cast<int64_t>(i);
    return {static_cast<acc_t>(p[0]), static_cast<acc_t>(p[1]), static_cast<acc_t>(p[2]),
            static_cast<acc_t>(p[3])};
  }
}

// Where the mask words live. Only tiles (row block rb, column block cb) with
// rb <= cb <= last(rb) exist; they are numbered row block by row block, and row
// block rb stores its 64 rows one after another, each width(rb) words long, so that
// the greedy pass reads a row's words contiguously.
//   nms:         last(rb) = row_blocks - 1 (upper triangle, closed form)
//   batched_nms: last(rb) = column block of the end of the last row's class;
//                tile_end[rb] = tiles in row blocks 0..rb
template <bool kBatched>
struct MaskLayout {
  const int64_t* tile_end;
  int row_blocks;

  __device__ int64_t first_tile(int rb) const {
    if constexpr (kBatched) {
      return rb == 0 ? 0 : tile_end[rb - 1];
    } else {
      return static_cast<int64_t>(rb) * row_blocks - static_cast<int64_t>(rb) * (rb - 1) / 2;
    }
  }

  __device__ int width(int rb) const {
    if constexpr (kBatched) {
      return static_cast<int>(tile_end[rb] - first_tile(rb));
    } else {
      return row_blocks - rb;
    }
  }

  // The row block holding `tile`: the largest rb with first_tile(rb) <= tile.
  __device__ int row_block_of(int64_t tile) const {
    int rb;
    if constexpr (kBatched) {
      int lo = 0, hi = row_blocks - 1;
      while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (tile_end[mid] > tile) hi = mid; else lo = mid + 1;
      }
      rb = lo;
    } else {
      // first_tile(r) <= tile  <=>  r <= (b - sqrt(b^2 - 8 tile)) / 2 with b = 2R + 1;
      // the integer discriminant is exact in double, the steps below fix rounding.
      const int64_t b = 2 * static_cast<int64_t>(row_blocks) + 1;
      const double root = sqrt(static_cast<double>(b * b - 8 * tile));
      rb = static_cast<int>((static_cast<double>(b) - root) / 2);
      rb = max(0, min(rb, row_blocks - 1));
      while (rb > 0 && first_tile(rb) > tile) --rb;
      while (rb + 1 < row_blocks && first_tile(rb + 1) <= tile) ++rb;
    }
    return rb;
  }

  // Word 0 of row 0 of row block rb; row r's word for column block cb is at
  // row_block(rb)[r * width(rb) + (cb - rb)].
  __device__ const uint64_t* row_block(const uint64_t* mask, int rb) const {
    return mask + kTile * first_tile(rb);
  }
};

// One block per tile: thread t sets bit j of its row's word when box
// (row block start + t) suppresses box (column block start + j), i.e. j comes
// later in processing order, shares the class, and their IoU is above threshold.
template <typename scalar_t, bool kBatched>
__global__ void __launch_bounds__(kTile)
    nms_mask_kernel(const scalar_t* __restrict__ boxes, int n,
                    at::opmath_type<scalar_t> threshold, MaskLayout<kBatched> layout,
                    const int* __restrict__ segment_end, uint64_t* __restrict__ mask) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ Box<acc_t> col_boxes[kTile];
  __shared__ acc_t col_areas[kTile];

  const int64_t tile = blockIdx.x;
  const int rb = layout.row_block_of(tile);
  const int64_t first = layout.first_tile(rb);
  const int cb = rb + static_cast<int>(tile - first);
  const int row_start = rb * kTile;
  const int col_start = cb * kTile;
  const int rows = min(n - row_start, kTile);
  const int cols = min(n - col_start, kTile);
  const int t = threadIdx.x;

  if (t < cols) {
    const Box<acc_t> b = load_box(boxes, col_start + t);
    col_boxes[t] = b;
    col_areas[t] = box_area(b.x1, b.y1, b.x2, b.y2);
  }
  __syncthreads();
  if (t >= rows) return;

  const int i = row_start + t;
  const Box<acc_t> a = load_box(boxes, i);
  const acc_t a_area = box_area(a.x1, a.y1, a.x2, a.y2);
  int end = cols;
  if constexpr (kBatched) end = min(end, segment_end[i] - col_start);
  uint64_t bits = 0;
  for (int j = rb == cb ? t + 1 : 0; j < end; ++j) {
    const Box<acc_t> b = col_boxes[j];
    if (iou_above(a.x1, a.y1, a.x2, a.y2, a_area, b.x1, b.y1, b.x2, b.y2, col_areas[j], threshold))
      bits |= uint64_t(1) << j;
  }
  mask[kTile * first + static_cast<int64_t>(t) * layout.width(rb) + (cb - rb)] = bits;
}

// The greedy pass, one block. For each row block in order, warp 0 decides which of
// its 64 boxes survive (sequential within the word, using the diagonal tile), then
// all threads OR the kept rows' later words into the `removed` bitset. Kept boxes
// are written as out_map[position], compactly and in order; *out_count gets the
// total. `removed` is dynamic shared memory after the keep word, or
// `global_removed` when it does not fit.
template <bool kBatched>
__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const uint64_t* __restrict__ mask, MaskLayout<kBatched> layout, int n,
                      uint64_t* global_removed, const int64_t* __restrict__ out_map,
                      int64_t* __restrict__ out, int64_t* __restrict__ out_count) {
  extern __shared__ uint64_t shared_words[];
  uint64_t& keep_word = shared_words[0];
  uint64_t* removed = global_removed != nullptr ? global_removed : shared_words + 1;

  const int row_blocks = layout.row_blocks;
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const bool leader_warp = tid < 32;
  for (int w = tid; w < row_blocks; w += blockDim.x) removed[w] = 0;

  // Warp 0 holds the diagonal words of the current row block: rows lane and
  // lane + 32. The next block's are loaded ahead, as they don't depend on `removed`.
  auto load_diagonal = [&](int rb, uint64_t& lo, uint64_t& hi) {
    const uint64_t* words = layout.row_block(mask, rb);
    const int w = layout.width(rb);
    const int rows = min(n - rb * kTile, kTile);
    lo = lane < rows ? words[static_cast<int64_t>(lane) * w] : 0;
    hi = lane + 32 < rows ? words[static_cast<int64_t>(lane + 32) * w] : 0;
  };
  uint64_t diag_lo = 0, diag_hi = 0;
  if (leader_warp) load_diagonal(0, diag_lo, diag_hi);
  int kept = 0;  // meaningful in warp 0
  __syncthreads();

  for (int rb = 0; rb < row_blocks; ++rb) {
    if (leader_warp) {
      uint64_t next_lo = 0, next_hi = 0;
      if (rb + 1 < row_blocks) load_diagonal(rb + 1, next_lo, next_hi);

      const int rows = min(n - rb * kTile, kTile);
      const uint64_t valid = rows == kTile ? ~uint64_t(0) : (uint64_t(1) << rows) - 1;
      uint64_t candidates = ~removed[rb] & valid;
      uint64_t keep = 0;
      while (candidates != 0) {
        const int bit = __ffsll(static_cast<long long>(candidates)) - 1;
        keep |= uint64_t(1) << bit;
        // Uniform across the warp: every lane tracks the same candidates.
        const uint64_t suppressed =
            __shfl_sync(cuda::kFullWarpMask, bit < 32 ? diag_lo : diag_hi, bit % 32);
        candidates &= candidates - 1;
        candidates &= ~suppressed;
      }
      const int64_t row = static_cast<int64_t>(rb) * kTile;
      if ((keep >> lane) & 1)
        out[kept + __popcll(keep & ((uint64_t(1) << lane) - 1))] = out_map[row + lane];
      if ((keep >> (lane + 32)) & 1)
        out[kept + __popcll(keep & ((uint64_t(1) << (lane + 32)) - 1))] = out_map[row + lane + 32];
      kept += __popcll(keep);
      if (lane == 0) keep_word = keep;
      diag_lo = next_lo;
      diag_hi = next_hi;
    }
    __syncthreads();

    const uint64_t keep = keep_word;
    if (keep != 0) {
      const uint64_t* words = layout.row_block(mask, rb);
      const int width = layout.width(rb);
      for (int w = 1 + tid; w < width; w += blockDim.x) {
        uint64_t acc = 0;
        for (uint64_t k = keep; k != 0; k &= k - 1)
          acc |= words[static_cast<int64_t>(__ffsll(static_cast<long long>(k)) - 1) * width + w];
        removed[rb + w] |= acc;
      }
    }
    // Also orders this iteration's read of keep_word before the next one's write.
    __syncthreads();
  }
  if (tid == 0) *out_count = kept;
}

// segment_end[i]: one past the last position of box i's class (classes sorted
// ascending). The last row of each row block also records how many tiles that
// row block needs: up to the column block holding its class's end.
template <typename index_t>
__global__ void class_segments_kernel(const index_t* __restrict__ classes, int n,
                                      int* __restrict__ segment_end,
                                      int64_t* __restrict__ tiles_per_row_block) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= n) return;
  const int i = static_cast<int>(index);
  const index_t c = classes[i];
  int lo = i + 1, hi = n;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (classes[mid] > c) hi = mid; else lo = mid + 1;
  }
  segment_end[i] = lo;
  if (i % kTile == kTile - 1 || i == n - 1) {
    const int rb = i / kTile;
    tiles_per_row_block[rb] = (lo - 1) / kTile - rb + 1;
  }
}

// Greedy NMS over `boxes` (contiguous, in processing order); returns out_map[i] for
// each kept position i, in order.
template <bool kBatched>
at::Tensor greedy_nms(const at::Tensor& boxes, double iou_threshold, MaskLayout<kBatched> layout,
                      int64_t num_tiles, const int* segment_end, const at::Tensor& out_map) {
  const int n = static_cast<int>(boxes.size(0));
  const int row_blocks = layout.row_blocks;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto long_options = boxes.options().dtype(at::kLong);

  // Allocation comes first so that a mask too large for memory fails as the
  // out-of-memory error it is, before the grid limit could.
  at::Tensor mask = at::empty({num_tiles * kTile}, long_options);
  auto* mask_words = reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>());
  TORCH_CHECK(num_tiles <= std::numeric_limits<int32_t>::max(), "fastdl: too many boxes for the ",
              "CUDA NMS mask grid (", n, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fastdl_nms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    nms_mask_kernel<scalar_t, kBatched><<<static_cast<unsigned>(num_tiles), kTile, 0, stream>>>(
        boxes.const_data_ptr<scalar_t>(), n, threshold_for<acc_t>(iou_threshold), layout,
        segment_end, mask_words);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // Word 0 of the dynamic shared memory passes the keep word; the bitset follows
  // when it fits.
  const size_t bitset_bytes = static_cast<size_t>(row_blocks) * sizeof(uint64_t);
  const bool bitset_in_shared = bitset_bytes + sizeof(uint64_t) <= cuda::kDefaultSharedMemoryBytes;
  uint64_t* global_removed = nullptr;
  at::Tensor global_bitset;
  if (!bitset_in_shared) {
    global_bitset = at::empty({row_blocks}, long_options);
    global_removed = reinterpret_cast<uint64_t*>(global_bitset.mutable_data_ptr<int64_t>());
  }
  at::Tensor out = at::empty({n}, long_options);
  at::Tensor count = at::empty({}, long_options);
  const size_t shared_bytes = sizeof(uint64_t) + (bitset_in_shared ? bitset_bytes : 0);
  nms_reduce_kernel<kBatched><<<1, kReduceThreads, shared_bytes, stream>>>(
      mask_words, layout, n, global_removed, out_map.const_data_ptr<int64_t>(),
      out.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // A copy, so the N-long buffer is not kept alive behind a short result.
  return out.narrow(0, 0, count.item<int64_t>()).clone();
}

// CUDA's radix sort orders NaN by its sign bit, so a negative NaN (what x86 makes of
// 0 * inf, say) would sort last; the CPU kernel and torch.sort on CPU put every NaN
// first. Making them all positive NaN gives the same order on both devices.
at::Tensor nan_as_positive(const at::Tensor& scores) {
  return scores.masked_fill(at::isnan(scores), std::numeric_limits<double>::quiet_NaN());
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs("nms", boxes, scores, nullptr, iou_threshold);
  check_dtype("nms", "boxes", boxes, {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16},
              " on CUDA");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Stable descending sort: NaN first, ties by lower index, the CPU kernel's order.
  const at::Tensor order =
      std::get<1>(at::sort(nan_as_positive(scores), /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const int row_blocks = static_cast<int>(ceil_div<int64_t>(n, kTile));
  const MaskLayout<false> layout{nullptr, row_blocks};
  const int64_t num_tiles = static_cast<int64_t>(row_blocks) * (row_blocks + 1) / 2;
  return greedy_nms(sorted_boxes, iou_threshold, layout, num_tiles, nullptr, order);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_nms_inputs("batched_nms", boxes, scores, &idxs, iou_threshold);
  check_dtype("batched_nms", "boxes", boxes,
              {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16}, " on CUDA");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Score order, then a stable sort by class: each class becomes one contiguous
  // segment in score order, so boxes only meet boxes of their class in the mask.
  // by_class[i] is the score rank of position i.
  const at::Tensor score_order =
      std::get<1>(at::sort(nan_as_positive(scores), /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto class_sort =
      at::sort(idxs.index_select(0, score_order), /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& classes = std::get<0>(class_sort);
  const at::Tensor& by_class = std::get<1>(class_sort);
  const at::Tensor order = score_order.index_select(0, by_class);
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();

  const int row_blocks = static_cast<int>(ceil_div<int64_t>(n, kTile));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor segment_end = at::empty({n}, boxes.options().dtype(at::kInt));
  at::Tensor tiles = at::empty({row_blocks}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(classes.scalar_type(), "fastdl_batched_nms_segments", [&] {
    class_segments_kernel<index_t><<<cuda::grid_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
        classes.const_data_ptr<index_t>(), static_cast<int>(n), segment_end.mutable_data_ptr<int>(),
        tiles.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The mask holds only tiles within class segments, so its size follows the class
  // sizes rather than N^2; reading the tile total costs one small sync.
  const at::Tensor tile_end = at::cumsum(tiles, 0);
  const int64_t num_tiles = tile_end.select(0, row_blocks - 1).item<int64_t>();
  const MaskLayout<true> layout{tile_end.const_data_ptr<int64_t>(), row_blocks};
  const at::Tensor kept_ranks = greedy_nms(sorted_boxes, iou_threshold, layout, num_tiles,
                                           segment_end.const_data_ptr<int>(), by_class);
  // Kept boxes come out class by class; ascending score rank is the output order.
  const at::Tensor ranks = std::get<0>(at::sort(kept_ranks, /*dim=*/0, /*descending=*/false));
  return score_order.index_select(0, ranks);
}

}  // namespace
}  // namespace fastdl

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("nms", TORCH_FN(fastdl::nms_cuda));
  m.impl("batched_nms", TORCH_FN(fastdl::batched_nms_cuda));
}
