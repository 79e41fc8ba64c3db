// CPU fused batch norm: work split and ISA dispatch around the kernels of
// batch_norm_cpu_kernels.inc.
//
// Planar inputs (NCHW and alike) are split into pieces of planes, so a few large
// planes still spread over the threads; channels-last inputs into blocks of rows.
// Reductions write one partial result per piece or block and merge them per channel
// in a fixed order: the results do not depend on the thread count, and no atomics.
// Per-channel coefficients are computed once, in float64, from the statistics
// tensors the backward pass will also read, so both passes see the same z.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

#include "batch_norm/batch_norm.h"
#include "batch_norm/batch_norm_cpu_kernels.h"
#include "batch_norm/batch_norm_ops.h"
#include "common/checks.h"
#include "common/cpu_isa.h"
#include "common/reduced_precision.h"

namespace fastdl::batch_norm {
namespace {

// Values per parallel task: enough to amortise a task, few enough to balance two
// to a few dozen threads on ResNet-sized tensors.
constexpr int64_t kTaskValues = 32768;

template <typename T, typename Fn>
void with_kernels(Fn&& fn) {
  with_isa_kernels<T, ScalarKernels, Avx2Kernels, Avx512Kernels>(fn);
}

// A planar layout's planes cut into `per_plane` pieces of at most `length` values.
// Item i = plane * per_plane + piece, plane = n * channels + c.
struct Pieces {
  int64_t per_plane, length;
};

Pieces pieces_of(const Layout& l) {
  const int64_t per_plane = std::max<int64_t>(1, (l.inner + kTaskValues - 1) / kTaskValues);
  return {per_plane, (l.inner + per_plane - 1) / per_plane};
}

// fn(first_item, runs, offset) over the planar data, in parallel: groups of whole
// planes when a plane is at most kTaskValues values, else one piece per call.
template <typename Fn>
void for_each_run(const Layout& l, Fn&& fn) {
  const Pieces p = pieces_of(l);
  const int64_t planes = l.outer * l.channels;
  if (p.per_plane == 1) {
    at::parallel_for(0, planes, std::max<int64_t>(1, kTaskValues / std::max<int64_t>(1, l.inner)),
                     [&](int64_t begin, int64_t end) {
                       fn(begin, Runs{l.inner, end - begin, begin % l.channels, l.channels},
                          begin * l.inner);
                     });
    return;
  }
  at::parallel_for(0, planes * p.per_plane, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / p.per_plane;
      const int64_t start = (item % p.per_plane) * p.length;
      const int64_t n = std::min(p.length, l.inner - start);
      if (n > 0) fn(item, Runs{n, 1, plane % l.channels, l.channels}, plane * l.inner + start);
    }
  });
}

// Rows per block of a channels-last layout.
int64_t rows_per_block(const Layout& l) {
  return std::max<int64_t>(1, 4 * kTaskValues / l.channels);
}

// fn(block, first_row, rows) for every block of rows, in parallel.
template <typename Fn>
void for_each_row_block(const Layout& l, Fn&& fn) {
  const int64_t block_rows = rows_per_block(l);
  const int64_t blocks = (l.outer + block_rows - 1) / block_rows;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * block_rows;
      fn(block, first, std::min(block_rows, l.outer - first));
    }
  });
}

// fn(first_row, rows) over the rows of a channels-last layout, in parallel, for the
// elementwise passes: at::parallel_for cuts the rows evenly over the threads. The fixed
// blocks above, which reductions need so that their results do not depend on the
// thread count, can split unevenly: 96x56x56 at batch 1 is three blocks, two of them
// for one thread of two. Measured on an Intel Xeon, inference calls in those blocks
// against these ranges: 96x56x56 87 -> 47 us, 32x112x112 (four blocks) 122 -> 72 us.
template <typename Fn>
void for_row_ranges(const Layout& l, Fn&& fn) {
  at::parallel_for(0, l.outer, std::max<int64_t>(1, kTaskValues / l.channels),
                   [&](int64_t begin, int64_t end) { fn(begin, end - begin); });
}

// Reductions write one row of `channels` partial results per part: a block of rows,
// or the same piece of every plane of one sample. part_sizes()[p] is how many values
// per channel went into part p.
std::vector<double> part_sizes(const Layout& l) {
  std::vector<double> sizes;
  if (l.channels_last) {
    const int64_t block_rows = rows_per_block(l);
    for (int64_t first = 0; first < l.outer; first += block_rows)
      sizes.push_back(static_cast<double>(std::min(block_rows, l.outer - first)));
  } else {
    const Pieces p = pieces_of(l);
    for (int64_t n = 0; n < l.outer; ++n)
      for (int64_t piece = 0; piece < p.per_plane; ++piece) {
        const int64_t length = std::min(p.length, l.inner - piece * p.length);
        sizes.push_back(static_cast<double>(std::max<int64_t>(0, length)));
      }
  }
  return sizes;
}

