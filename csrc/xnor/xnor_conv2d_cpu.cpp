// CPU binary convolution: sign packing, and the packed convolution as a binary
// GEMM over a gathered tile of receptive fields.
//
// Packed convolution, per task (group, tile of output pixels, chunk of output
// channels):
//   1. gather: each output pixel's receptive field, tap by tap, into one row of
//      row_words() words (a packed im2col: 64x smaller than float im2col, and only
//      one L1-sized tile of it exists at a time). Taps in the zero padding get zero
//      words; input bits past the channel count are masked off here.
//   2. mismatch counts: popcount(row XOR weight row) summed over the row, for every
//      (pixel, output channel) of the task, in register tiles (the ISA kernels).
//   3. epilogue: dot = matched_bits - 2 * (count - padding_count), where
//      matched_bits counts the in-image taps' channels and padding_count is what
//      the zero words of padded taps added (the popcount of the weight's bits at
//      those taps; both from a per-call table of border classes), then scale, bias
//      and the store in the output's dtype and layout.
// Weights are used in place (no per-call repacking); they are copied only if
// their padding bits are not zero. Tasks never share output: no atomics, and the
// result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "common/int_math.h"
#include "xnor/xnor_conv2d.h"
#include "xnor/xnor_conv2d_cpu_kernels.h"

namespace fastdl::xnor {
namespace {

// Words of gathered receptive fields per task: an L1-sized tile.
constexpr int64_t kTileWords = 4096;
constexpr int64_t kMaxTileRows = 72;
// Tiles are whole register tiles of every kernel set: 3 vectors of 8 lanes
// (AVX-512), 1 of 4 (AVX2), 2 of 1 (scalar).
constexpr int64_t kTileRowStep = 24;
// Output channels the epilogue converts at a time: their values stay in L1 while
// channels_last stores read them across channels.
constexpr int64_t kEpilogueChannels = 16;
// Pixels packed per task from an NCHW input (a column of words per pixel).
constexpr int64_t kPackPixels = 256;

template <typename Fn>
void with_kernels(Fn&& fn) {
  const CpuIsa isa = cpu_isa();
  if (isa == CpuIsa::avx512 && cpu_has_avx512_popcount()) return fn(Avx512Kernels{});
  if (isa >= CpuIsa::avx2) return fn(Avx2Kernels{});
  fn(ScalarKernels{});
}

// ---- packing ----

template <typename T>
inline uint64_t negative_bit(T value) {
  return !(static_cast<float>(value) >= 0.0f);
}
inline uint64_t negative_bit(double value) { return !(value >= 0.0); }

struct PackShape {
  int64_t batch, channels, pixels, groups, group_channels, group_words;
  int64_t words_per_pixel() const { return groups * group_words; }
};

// NCHW: channel planes are contiguous, so a task packs a block of pixels, one
// channel plane at a time, into a column of words.
template <typename T>
void pack_planar(const PackShape& s, const T* input, uint64_t* out) {
  const int64_t blocks = (s.pixels + kPackPixels - 1) / kPackPixels;
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    uint64_t column[kPackPixels];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * kPackPixels;
      const int64_t count = std::min(kPackPixels, s.pixels - p0);
      for (int64_t g = 0; g < s.groups; ++g)
        for (int64_t word = 0; word < s.group_words; ++word) {
          std::fill(column, column + count, uint64_t{0});
          const int64_t c0 = g * s.group_channels + word * kWordBits;
          const int64_t bits = std::min(kWordBits, s.group_channels - word * kWordBits);
          for (int64_t bit = 0; bit < bits; ++bit) {
            const T* plane = input + ((n * s.channels) + c0 + bit) * s.pixels + p0;
            for (int64_t p = 0; p < count; ++p) column[p] |= negative_bit(plane[p]) << bit;
          }
          uint64_t* dst = out + (n * s.pixels + p0) * s.words_per_pixel() + g * s.group_words + word;
          for (int64_t p = 0; p < count; ++p) dst[p * s.words_per_pixel()] = column[p];
        }
    }
  });
}

