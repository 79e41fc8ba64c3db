// CPU depthwise convolution: layout handling, work split and ISA dispatch around
// the kernels of depthwise_conv2d_cpu_kernels.inc.
//
// Shapes the channels-last register tiles cover (stride 1 or 2, square 3x3 / 5x5 /
// 7x7, no dilation), multiplier 1: channels last runs them in place, in tasks of
// output-row blocks; NCHW runs them on blocks of 16 channels transposed into a
// channels-last buffer (see "NCHW through channel blocks" below).
// Other NCHW shapes: one task per (image, input channel). The input plane is copied once into
// a zero-padded buffer split into stride_w column phases (prepare_plane), then
// every output channel of that input channel is computed from it with contiguous
// vector loads: no im2col, no bounds checks in the inner loop, any stride.
//   grad_input: the transposed convolution, i.e. the same kernel with the flipped
//   filter at stride 1 over grad_output spread out by the stride (zeros between).
//   grad_weight/bias: one task per input channel, summing over images in order:
//   deterministic, no atomics.
// Other channels-last shapes (multiplier 1): vectorised across channels, in tasks of
// output rows; grad_weight splits channels across tasks, again deterministic.
// Channels last with a multiplier > 1 runs the NCHW kernels on an NCHW copy.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/aligned_vector.h"
#include "common/checks.h"
#include "common/cpu_isa.h"
#include "common/int_math.h"
#include "common/reduced_precision.h"
#include "common/thread_scratch.h"
#include "depthwise/depthwise_conv2d.h"
#include "depthwise/depthwise_conv2d_cpu_kernels.h"

namespace fastdl::depthwise {
namespace {

// Channels per grad_weight task in channels last: a multiple of every vector width.
constexpr int64_t kChannelsPerTask = 16;
// Channels-last images up to this many pixels are convolved through a padded copy.
constexpr int64_t kSmallImagePixels = 32 * 32;
// Tasks of the channels-last weight gradient through the register tiles: enough to
// keep a many-core CPU busy, few enough that their partial sums stay small.
constexpr int64_t kWeightGradTasks = 32;
// ... and rows a task at least (weight_grad_runs).
constexpr int64_t kMinWeightGradRows = 3;

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

// Layout of a prepared plane for a stride-`stride_w` convolution producing
// out_h x out_w outputs with the given kernel and dilation.
struct PreparedLayout {
  int64_t rows, phases, phase_width, size;
  std::vector<int64_t> tap_offset;
  PlaneConv conv;