// Where a planar item's partial result goes (an index into the parts' values).
int64_t planar_part_value(const Layout& l, int64_t item, int64_t c) {
  const int64_t per_plane = pieces_of(l).per_plane;
  const int64_t part = item / (per_plane * l.channels) * per_plane + item % per_plane;
  return part * l.channels + c;
}

// fn(begin, end) over ranges of channels; merges loop parts outside and channels
// inside, so they read the parts' rows contiguously. In parallel only when there
// are enough partial values to pay for waking the threads.
template <typename Fn>
void for_channel_ranges(const Layout& l, size_t parts, Fn&& fn) {
  constexpr int64_t kValuesPerTask = 1 << 18;
  const int64_t grain = std::max<int64_t>(256, kValuesPerTask / std::max<int64_t>(1, parts));
  at::parallel_for(0, l.channels, grain, fn);
}

// Per-channel mean and m2 from the parts' (size, mean, m2): the mean as a weighted
// sum, then m2 = sum of (m2_p + size_p * (mean_p - mean)^2), the exact parallel
// formula, with no division per part and no cancellation.
void merge_moment_parts(const Layout& l, const std::vector<double>& sizes,
                        const std::vector<double>& part_mean, const std::vector<double>& part_m2,
                        double* mean, double* m2) {
  double total = 0;
  for (double size : sizes) total += size;
  const int64_t C = l.channels;
  for_channel_ranges(l, sizes.size(), [&](int64_t begin, int64_t end) {
    std::fill(mean + begin, mean + end, 0.0);
    std::fill(m2 + begin, m2 + end, 0.0);
    for (size_t p = 0; p < sizes.size(); ++p)
      for (int64_t c = begin; c < end; ++c) mean[c] += sizes[p] * part_mean[p * C + c];
    if (total > 0)
      for (int64_t c = begin; c < end; ++c) mean[c] /= total;
    for (size_t p = 0; p < sizes.size(); ++p) {
      if (sizes[p] == 0) continue;
      for (int64_t c = begin; c < end; ++c) {
        const double d = part_mean[p * C + c] - mean[c];
        m2[c] += part_m2[p * C + c] + sizes[p] * d * d;
      }
    }
  });
}

// Per-channel sums of the parts' values.
void sum_parts(const Layout& l, size_t parts, const std::vector<double>& values, double* sum) {
  const int64_t C = l.channels;
  for_channel_ranges(l, parts, [&](int64_t begin, int64_t end) {
    std::fill(sum + begin, sum + end, 0.0);
    for (size_t p = 0; p < parts; ++p)
      for (int64_t c = begin; c < end; ++c) sum[c] += values[p * C + c];
  });
}

// Copies float64 values into a per-channel output tensor of any floating dtype.
void store_channels(const std::vector<double>& values, at::Tensor& out) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(values.begin(), values.end(), t.data_ptr<double>());
  out.copy_(t);
}

// A per-channel tensor (or `fill` for none) as float64 values. float32 and float64 are
// read in place: a conversion to a float64 tensor is a tensor op of its own, four per
// call (statistics, weight, bias). Measured on an Intel Xeon, a 1x8x4x4 inference call
// under no_grad: 11.8 -> 8.7 us.
std::vector<double> channel_values(const std::optional<at::Tensor>& t, int64_t channels,
                                   double fill) {
  std::vector<double> values(channels, fill);
  if (!t || !t->defined()) return values;
  const at::Tensor& src = *t;
  if (src.scalar_type() != at::kFloat && src.scalar_type() != at::kDouble) {
    const at::Tensor d = src.to(at::kDouble).contiguous();
    std::copy(d.const_data_ptr<double>(), d.const_data_ptr<double>() + channels, values.begin());
    return values;
  }
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "fastdl_batch_norm_channel_values", [&] {
    const scalar_t* p = src.const_data_ptr<scalar_t>();
    const int64_t stride = src.stride(0);
    for (int64_t c = 0; c < channels; ++c) values[c] = static_cast<double>(p[c * stride]);
  });
  return values;
}

// Per-channel coefficients of every pass, as the kernels' T.
template <typename T>
struct Coefficients {
  std::vector<T> scale, shift, mean, a, b, c;
  ChannelArrays<T> arrays() const {
    return {scale.data(), shift.data(), mean.data(), a.data(), b.data(), c.data()};
  }
};