// Channels last: each pixel's channels are contiguous.
template <typename T>
void pack_interleaved(const PackShape& s, const T* input, uint64_t* out) {
  // 32 pixels a grain (each hundreds of channels), so that a 13x13 image is more than one
  // task (measured at batch 1, 256x14x14: 45-91 us -> 28-46 us; the NCHW packing above,
  // split the same way, was no faster: its task was already ~20 us).
  at::parallel_for(0, s.batch * s.pixels, 32, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const T* src = input + pixel * s.channels;
      uint64_t* dst = out + pixel * s.words_per_pixel();
      for (int64_t g = 0; g < s.groups; ++g)
        for (int64_t word = 0; word < s.group_words; ++word) {
          const T* from = src + g * s.group_channels + word * kWordBits;
          const int64_t bits = std::min(kWordBits, s.group_channels - word * kWordBits);
          uint64_t packed = 0;
          for (int64_t bit = 0; bit < bits; ++bit) packed |= negative_bit(from[bit]) << bit;
          dst[g * s.group_words + word] = packed;
        }
    }
  });
}

at::Tensor pack_signs_cpu(const at::Tensor& input, int64_t groups) {
  check_pack_args(input, groups);
  PackShape s{input.size(0), input.size(1), input.size(2) * input.size(3), groups,
              input.size(1) / groups, words_for(input.size(1) / groups)};
  at::Tensor out = at::empty({input.size(0), input.size(2), input.size(3), s.words_per_pixel()},
                             input.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const bool interleaved = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor x =
      input.contiguous(interleaved ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pack_signs", [&] {
    if (interleaved)
      pack_interleaved(s, x.const_data_ptr<scalar_t>(), dst);
    else
      pack_planar(s, x.const_data_ptr<scalar_t>(), dst);
  });
  return out;
}

// ---- packed convolution ----

// The weights with their padding bits cleared: `weight_bits` itself when they
// already are (always, for weights from pack_signs), else a cleaned copy.
at::Tensor clean_weights(const at::Tensor& weight_bits, const Geometry& g) {
  at::Tensor w = weight_bits.contiguous();
  const uint64_t mask = valid_bits(g.group_channels, g.group_words - 1);
  if (mask == ~uint64_t{0}) return w;
  const int64_t fields = g.out_channels * g.taps();
  auto dirty = [&](const uint64_t* words) {
    for (int64_t f = 0; f < fields; ++f)
      if (words[(f + 1) * g.group_words - 1] & ~mask) return true;
    return false;
  };
  if (!dirty(reinterpret_cast<const uint64_t*>(w.const_data_ptr<int64_t>()))) return w;
  w = w.clone();
  auto* words = reinterpret_cast<uint64_t*>(w.data_ptr<int64_t>());
  for (int64_t f = 0; f < fields; ++f) words[(f + 1) * g.group_words - 1] &= mask;
  return w;
}