  PreparedLayout(int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w,
                 int64_t stride_h, int64_t stride_w, int64_t dilation_h, int64_t dilation_w) {
    rows = (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1;
    phases = stride_w;
    phase_width = out_w + (kernel_w - 1) * dilation_w / stride_w + kMaxWidth;
    size = phases * rows * phase_width;

    for (int64_t kh = 0; kh < kernel_h; ++kh)
      for (int64_t kw = 0; kw < kernel_w; ++kw) {
        const int64_t x = kw * dilation_w;  // padded column of output 0's tap
        tap_offset.push_back((x % stride_w) * rows * phase_width + kh * dilation_h * phase_width +
                             x / stride_w);
      }
    conv = {out_h, out_w, kernel_h * kernel_w, kernel_h, kernel_w, stride_h * phase_width,
            tap_offset.data()};
  }
  PreparedLayout(const PreparedLayout&) = delete;
};

// Writes `src` (src_h x src_w) into `dst` as laid out by `layout`: source (r, c)
// goes to padded position (pad_top + r * spread_h, pad_left + c * spread_w); all
// else is zero. Padding may be negative (the source is then cropped).
// Rows are short (often under 64 elements): inline loops beat a libc memcpy /
// memset call per row, so GCC must not turn the loops back into those calls.
template <typename T, typename Kernels>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void prepare_plane(
    Kernels kernels, const PreparedLayout& layout, const T* src, int64_t src_h, int64_t src_w,
    int64_t pad_top, int64_t pad_left, int64_t spread_h, int64_t spread_w, T* dst) {
  const int64_t width = layout.phase_width, phases = layout.phases, rows = layout.rows;
  // Rows before the first and after the last source row are all padding.
  const int64_t y_first = std::min(std::max<int64_t>(pad_top, 0), rows);
  const int64_t y_end = std::max(y_first, std::min(rows, pad_top + (src_h - 1) * spread_h + 1));
  for (int64_t q = 0; q < phases; ++q) {
    T* phase = dst + q * rows * width;
    std::fill(phase, phase + y_first * width, T(0));
    std::fill(phase + y_end * width, phase + rows * width, T(0));
  }
  for (int64_t y = y_first; y < y_end; ++y) {
    const int64_t r = (y - pad_top) / spread_h;
    const bool has_source = (y - pad_top) % spread_h == 0;
    const T* src_row = src + r * src_w;
    if (!has_source) {
      for (int64_t q = 0; q < phases; ++q) std::fill_n(dst + (q * rows + y) * width, width, T(0));
    } else if (spread_w == 1 && phases == 1) {
      // The padded row: zeros, the source (cropped to the row), zeros.
      T* row = dst + y * width;
      const int64_t first = std::max<int64_t>(0, -pad_left);
      const int64_t last = std::max(first, std::min<int64_t>(src_w, width - pad_left));
      std::fill(row, row + std::max<int64_t>(pad_left + first, 0), T(0));
      for (int64_t i = first; i < last; ++i) row[pad_left + i] = src_row[i];
      std::fill(row + pad_left + last, row + width, T(0));
    } else if (spread_w == 1 && phases == 2 && pad_left >= 0) {
      // Stride 2: source column c lands in phase (c + pad_left) % 2, slot
      // (c + pad_left) / 2, so pairs of source columns split into both phases at
      // once with vector shuffles.
      T* even = dst + y * width;
      T* odd = dst + (rows + y) * width;
      T* first_phase = pad_left % 2 == 0 ? even : odd;
      T* second_phase = pad_left % 2 == 0 ? odd : even;
      const int64_t first_slot = pad_left / 2, second_slot = (pad_left + 1) / 2;
      const int64_t pairs = std::max<int64_t>(0, std::min(src_w / 2, width - second_slot));
      std::fill(even, even + width, T(0));
      std::fill(odd, odd + width, T(0));
      kernels.deinterleave2(src_row, pairs, first_phase + first_slot, second_phase + second_slot);
      for (int64_t c = 2 * pairs; c < src_w; ++c) {
        const int64_t x = c + pad_left;
        if (x / 2 < width) (x % 2 == 0 ? even : odd)[x / 2] = src_row[c];
      }
    } else {
      // General: phase q holds padded columns x = q + i * phases; fetch the source
      // column landing in each slot, if any.
      for (int64_t q = 0; q < phases; ++q) {
        T* dst_row = dst + (q * rows + y) * width;
        for (int64_t i = 0, x = q; i < width; ++i, x += phases) {
          const int64_t offset = x - pad_left;  // spread_w * source column, if it is one
          const int64_t c = offset / spread_w;
          dst_row[i] = offset >= 0 && offset % spread_w == 0 && c < src_w ? src_row[c] : T(0);
        }
      }
    }
  }
}

// Runs fn(kernels, prepared, task) for every task in [0, tasks), in parallel, each
// thread with its own prepared-plane buffer: the frame of every NCHW kernel.
template <typename T, typename Fn>
void for_each_plane_task(int64_t tasks, const PreparedLayout& layout, Fn&& fn) {
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> prepared(0, layout.size);
    with_kernels<T>([&](auto kernels) {
      for (int64_t task = begin; task < end; ++task) fn(kernels, prepared.data(), task);
    });
  });
}

// Weight (C, 1, kH, kW) -> (kH * kW, C), the channels-last kernels' order; taps
// reversed with `flip`. A plain loop, not reshape().t().contiguous(): that copy was a
// tensor op of its own on every call (measured on an Intel Xeon, a channels-last
// 1x96x4x4 call under no_grad: 12.4 -> 10.7 us).
at::Tensor taps_by_channel(const at::Tensor& weight, bool flip = false) {
  const at::Tensor w = weight.contiguous();
  const int64_t channels = w.size(0), taps = w.numel() / std::max<int64_t>(1, channels);
  at::Tensor out = at::empty({taps, channels}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "fastdl_depthwise_taps_by_channel", [&] {
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t t = 0; t < taps; ++t)
        dst[(flip ? taps - 1 - t : t) * channels + c] = src[c * taps + t];
  });
  return out;
}

ChannelsLastConv channels_last_conv(const Geometry& g) {
  return {g.in_h,     g.in_w,     g.out_h,    g.out_w,    g.channels,   g.channels,   g.kernel_h,
          g.kernel_w, g.stride_h, g.stride_w, g.pad_h,    g.pad_w,      g.dilation_h, g.dilation_w};
}

// The transposed convolution of `conv` at stride 1: grad_out convolved with the
// flipped filter and padding d * (k - 1) - p gives grad_input.
ChannelsLastConv transposed_stride1(const ChannelsLastConv& conv) {
  ChannelsLastConv t = conv;
  t.in_h = conv.out_h, t.in_w = conv.out_w, t.out_h = conv.in_h, t.out_w = conv.in_w;
  t.pad_h = conv.dilation_h * (conv.kernel_h - 1) - conv.pad_h;
  t.pad_w = conv.dilation_w * (conv.kernel_w - 1) - conv.pad_w;
  return t;
}