// With fixed statistics (no mean_dz / mean_dz_xmu) b = c = 0.
template <typename T>
Coefficients<T> coefficients(const Operands& o, bool backward = false) {
  const int64_t channels = o.layout.channels;
  const Epilogue& e = o.epilogue;
  const auto m = channel_values(o.mean, channels, 0), v = channel_values(o.var, channels, 0);
  const auto w = channel_values(e.weight, channels, 1), b = channel_values(e.bias, channels, 0);
  const auto mdz = channel_values(o.mean_dz, channels, 0);
  const auto mdzx = channel_values(o.mean_dz_xmu, channels, 0);
  Coefficients<T> k;
  for (auto* vec : {&k.scale, &k.shift, &k.mean}) vec->resize(channels);
  if (backward)
    for (auto* vec : {&k.a, &k.b, &k.c}) vec->resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    double scale, shift;
    forward_coefficients<double>(m[c], v[c], w[c], b[c], e.eps, scale, shift);
    k.scale[c] = static_cast<T>(scale);
    k.shift[c] = static_cast<T>(shift);
    k.mean[c] = static_cast<T>(m[c]);
    if (backward) {
      double ca, cb, cc;
      backward_coefficients<double>(v[c], w[c], e.eps, mdz[c], mdzx[c], ca, cb, cc);
      k.a[c] = static_cast<T>(ca);
      k.b[c] = static_cast<T>(cb);
      k.c[c] = static_cast<T>(cc);
    }
  }
  return k;
}

template <typename T>
void stats_typed(const Operands& o, at::Tensor& mean_out, at::Tensor& var_out) {
  const Layout& l = o.layout;
  const std::vector<double> sizes = part_sizes(l);
  std::vector<double> part_mean(sizes.size() * l.channels), part_m2(sizes.size() * l.channels);
  const T* data = o.input.const_data_ptr<T>();
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      for_each_row_block(l, [&](int64_t block, int64_t first, int64_t rows) {
        kernels.stats_rows(data + first * l.channels, rows, l.channels,
                           part_mean.data() + block * l.channels,
                           part_m2.data() + block * l.channels);
      });
    } else {
      for_each_run(l, [&](int64_t item, const Runs& runs, int64_t offset) {
        const int64_t value = planar_part_value(l, item, runs.first_channel);
        kernels.stats_run(data + offset, runs, part_mean.data() + value,
                          part_m2.data() + value);
      });
    }
  });
  std::vector<double> mean(l.channels), var(l.channels);
  merge_moment_parts(l, sizes, part_mean, part_m2, mean.data(), var.data());
  const double count = static_cast<double>(l.count_per_channel());
  for (double& v : var) v = count > 0 ? v / count : 0.0;
  store_channels(mean, mean_out);
  store_channels(var, var_out);
}

// Pointers of one call's tensors (null: not given).
template <typename T>
struct Pointers {
  const T *input, *residual, *grad_output;
  T slope;
  explicit Pointers(const Operands& o)
      : input(o.input.const_data_ptr<T>()),
        residual(o.residual.defined() ? o.residual.const_data_ptr<T>() : nullptr),
        grad_output(o.grad_output.defined() ? o.grad_output.const_data_ptr<T>() : nullptr),
        slope(static_cast<T>(o.epilogue.negative_slope)) {}
};

template <typename T>
T* data_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// p + offset, or null for an absent tensor.
template <typename P>
P* at_offset(P* p, int64_t offset) {
  return p ? p + offset : nullptr;
}

template <typename T>
void forward_typed(const Operands& o, at::Tensor& output) {
  const Layout& l = o.layout;
  const Coefficients<T> k = coefficients<T>(o);
  const Pointers<T> p(o);
  const Activation act = o.epilogue.activation;
  T* y = output.data_ptr<T>();
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_row_ranges(l, [&](int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.forward_rows(act, p.slope, p.input + offset, at_offset(p.residual, offset),
                             arrays, rows, l.channels, y + offset);
      });
    } else {
      for_each_run(l, [&](int64_t, const Runs& runs, int64_t offset) {
        kernels.forward_run(act, p.slope, p.input + offset, at_offset(p.residual, offset),
                            k.arrays(), runs, y + offset);
      });
    }
  });
}

template <typename T>
void backward_reduce_typed(const Operands& o, at::Tensor& sum_dz_out, at::Tensor& sum_dz_xmu_out,
                           at::Tensor& dz) {
  const Layout& l = o.layout;
  const Coefficients<T> k = coefficients<T>(o);
  const Pointers<T> p(o);
  const Activation act = o.epilogue.activation;
  T* dz_data = data_or_null<T>(dz);
  const size_t parts = part_sizes(l).size();
  std::vector<double> part_dz(parts * l.channels), part_dz_xmu(parts * l.channels);
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_each_row_block(l, [&](int64_t block, int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.backward_reduce_rows(act, p.slope, p.grad_output + offset, p.input + offset,
                                     at_offset(p.residual, offset), arrays, rows, l.channels,
                                     part_dz.data() + block * l.channels,
                                     part_dz_xmu.data() + block * l.channels,
                                     at_offset(dz_data, offset));
      });
    } else {
      for_each_run(l, [&](int64_t item, const Runs& runs, int64_t offset) {
        const int64_t value = planar_part_value(l, item, runs.first_channel);
        kernels.backward_reduce_run(act, p.slope, p.grad_output + offset, p.input + offset,
                                    at_offset(p.residual, offset), k.arrays(), runs,
                                    part_dz.data() + value, part_dz_xmu.data() + value,
                                    at_offset(dz_data, offset));
      });
    }
  });
  std::vector<double> sum_dz(l.channels), sum_dz_xmu(l.channels);
  sum_parts(l, parts, part_dz, sum_dz.data());
  sum_parts(l, parts, part_dz_xmu, sum_dz_xmu.data());
  store_channels(sum_dz, sum_dz_out);
  store_channels(sum_dz_xmu, sum_dz_xmu_out);
}