// Outputs next to the zero padding see fewer taps. Along each axis the taps that
// land inside the image form a range, and the outputs that share both ranges form
// a class (one interior class and a few border ones). Per class the table holds the
// bits a pixel's in-image taps compare, and per class and output channel the
// mismatches the padded taps' zero words added: the popcount of the weight's bits
// at those taps.
class BorderTable {
 public:
  template <typename Kernels>
  BorderTable(Kernels kernels, const Geometry& g, const uint64_t* weight)
      : full_bits_(static_cast<int32_t>(g.taps() * g.group_channels)) {
    const auto rows = axis_classes(g.out_h, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h,
                                   row_class_);
    const auto cols = axis_classes(g.out_w, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w,
                                   col_class_);
    col_classes_ = static_cast<int64_t>(cols.size());
    classes_ = static_cast<int64_t>(rows.size()) * col_classes_;
    matched_bits_.resize(classes_);
    padding_counts_.assign(classes_ * g.out_channels, 0);
    std::vector<std::vector<int64_t>> padded(classes_);  // the taps each class's pixels miss
    bool any_padded = false;
    for (size_t r = 0; r < rows.size(); ++r)
      for (int64_t c = 0; c < col_classes_; ++c) {
        const int64_t cls = static_cast<int64_t>(r) * col_classes_ + c;
        matched_bits_[cls] =
            static_cast<int32_t>(rows[r].count() * cols[c].count() * g.group_channels);
        for (int64_t kh = 0; kh < g.kernel_h; ++kh)
          for (int64_t kw = 0; kw < g.kernel_w; ++kw)
            if (!rows[r].contains(kh) || !cols[c].contains(kw))
              padded[cls].push_back(kh * g.kernel_w + kw);
        any_padded = any_padded || !padded[cls].empty();
      }
    if (!any_padded) return;
    // Per output channel: its taps' popcounts, then each class's sum (in parallel:
    // with large weights this is not free at batch 1).
    at::parallel_for(0, g.out_channels, 16, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> tap_popcount(g.taps());
      for (int64_t o = begin; o < end; ++o) {
        kernels.word_popcounts(weight + o * g.row_words(), g.taps(), g.group_words,
                               tap_popcount.data());
        for (int64_t cls = 0; cls < classes_; ++cls) {
          int32_t sum = 0;
          for (int64_t t : padded[cls]) sum += tap_popcount[t];
          padding_counts_[o * classes_ + cls] = sum;
        }
      }
    });
  }

  int64_t pixel_class(int64_t ho, int64_t wo) const {
    return row_class_[ho] * col_classes_ + col_class_[wo];
  }
  int32_t matched_bits(int64_t cls) const { return matched_bits_[cls]; }
  // Whether the class's pixels have taps in the padding.
  bool is_border(int64_t cls) const { return matched_bits_[cls] != full_bits_; }
  int32_t padding_count(int64_t cls, int64_t o) const { return padding_counts_[o * classes_ + cls]; }

 private:
  struct TapRange {  // taps [lo, hi) of one axis land inside the image
    int64_t lo, hi;
    int64_t count() const { return hi > lo ? hi - lo : 0; }
    bool contains(int64_t k) const { return k >= lo && k < hi; }
    bool operator<(const TapRange& o) const { return lo < o.lo || (lo == o.lo && hi < o.hi); }
  };

  // The distinct in-image tap ranges along one axis; class_of[o] indexes them.
  static std::vector<TapRange> axis_classes(int64_t out, int64_t in, int64_t kernel,
                                            int64_t stride, int64_t pad, int64_t dilation,
                                            std::vector<int64_t>& class_of) {
    std::map<TapRange, int64_t> ids;
    std::vector<TapRange> ranges;
    class_of.resize(out);
    for (int64_t o = 0; o < out; ++o) {
      TapRange range{kernel, kernel};
      for (int64_t k = 0; k < kernel; ++k) {
        const int64_t i = o * stride - pad + k * dilation;
        if (i < 0 || i >= in) continue;
        if (range.lo == kernel) range.lo = k;
        range.hi = k + 1;
      }
      auto [it, added] = ids.emplace(range, static_cast<int64_t>(ranges.size()));
      if (added) ranges.push_back(range);
      class_of[o] = it->second;
    }
    return ranges;
  }

  int32_t full_bits_;
  int64_t col_classes_, classes_;
  std::vector<int64_t> row_class_, col_class_;
  std::vector<int32_t> matched_bits_, padding_counts_;  // (classes,), (O, classes)
};

struct Epilogue {
  const BorderTable* border;
  const double* scale;  // (O,) or null
  const double* bias;   // (O,) or null
  int64_t stride_n, stride_o, stride_h, stride_w;  // of the output
};

// Where each pixel of a gathered tile goes: its output offset (without the
// channel), border class, and the bits its in-image taps compare.
struct TileIndex {
  std::vector<int64_t> pixel_offset, pixel_class, border_pixels;
  std::vector<int32_t> matched_bits;
  explicit TileIndex(int64_t rows) : pixel_offset(rows), pixel_class(rows), matched_bits(rows) {}
};

// The epilogue's values of a task (float or double).
struct TileScratch {
  std::vector<double> values;
  TileScratch(int64_t rows, int64_t channels) : values(rows * channels) {}
};