// NCHW through channel blocks ------------------------------------------------------
//
// NCHW inputs whose shape the channels-last register tiles or sliding window cover
// (multiplier 1) run them on blocks of kMaxWidth channels: a task transposes its
// block's planes into a channels-last buffer, runs the kernels and transposes the
// result back, all in cache. Narrow planes then keep every lane busy (the plane
// kernels fill 7 of 16 lanes on a 7-wide row), and no plane pays a padded copy.
//
// Only with at least a block of channels, and planes of up to kMaxBlockPixels: each
// thread's buffers hold kMaxWidth channels of a whole plane (of 1 to 16 real ones),
// and a block is one task, so a few channels of a large plane are better served by
// the plane kernels, one task per (image, channel). The choice depends on the shape
// only, so results do not change with the thread count.
//
// The shapes whose channels-last kernels slide a register window (large and
// non-square kernels) take blocks too: per channel of a 31x31 layer on 56x56 (Xeon,
// AVX-512, one thread) the forward took 0.046 ms so against 0.103 on the plane
// kernels, grad_input 0.047 against 0.104, grad_weight 0.054 against 0.231.
constexpr int64_t kMaxBlockPixels = 128 * 128;

bool blocks_fit(const Geometry& g) {
  return g.multiplier == 1 && g.channels >= kMaxWidth && g.in_h * g.in_w <= kMaxBlockPixels &&
         g.out_h * g.out_w <= kMaxBlockPixels;
}

bool use_channel_blocks(const Geometry& g) {
  return blocks_fit(g) && (tiles_apply(channels_last_conv(g)) || window_applies(channels_last_conv(g)));
}

// grad_input at stride 1 is a forward convolution on the blocks; at other strides only
// the tile shapes have kernels for it (input_grad_tiles_cl), the others stay on the
// plane kernels.
bool input_grad_channel_blocks_apply(const Geometry& g) {
  const bool stride1 = g.stride_h == 1 && g.stride_w == 1;
  return use_channel_blocks(g) && (stride1 || tiles_apply(channels_last_conv(g)));
}

// Weight (C, 1, kH, kW) -> (C / kMaxWidth blocks, kH * kW, kMaxWidth), zero past C;
// taps reversed with `flip`.
at::Tensor taps_by_channel_blocks(const at::Tensor& weight, bool flip) {
  const int64_t channels = weight.size(0), taps = weight.numel() / channels;
  const int64_t blocks = tiles_to_cover(channels, kMaxWidth);
  at::Tensor by_channel = weight.reshape({channels, taps});
  if (flip) by_channel = by_channel.flip(1);
  at::Tensor padded = at::zeros({blocks * kMaxWidth, taps}, weight.options());
  padded.narrow(0, 0, channels).copy_(by_channel);
  return padded.view({blocks, kMaxWidth, taps}).transpose(1, 2).contiguous();
}

// `conv` for one block: its channels sit kMaxWidth apart.
ChannelsLastConv block_conv(ChannelsLastConv conv, int64_t channels) {
  conv.channels = channels;
  conv.channel_stride = kMaxWidth;
  return conv;
}

// For each (image, channel block) task: moves `src` planes (src_pixels each) of the
// block into a channels-last buffer, calls run(kernels, conv for the block, block
// index, first channel, source buffer, result buffer) and moves the result
// (dst_pixels per channel) into the `dst` planes.
template <typename T, typename Run>
void through_channel_blocks(const Geometry& g, const ChannelsLastConv& conv, const T* src,
                            int64_t src_pixels, T* dst, int64_t dst_pixels, Run&& run) {
  const int64_t blocks = tiles_to_cover(g.channels, kMaxWidth);
  at::parallel_for(0, g.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> src_block(0, src_pixels * kMaxWidth), dst_block(1, dst_pixels * kMaxWidth);
    with_kernels<T>([&](auto kernels) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, block = task % blocks, c = block * kMaxWidth;
        const int64_t channels = std::min(kMaxWidth, g.channels - c);
        kernels.planes_to_block(src + (n * g.channels + c) * src_pixels, src_pixels, channels,
                                kMaxWidth, src_block.data());
        run(kernels, block_conv(conv, channels), block, c, src_block.data(), dst_block.data());
        kernels.block_to_planes(dst_block.data(), dst_pixels, channels, kMaxWidth,
                                dst + (n * g.channels + c) * dst_pixels);
      }
    });
  });
}