template <typename T>
void backward_input_typed(const Operands& o, at::Tensor& grad_input, at::Tensor& grad_residual) {
  const Layout& l = o.layout;
  const Coefficients<T> k = coefficients<T>(o, /*backward=*/true);
  const Pointers<T> p(o);
  const Activation act = o.epilogue.activation;
  T* gx = data_or_null<T>(grad_input);
  T* gr = data_or_null<T>(grad_residual);
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_row_ranges(l, [&](int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.backward_input_rows(act, p.slope, p.grad_output + offset, p.input + offset,
                                    at_offset(p.residual, offset), arrays, rows, l.channels,
                                    at_offset(gx, offset), at_offset(gr, offset));
      });
    } else {
      for_each_run(l, [&](int64_t, const Runs& runs, int64_t offset) {
        kernels.backward_input_run(act, p.slope, p.grad_output + offset, p.input + offset,
                                   at_offset(p.residual, offset), k.arrays(), runs,
                                   at_offset(gx, offset), at_offset(gr, offset));
      });
    }
  });
}

// float16 and bfloat16 run the float32 kernels on float32 copies of the tensors (the
// statistics are float32 either way) and convert the results back: two more passes
// over memory than native reduced-precision kernels would make, which are not written.
Operands widened(const Operands& o) {
  Operands w = o;
  for (at::Tensor* t : {&w.input, &w.residual, &w.grad_output}) *t = widened_to_float32(*t);
  return w;
}

at::Tensor float_like(const at::Tensor& t) {
  return t.defined() ? at::empty_like(t, t.options().dtype(at::kFloat)) : t;
}

void copy_back(at::Tensor& out, const at::Tensor& float_out) {
  if (out.defined()) out.copy_(float_out);
}

#define FASTDL_CPU_DISPATCH(tensor, call) \
  AT_DISPATCH_FLOATING_TYPES((tensor).scalar_type(), "fastdl_batch_norm_cpu", [&] { call; })

void stats_cpu(const Operands& o, at::Tensor& mean, at::Tensor& var) {
  if (is_16bit_float(o.input)) return stats_typed<float>(widened(o), mean, var);
  FASTDL_CPU_DISPATCH(o.input, stats_typed<scalar_t>(o, mean, var));
}

void forward_cpu(const Operands& o, at::Tensor& output) {
  if (is_16bit_float(o.input)) {
    at::Tensor out = float_like(output);
    forward_typed<float>(widened(o), out);
    return copy_back(output, out);
  }
  FASTDL_CPU_DISPATCH(o.input, forward_typed<scalar_t>(o, output));
}

void backward_reduce_cpu(const Operands& o, at::Tensor& sum_dz, at::Tensor& sum_dz_xmu,
                         at::Tensor& dz) {
  if (is_16bit_float(o.input)) {
    at::Tensor dz_float = float_like(dz);
    backward_reduce_typed<float>(widened(o), sum_dz, sum_dz_xmu, dz_float);
    return copy_back(dz, dz_float);
  }
  FASTDL_CPU_DISPATCH(o.input, backward_reduce_typed<scalar_t>(o, sum_dz, sum_dz_xmu, dz));
}

void backward_input_cpu(const Operands& o, at::Tensor& grad_input, at::Tensor& grad_residual) {
  if (is_16bit_float(o.input)) {
    at::Tensor input_float = float_like(grad_input), residual_float = float_like(grad_residual);
    backward_input_typed<float>(widened(o), input_float, residual_float);
    copy_back(grad_input, input_float);
    return copy_back(grad_residual, residual_float);
  }
  FASTDL_CPU_DISPATCH(o.input, backward_input_typed<scalar_t>(o, grad_input, grad_residual));
}

const DeviceKernels kCpuKernels{&stats_cpu, &forward_cpu, &backward_reduce_cpu,
                                &backward_input_cpu};

}  // namespace
}  // namespace fastdl::batch_norm

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  fastdl::batch_norm::register_ops<fastdl::batch_norm::kCpuKernels>(m);
}