class PackedConv {
 public:
  PackedConv(const Geometry& g, const uint64_t* input, const uint64_t* weight)
      : g_(g), input_(input), weight_(weight), row_words_(g.row_words()) {
    const int64_t capacity = std::clamp<int64_t>(
        kTileWords / row_words_ / kTileRowStep * kTileRowStep, kTileRowStep, kMaxTileRows);
    // Near-equal tiles, not whole ones and the rest (at batch 1 a 7x7 image was tiles of
    // 48 and 1 pixels, one thread's tasks doing all the work). tile_rows_, the scratch's
    // rows per tile, covers the largest rounded up to whole register tiles (the kernels
    // fill whole vectors).
    pixel_tiles_ = tiles_to_cover(g.pixels(), capacity);
    tile_rows_ = 0;
    for (int64_t i = 0; i < pixel_tiles_; ++i)
      tile_rows_ = std::max(tile_rows_, round_up(tile_pixels(i).second, kTileRowStep));
    // Few pixels (small images, batch 1) leave threads idle unless the output
    // channels are split too: aim for 8 tasks per thread (fewer leave one thread a whole task behind).
    const int64_t channel_blocks = (g.group_out + 7) / 8;
    const int64_t wanted = 8 * at::get_num_threads();
    const int64_t chunks = std::clamp<int64_t>(
        (wanted + g.groups * pixel_tiles_ - 1) / (g.groups * pixel_tiles_), 1, channel_blocks);
    channel_chunk_ = (channel_blocks + chunks - 1) / chunks * 8;
    channel_chunks_ = (g.group_out + channel_chunk_ - 1) / channel_chunk_;
  }

  // {first pixel, pixels} of pixel tile i: near-equal tiles from whole register tiles.
  std::pair<int64_t, int64_t> tile_pixels(int64_t i) const {
    const int64_t first = block_start(g_.pixels(), pixel_tiles_, i, kTileRowStep);
    return {first, block_start(g_.pixels(), pixel_tiles_, i + 1, kTileRowStep) - first};
  }