template <typename T>
void forward_channel_blocks(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const at::Tensor w = taps_by_channel_blocks(weight, false);
  const T* wb = w.const_data_ptr<T>();
  const T* b = bias ? bias->const_data_ptr<T>() : nullptr;
  const int64_t taps = g.kernel_h * g.kernel_w;
  through_channel_blocks<T>(g, channels_last_conv(g), input.const_data_ptr<T>(), g.in_h * g.in_w,
                            out.mutable_data_ptr<T>(), g.out_h * g.out_w,
                            [&](auto kernels, const ChannelsLastConv& conv, int64_t block, int64_t c,
                                const T* in_block, T* out_block) {
                              kernels.forward_rows_cl(conv, in_block, wb + block * taps * kMaxWidth,
                                                      b ? b + c : nullptr, 0, conv.out_h, out_block);
                            });
}

template <typename T>
void input_grad_channel_blocks(const Geometry& g, const at::Tensor& grad_out,
                               const at::Tensor& weight, at::Tensor& grad_in) {
  const bool stride1 = g.stride_h == 1 && g.stride_w == 1;
  const at::Tensor w = taps_by_channel_blocks(weight, stride1);
  const T* wb = w.const_data_ptr<T>();
  const int64_t taps = g.kernel_h * g.kernel_w;
  const ChannelsLastConv conv = channels_last_conv(g);
  through_channel_blocks<T>(g, stride1 ? transposed_stride1(conv) : conv,
                            grad_out.const_data_ptr<T>(), g.out_h * g.out_w,
                            grad_in.mutable_data_ptr<T>(), g.in_h * g.in_w,
                            [&](auto kernels, const ChannelsLastConv& block_conv, int64_t block, int64_t,
                                const T* go_block, T* gi_block) {
                              const T* wblock = wb + block * taps * kMaxWidth;
                              if (stride1)
                                kernels.forward_rows_cl(block_conv, go_block, wblock, nullptr, 0,
                                                        block_conv.out_h, gi_block);
                              else
                                kernels.input_grad_rows_cl(block_conv, go_block, wblock, 0,
                                                           block_conv.in_h, gi_block);
                            });
}

// One task per channel block, summing its images in order: deterministic whatever
// the threads, and no reduction between tasks.
template <typename T>
void weight_grad_channel_blocks(const Geometry& g, const at::Tensor& grad_out,
                                const at::Tensor& input, at::Tensor* grad_weight,
                                at::Tensor* grad_bias) {
  const int64_t taps = g.kernel_h * g.kernel_w, blocks = tiles_to_cover(g.channels, kMaxWidth);
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const T* in = input.const_data_ptr<T>();
  const T* go = grad_out.const_data_ptr<T>();
  T* gw = grad_weight ? grad_weight->mutable_data_ptr<T>() : nullptr;
  T* gb = grad_bias ? grad_bias->mutable_data_ptr<T>() : nullptr;
  const ChannelsLastConv conv = channels_last_conv(g);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> in_block(0, in_plane * kMaxWidth), go_block(1, out_plane * kMaxWidth);
    AlignedVector<T> sums((taps + 1) * kMaxWidth);
    with_kernels<T>([&](auto kernels) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t c = block * kMaxWidth, channels = std::min(kMaxWidth, g.channels - c);
        const ChannelsLastConv bc = block_conv(conv, channels);
        std::fill(sums.begin(), sums.end(), T(0));
        for (int64_t n = 0; n < g.batch; ++n) {
          kernels.planes_to_block(in + (n * g.channels + c) * in_plane, in_plane, channels, kMaxWidth, in_block.data());
          kernels.planes_to_block(go + (n * g.channels + c) * out_plane, out_plane, channels, kMaxWidth, go_block.data());
          kernels.weight_grad_rows_cl(bc, in_block.data(), go_block.data(), 0, g.out_h, sums.data(),
                                      gb ? sums.data() + taps * kMaxWidth : nullptr);
        }
        for (int64_t k = 0; k < channels; ++k) {
          if (gw != nullptr)
            for (int64_t t = 0; t < taps; ++t) gw[(c + k) * taps + t] = sums[t * kMaxWidth + k];
          if (gb != nullptr) gb[c + k] = sums[taps * kMaxWidth + k];
        }
      }
    });
  });
}

// ---------------------------------------------------------------- forward

template <typename T>
void forward_nchw(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const PreparedLayout layout(g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                              g.dilation_h, g.dilation_w);
  const T* in = input.const_data_ptr<T>();
  const T* w = weight.const_data_ptr<T>();
  const T* b = bias ? bias->const_data_ptr<T>() : nullptr;
  T* o = out.mutable_data_ptr<T>();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w, taps = layout.conv.taps;
  for_each_plane_task<T>(g.batch * g.channels, layout, [&](auto kernels, T* prepared, int64_t task) {
    const int64_t n = task / g.channels, c = task % g.channels;
    prepare_plane(kernels, layout, in + task * in_plane, g.in_h, g.in_w, g.pad_h, g.pad_w, 1, 1, prepared);
    for (int64_t k = 0; k < g.multiplier; ++k) {
      const int64_t oc = c * g.multiplier + k;
      kernels.forward_plane(layout.conv, prepared, w + oc * taps, b ? b[oc] : T(0), false,
                            o + (n * g.out_channels() + oc) * out_plane);
    }
  });
}

// Runs fn(run, n, begin, end), rows [begin, end) of image n in run `run`, over every row
// of `batch` images of `rows` rows each, in `runs` tasks (in parallel): the rows cut into
// near-equal runs from multiples of `align` (a run may end in one image and go on in
// the next), so that each thread's share of rows is the same whatever the batch. (Whole
// blocks of 9 rows gave two threads 36 and 20 of a batch-1 image's 56 rows.)
template <typename Fn>
void for_row_runs(int64_t batch, int64_t rows, int64_t align, int64_t runs, Fn&& fn) {
  const int64_t total = batch * rows;
  at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t last = block_start(total, runs, run + 1, align);
      for (int64_t row = block_start(total, runs, run, align); row < last;) {
        const int64_t n = row / rows, first = row % rows, count = std::min(rows - first, last - row);
        fn(run, n, first, first + count);
        row += count;
      }
    }
  });
}

// Runs for the forward and input-gradient tasks: a few per thread (their rows are
// near-equal, so more would only add calls), at most one per `align` rows.
int64_t row_runs(int64_t batch, int64_t rows, int64_t align) {
  return std::clamp<int64_t>(tiles_to_cover(batch * rows, align), 1, 4 * at::get_num_threads());
}

// Inputs from which the channels-last tiles prefetch (ChannelsLastConv::prefetch_input):
// those likely to come from memory rather than a cache. Batch-32 inputs of 38-154 MB
// gained 10-15% on a Xeon (AVX-512) and ~50% on Zen 3; a 4.8 MB batch-1 input, in L3
// on the Xeon, lost 7%, and NCHW blocks already in L2 lost up to 20%.
constexpr int64_t kPrefetchInputBytes = int64_t{16} << 20;

// Channels-last convolution of `batch` images with weights (taps, C), in tasks of
// near-equal runs of output rows (for_row_runs), from multiples of the register
// tiles' height. Shapes neither the register tiles nor the sliding window cover
// (column stride or dilation above 1) take, on small images, one task per image
// through a zero-padded copy instead, so that every pixel takes the interior
// kernel: on a 7x7 image the border pixels are over half of the work.
template <typename T>
void convolve_channels_last(const ChannelsLastConv& conv, int64_t batch, const T* in, const T* w,
                            const T* b, T* out) {
  const int64_t in_image = conv.in_h * conv.in_w * conv.channels;
  const int64_t out_image = conv.out_h * conv.out_w * conv.channels;
  const bool padded_copy = !tiles_apply(conv) && !window_applies(conv) && conv.pad_h >= 0 &&
                           conv.pad_w >= 0 && conv.pad_h + conv.pad_w > 0 &&
                           conv.in_h * conv.in_w <= kSmallImagePixels;
  if (!padded_copy) {
    ChannelsLastConv tiles = conv;
    tiles.prefetch_input = batch * in_image * static_cast<int64_t>(sizeof(T)) > kPrefetchInputBytes;
    with_kernels<T>([&](auto kernels) {
      const int64_t align = kernels.forward_tile_rows(conv, T(0));
      for_row_runs(batch, conv.out_h, align, row_runs(batch, conv.out_h, align),
                   [&](int64_t, int64_t n, int64_t begin, int64_t end) {
        kernels.forward_rows_cl(tiles, in + n * in_image, w, b, begin, end, out + n * out_image);
      });
    });
    return;
  }
  ChannelsLastConv padded = conv;
  padded.in_h += 2 * conv.pad_h;
  padded.in_w += 2 * conv.pad_w;
  padded.pad_h = padded.pad_w = 0;
  const int64_t row_elems = conv.in_w * conv.channels, padded_row = padded.in_w * conv.channels;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    const ThreadScratch<T> image(0, padded.in_h * padded_row);
    std::fill_n(image.data(), padded.in_h * padded_row, T(0));  // the borders stay zero
    with_kernels<T>([&](auto kernels) {
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t h = 0; h < conv.in_h; ++h)
          std::copy_n(in + n * in_image + h * row_elems, row_elems,
                      image.data() + (conv.pad_h + h) * padded_row + conv.pad_w * conv.channels);
        kernels.forward_rows_cl(padded, image.data(), w, b, 0, conv.out_h, out + n * out_image);
      }
    });
  });
}