  template <typename T, typename Kernels>
  void run(Kernels kernels, const Epilogue& e, T* out) const {
    const int64_t tasks = g_.groups * pixel_tiles_ * channel_chunks_;
    const int64_t lanes = kernels.lanes();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint64_t> tile(tile_rows_ * row_words_);
      std::vector<int32_t> counts(channel_chunk_ * tile_rows_);
      TileIndex index(tile_rows_);
      TileScratch scratch(tile_rows_, kEpilogueChannels);
      int64_t gathered = -1;  // the (group, pixel tile) now in `tile`
      for (int64_t task = begin; task < end; ++task) {
        const int64_t tile_index = task / channel_chunks_, chunk = task % channel_chunks_;
        const int64_t group = tile_index / pixel_tiles_;
        const auto [m0, m_count] = tile_pixels(tile_index % pixel_tiles_);
        const int64_t vectors = (m_count + lanes - 1) / lanes;
        if (tile_index != gathered) {
          index.border_pixels.clear();
          gather(group, m0, m_count, vectors * lanes, lanes, tile.data());
          for (int64_t r = 0; r < m_count; ++r) {
            const int64_t m = m0 + r, n = m / (g_.out_h * g_.out_w);
            const int64_t ho = m / g_.out_w % g_.out_h, wo = m % g_.out_w;
            index.pixel_offset[r] = n * e.stride_n + ho * e.stride_h + wo * e.stride_w;
            index.pixel_class[r] = e.border->pixel_class(ho, wo);
            index.matched_bits[r] = e.border->matched_bits(index.pixel_class[r]);
            if (e.border->is_border(index.pixel_class[r])) index.border_pixels.push_back(r);
          }
          gathered = tile_index;
        }
        const int64_t o0 = group * g_.group_out + chunk * channel_chunk_;
        const int64_t o_count = std::min(channel_chunk_, (group + 1) * g_.group_out - o0);
        kernels.mismatch_counts(tile.data(), vectors, row_words_, weight_ + o0 * row_words_,
                                row_words_, o_count, counts.data(), tile_rows_);
        finish(e, m_count, o0, o_count, counts.data(), index, scratch, out);
      }
    });
  }

 private:
  // Receptive fields of pixels [m0, m0 + m_count) into `tile`, lane-interleaved
  // (see xnor_conv2d_cpu_kernels.h); taps in the padding and the pixels from
  // m_count to padded_count are zero words.
  void gather(int64_t group, int64_t m0, int64_t m_count, int64_t padded_count, int64_t lanes,
              uint64_t* tile) const {
    const int64_t wpg = g_.group_words, pixel_words = g_.groups * wpg;
    const uint64_t last_mask = valid_bits(g_.group_channels, wpg - 1);
    for (int64_t r = 0; r < padded_count; ++r) {
      uint64_t* dst = tile + (r / lanes) * row_words_ * lanes + r % lanes;
      if (r >= m_count) {
        for (int64_t k = 0; k < row_words_; ++k) dst[k * lanes] = 0;
        continue;
      }
      const int64_t m = m0 + r, n = m / (g_.out_h * g_.out_w);
      const int64_t ho = m / g_.out_w % g_.out_h, wo = m % g_.out_w;
      for (int64_t kh = 0; kh < g_.kernel_h; ++kh) {
        const int64_t hi = ho * g_.stride_h - g_.pad_h + kh * g_.dilation_h;
        for (int64_t kw = 0; kw < g_.kernel_w; ++kw, dst += wpg * lanes) {
          const int64_t wi = wo * g_.stride_w - g_.pad_w + kw * g_.dilation_w;
          if (hi < 0 || hi >= g_.in_h || wi < 0 || wi >= g_.in_w) {
            for (int64_t k = 0; k < wpg; ++k) dst[k * lanes] = 0;
            continue;
          }
          const uint64_t* src =
              input_ + ((n * g_.in_h + hi) * g_.in_w + wi) * pixel_words + group * wpg;
          for (int64_t k = 0; k < wpg; ++k) dst[k * lanes] = src[k];
          dst[(wpg - 1) * lanes] &= last_mask;
        }
      }
    }
  }

  // counts[j * tile_rows_ + r]: mismatches of pixel r of the tile with channel o0 + j.
  // Border pixels first drop what their padded taps added; then a pass per channel
  // that vectorises (int32 -> float, scale, bias), and the stores.
  template <typename T>
  void finish(const Epilogue& e, int64_t m_count, int64_t o0, int64_t o_count, int32_t* counts,
              const TileIndex& index, TileScratch& scratch, T* out) const {
    using Math = std::conditional_t<std::is_same_v<T, double>, double, float>;
    for (int64_t r : index.border_pixels)
      for (int64_t j = 0; j < o_count; ++j)
        counts[j * tile_rows_ + r] -= e.border->padding_count(index.pixel_class[r], o0 + j);
    const int64_t* offset = index.pixel_offset.data();
    if (e.stride_o != 1 && offset[m_count - 1] - offset[0] == m_count - 1) {
      // The tile's pixels are one contiguous run of each output plane (NCHW, one
      // image): compute and store in one pass that vectorises.
      finish_run(e, m_count, o0, o_count, counts, index, out + offset[0]);
      return;
    }
    Math* values = reinterpret_cast<Math*>(scratch.values.data());
    for (int64_t j0 = 0; j0 < o_count; j0 += kEpilogueChannels)
      finish_channels(e, m_count, o0 + j0, std::min(kEpilogueChannels, o_count - j0),
                      counts + j0 * tile_rows_, index, values, out);
  }

  template <typename T>
  void finish_run(const Epilogue& e, int64_t m_count, int64_t o0, int64_t o_count,
                  const int32_t* counts, const TileIndex& index, T* out) const {
    using Math = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const int32_t* matched = index.matched_bits.data();
    for (int64_t j = 0; j < o_count; ++j) {
      const int64_t o = o0 + j;
      const int32_t* count = counts + j * tile_rows_;
      const Math scale = e.scale != nullptr ? static_cast<Math>(e.scale[o]) : Math(1);
      const Math bias = e.bias != nullptr ? static_cast<Math>(e.bias[o]) : Math(0);
      T* channel_out = out + o * e.stride_o;
      for (int64_t r = 0; r < m_count; ++r)
        channel_out[r] = static_cast<T>(static_cast<Math>(matched[r] - 2 * count[r]) * scale + bias);
    }
  }

  // Channels [o0, o0 + o_count) (at most kEpilogueChannels) of the tile: values
  // into a small buffer, then stored along whichever of pixels or channels is
  // contiguous in the output (channels, for channels_last).
  template <typename T, typename Math>
  void finish_channels(const Epilogue& e, int64_t m_count, int64_t o0, int64_t o_count,
                       const int32_t* counts, const TileIndex& index, Math* values,
                       T* out) const {
    const int32_t* matched = index.matched_bits.data();
    for (int64_t j = 0; j < o_count; ++j) {
      const int64_t o = o0 + j;
      const int32_t* count = counts + j * tile_rows_;
      Math* value = values + j * tile_rows_;
      const Math scale = e.scale != nullptr ? static_cast<Math>(e.scale[o]) : Math(1);
      const Math bias = e.bias != nullptr ? static_cast<Math>(e.bias[o]) : Math(0);
      for (int64_t r = 0; r < m_count; ++r)
        value[r] = static_cast<Math>(matched[r] - 2 * count[r]) * scale + bias;
    }
    const int64_t* offset = index.pixel_offset.data();
    if (e.stride_o == 1) {
      for (int64_t r = 0; r < m_count; ++r) {
        T* pixel_out = out + offset[r] + o0;
        for (int64_t j = 0; j < o_count; ++j)
          pixel_out[j] = static_cast<T>(values[j * tile_rows_ + r]);
      }
      return;
    }
    for (int64_t j = 0; j < o_count; ++j) {
      T* channel_out = out + (o0 + j) * e.stride_o;
      for (int64_t r = 0; r < m_count; ++r)
        channel_out[offset[r]] = static_cast<T>(values[j * tile_rows_ + r]);
    }
  }

  const Geometry& g_;
  const uint64_t* input_;
  const uint64_t* weight_;
  int64_t row_words_, tile_rows_, pixel_tiles_, channel_chunk_, channel_chunks_;
};