template <typename T>
void forward_channels_last(const Geometry& g, const at::Tensor& input, const at::Tensor& w,
                           const std::optional<at::Tensor>& bias, at::Tensor& out) {
  convolve_channels_last<T>(channels_last_conv(g), g.batch, input.const_data_ptr<T>(),
                            w.const_data_ptr<T>(), bias ? bias->const_data_ptr<T>() : nullptr,
                            out.mutable_data_ptr<T>());
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d";
  const Geometry g = check_forward_args(op, input, weight, bias ? &*bias : nullptr, stride,
                                        padding, dilation);
  check_dtype(op, "input", input, {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16},
              " on CPU");
  if (is_16bit_float(input)) {  // through float32 copies (common/reduced_precision.h)
    const std::optional<at::Tensor> wide_bias =
        bias ? std::optional<at::Tensor>(widened_to_float32(*bias)) : std::nullopt;
    return depthwise_conv2d_cpu(widened_to_float32(input), widened_to_float32(weight), wide_bias,
                                stride, padding, dilation)
        .to(input.scalar_type());
  }
  const bool channels_last = use_channels_last(input, weight);
  const auto format = output_format(input, weight);
  const at::Tensor w = weight.contiguous();
  const bool cl_kernels = channels_last && g.multiplier == 1;
  const at::Tensor w_taps = cl_kernels ? taps_by_channel(w) : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.out_channels(), g.out_h, g.out_w}, input.options(), format);
  if (g.batch == 0) return out;
  const std::optional<at::Tensor> b = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastdl_depthwise_conv2d_cpu", [&] {
    if (cl_kernels) {
      forward_channels_last<scalar_t>(g, input.contiguous(format), w_taps, b, out);
    } else if (channels_last) {
      at::Tensor nchw_out = at::empty_like(out, at::MemoryFormat::Contiguous);
      forward_nchw<scalar_t>(g, input.contiguous(), w, b, nchw_out);
      out.copy_(nchw_out);
    } else if (use_channel_blocks(g)) {
      forward_channel_blocks<scalar_t>(g, input.contiguous(), w, b, out);
    } else {
      forward_nchw<scalar_t>(g, input.contiguous(), w, b, out);
    }
  });
  return out;
}

// ---------------------------------------------------------------- backward

template <typename T>
void input_grad_nchw(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& weight,
                     at::Tensor& grad_in) {
  // grad_in(y, x) = sum_t w[t] * U(y + pad - k * d), U = grad_out spread by the
  // stride: a stride-1 convolution with the flipped filter over U placed at
  // (d * (k - 1) - pad) -- negative when the padding exceeds the kernel's reach.
  const PreparedLayout layout(g.in_h, g.in_w, g.kernel_h, g.kernel_w, 1, 1, g.dilation_h,
                              g.dilation_w);
  const int64_t taps = layout.conv.taps;
  std::vector<T> flipped(g.out_channels() * taps);
  const T* w = weight.const_data_ptr<T>();
  for (int64_t oc = 0; oc < g.out_channels(); ++oc)
    std::reverse_copy(w + oc * taps, w + (oc + 1) * taps, flipped.begin() + oc * taps);
  const T* go = grad_out.const_data_ptr<T>();
  T* gi = grad_in.mutable_data_ptr<T>();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t top = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  const int64_t left = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  for_each_plane_task<T>(g.batch * g.channels, layout, [&](auto kernels, T* prepared, int64_t task) {
    const int64_t n = task / g.channels, c = task % g.channels;
    for (int64_t k = 0; k < g.multiplier; ++k) {
      const int64_t oc = c * g.multiplier + k;
      prepare_plane(kernels, layout, go + (n * g.out_channels() + oc) * out_plane, g.out_h, g.out_w,
                    top, left, g.stride_h, g.stride_w, prepared);
      kernels.forward_plane(layout.conv, prepared, flipped.data() + oc * taps, T(0), k > 0,
                            gi + task * in_plane);
    }
  });
}

template <typename T>
void weight_grad_nchw(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& input,
                      at::Tensor* grad_weight, at::Tensor* grad_bias) {
  const PreparedLayout layout(g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                              g.dilation_h, g.dilation_w);
  const T* go = grad_out.const_data_ptr<T>();
  const T* in = input.const_data_ptr<T>();
  T* gw = grad_weight ? grad_weight->mutable_data_ptr<T>() : nullptr;
  T* gb = grad_bias ? grad_bias->mutable_data_ptr<T>() : nullptr;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w, taps = layout.conv.taps;
  // One task per input channel, summing over images in order (deterministic).
  for_each_plane_task<T>(g.channels, layout, [&](auto kernels, T* prepared, int64_t c) {
    AlignedVector<T> partial(g.multiplier * taps * kMaxWidth, T(0));
    for (int64_t n = 0; n < g.batch; ++n) {
      if (gw != nullptr)
        prepare_plane(kernels, layout, in + (n * g.channels + c) * in_plane, g.in_h, g.in_w, g.pad_h,
                      g.pad_w, 1, 1, prepared);
      for (int64_t k = 0; k < g.multiplier; ++k) {
        const int64_t oc = c * g.multiplier + k;
        const T* go_plane = go + (n * g.out_channels() + oc) * out_plane;
        if (gw != nullptr)
          kernels.weight_grad_plane(layout.conv, prepared, go_plane, partial.data() + k * taps * kMaxWidth);
        if (gb != nullptr) gb[oc] += kernels.sum(go_plane, out_plane);
      }
    }
    if (gw == nullptr) return;
    for (int64_t k = 0; k < g.multiplier; ++k)
      for (int64_t t = 0; t < taps; ++t)
        gw[(c * g.multiplier + k) * taps + t] = kernels.sum(partial.data() + (k * taps + t) * kMaxWidth, kMaxWidth);
  });
}

template <typename T>
void input_grad_channels_last(const Geometry& g, const at::Tensor& grad_out,
                              const at::Tensor& weight, at::Tensor& grad_in) {
  const T* go = grad_out.const_data_ptr<T>();
  T* gi = grad_in.mutable_data_ptr<T>();
  if (g.stride_h == 1 && g.stride_w == 1) {
    // The transposed convolution at stride 1 is a convolution of grad_out with the
    // flipped filter and padding d * (k - 1) - p: the forward kernels apply.
    const at::Tensor flipped = taps_by_channel(weight, /*flip=*/true);
    convolve_channels_last<T>(transposed_stride1(channels_last_conv(g)), g.batch, go,
                              flipped.const_data_ptr<T>(), nullptr, gi);
    return;
  }
  const ChannelsLastConv conv = channels_last_conv(g);
  const at::Tensor w = taps_by_channel(weight);
  const int64_t in_image = g.in_h * g.in_w * g.channels, out_image = g.out_h * g.out_w * g.channels;
  // Runs from even rows: the stride-2 tiles cover two rows at a time.
  with_kernels<T>([&](auto kernels) {
    for_row_runs(g.batch, g.in_h, 2, row_runs(g.batch, g.in_h, 2),
                 [&](int64_t, int64_t n, int64_t begin, int64_t end) {
      kernels.input_grad_rows_cl(conv, go + n * out_image, w.const_data_ptr<T>(), begin, end,
                                 gi + n * in_image);
    });
  });
}

// Runs of the channels-last weight gradient over `rows` rows: kWeightGradTasks, or
// fewer where that would leave under kMinWeightGradRows rows a run (each run has a
// slice of partial sums to fill and add: runs of one row of a 14x14 image at batch 1
// made the 7x7 forward+backward 1.2x slower), a multiple of 4 or 2 where that many,
// so that 2 and 4 threads take equal shares (the count must not depend on the threads).
int64_t weight_grad_runs(int64_t rows, int64_t align) {
  const int64_t runs =
      std::min(kWeightGradTasks, tiles_to_cover(rows, std::max(align, kMinWeightGradRows)));
  return runs >= 4 ? runs / 4 * 4 : runs >= 2 ? runs / 2 * 2 : runs;
}

// Channels-last weight and bias gradients through the register tiles. Tasks are
// near-equal runs of output rows (for_row_runs, weight_grad_runs); each sums into its
// own (taps + 1, C) slice (tap sums, then the bias), and the slices are added in task
// order. The split depends on the shape (and the ISA's tile height) only, never on
// the thread count, so the sums are the same whatever the threads.
template <typename T>
void weight_grad_tiles(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& input,
                       at::Tensor* grad_weight, at::Tensor* grad_bias) {
  const ChannelsLastConv conv = channels_last_conv(g);
  const int64_t taps = g.kernel_h * g.kernel_w, slice = (taps + 1) * g.channels;
  const T* go = grad_out.const_data_ptr<T>();
  const T* in = input.const_data_ptr<T>();
  const int64_t in_image = g.in_h * g.in_w * g.channels, out_image = g.out_h * g.out_w * g.channels;
  const bool with_bias = grad_bias != nullptr;
  int64_t tasks = 0;
  AlignedVector<T> partial;
  with_kernels<T>([&](auto kernels) {
    const int64_t align = kernels.forward_tile_rows(conv, T(0));  // the tiles' height here too
    tasks = weight_grad_runs(g.batch * g.out_h, align);
    partial = AlignedVector<T>(tasks * slice, T(0));
    for_row_runs(g.batch, g.out_h, align, tasks,
                 [&](int64_t task, int64_t n, int64_t begin, int64_t end) {
      T* sums = partial.data() + task * slice;
      kernels.weight_grad_rows_cl(conv, in + n * in_image, go + n * out_image, begin, end, sums,
                                  with_bias ? sums + taps * g.channels : nullptr);
    });
  });
  // Task 0's slice collects the rest, element by element in task order.
  T* total = partial.data();
  at::parallel_for(0, slice, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t task = 1; task < tasks; ++task) {
      const T* sums = partial.data() + task * slice;
      for (int64_t i = begin; i < end; ++i) total[i] += sums[i];
    }
  });
  if (grad_weight != nullptr) {
    const at::Tensor taps_by_c = at::from_blob(total, {taps, g.channels}, input.options());
    grad_weight->copy_(taps_by_c.t().reshape(grad_weight->sizes()));
  }
  if (with_bias) std::copy_n(total + taps * g.channels, g.channels, grad_bias->mutable_data_ptr<T>());
}