at::Tensor xnor_conv2d_packed_cpu(const at::Tensor& input_bits, const at::Tensor& weight_bits,
                                  int64_t in_channels, const std::optional<at::Tensor>& scale,
                                  const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups, c10::ScalarType dtype, bool channels_last) {
  const Geometry g = check_packed_args(input_bits, weight_bits, in_channels,
                                       scale ? &*scale : nullptr, bias ? &*bias : nullptr, stride,
                                       padding, dilation, groups, dtype);
  at::Tensor out = allocate_output(g, input_bits, dtype, channels_last);
  if (g.pixels() == 0) return out;
  const at::Tensor input = input_bits.contiguous();
  const at::Tensor weight = clean_weights(weight_bits, g);
  const auto* weight_words = reinterpret_cast<const uint64_t*>(weight.const_data_ptr<int64_t>());

  const auto scale64 = per_channel_as(scale, at::kDouble);
  const auto bias64 = per_channel_as(bias, at::kDouble);
  const PackedConv conv(g, reinterpret_cast<const uint64_t*>(input.const_data_ptr<int64_t>()),
                        weight_words);
  with_kernels([&](auto kernels) {
    const BorderTable border(kernels, g, weight_words);
    const Epilogue epilogue{&border, scale64 ? scale64->const_data_ptr<double>() : nullptr,
                            bias64 ? bias64->const_data_ptr<double>() : nullptr, out.stride(0),
                            out.stride(1), out.stride(2), out.stride(3)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "xnor_conv2d_packed", [&] {
      conv.run(kernels, epilogue, out.data_ptr<scalar_t>());
    });
  });
  return out;
}

}  // namespace

const char* cpu_kernel_path() {
  const CpuIsa isa = cpu_isa();
  if (isa == CpuIsa::avx512 && cpu_has_avx512_popcount()) return "avx512-vpopcntdq";
  if (isa >= CpuIsa::avx2) return "avx2-pshufb";
  return "scalar-swar";
}

}  // namespace fastdl::xnor

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("pack_signs", &fastdl::xnor::pack_signs_cpu);
  m.impl("xnor_conv2d_packed", &fastdl::xnor::xnor_conv2d_packed_cpu);
}