template <typename T>
void weight_grad_channels_last(const Geometry& g, const at::Tensor& grad_out,
                               const at::Tensor& input, at::Tensor* grad_weight,
                               at::Tensor* grad_bias) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  if (tiles_apply(channels_last_conv(g))) return weight_grad_tiles<T>(g, grad_out, input, grad_weight, grad_bias);
  // Accumulated as (taps, C) so each task owns a slice of channels across every
  // image and row: no reduction between tasks, the same sums whatever the threads.
  at::Tensor gw_taps = at::zeros({taps, g.channels}, input.options());
  const T* go = grad_out.const_data_ptr<T>();
  const T* in = input.const_data_ptr<T>();
  T* gw = gw_taps.mutable_data_ptr<T>();
  T* gb = grad_bias ? grad_bias->mutable_data_ptr<T>() : nullptr;
  const int64_t tasks = (g.channels + kChannelsPerTask - 1) / kChannelsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    with_kernels<T>([&](auto kernels) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c = task * kChannelsPerTask;
        ChannelsLastConv conv = channels_last_conv(g);
        conv.channels = std::min(kChannelsPerTask, g.channels - c);
        kernels.weight_grad_cl(conv, in + c, go + c, g.batch, gw + c, gb ? gb + c : nullptr);
      }
    });
  });
  if (grad_weight != nullptr) grad_weight->copy_(gw_taps.t().reshape(grad_weight->sizes()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation);
  check_dtype("depthwise_conv2d_backward", "input", input,
              {c10::kFloat, c10::kDouble, c10::kHalf, c10::kBFloat16}, " on CPU");
  if (is_16bit_float(input)) {  // through float32 copies, the gradients back in their dtypes
    auto grads = depthwise_conv2d_backward_cpu(widened_to_float32(grad_output),
                                               widened_to_float32(input),
                                               widened_to_float32(weight), stride, padding,
                                               dilation, output_mask);
    auto& [grad_input, grad_weight, grad_bias] = grads;
    if (grad_input.defined()) grad_input = grad_input.to(input.scalar_type());
    if (grad_weight.defined()) grad_weight = grad_weight.to(weight.scalar_type());
    if (grad_bias.defined()) grad_bias = grad_bias.to(weight.scalar_type());
    return grads;
  }
  const bool channels_last = use_channels_last(input, weight);
  const bool cl_kernels = channels_last && g.multiplier == 1;
  const auto work_format = cl_kernels ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto [grad_input, grad_weight, grad_bias] = allocate_grads(g, input, weight, output_mask);
  if (g.batch == 0) {
    if (grad_input.defined()) grad_input.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  const at::Tensor go = grad_output.contiguous(work_format);
  const at::Tensor in = input.contiguous(work_format);
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastdl_depthwise_conv2d_backward_cpu", [&] {
    if (grad_input.defined()) {
      at::Tensor target = cl_kernels || !channels_last ? grad_input : at::empty_like(in);
      if (cl_kernels)
        input_grad_channels_last<scalar_t>(g, go, w, target);
      else if (input_grad_channel_blocks_apply(g))
        input_grad_channel_blocks<scalar_t>(g, go, w, target);
      else
        input_grad_nchw<scalar_t>(g, go, w, target);
      if (!target.is_same(grad_input)) grad_input.copy_(target);
    }
    if (grad_weight.defined() || grad_bias.defined()) {
      at::Tensor* gw = grad_weight.defined() ? &grad_weight : nullptr;
      at::Tensor* gb = grad_bias.defined() ? &grad_bias : nullptr;
      if (cl_kernels)
        weight_grad_channels_last<scalar_t>(g, go, in, gw, gb);
      else if (use_channel_blocks(g))
        weight_grad_channel_blocks<scalar_t>(g, go, in, gw, gb);
      else
        weight_grad_nchw<scalar_t>(g, go, in, gw, gb);
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace fastdl::depthwise

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  m.impl("depthwise_conv2d", &fastdl::depthwise::depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &fastdl::depthwise::depthwise_conv2d_backward_cpu);
}
