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
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "batch_norm/batch_norm.h"
#include "batch_norm/batch_norm_cpu_kernels.h"
#include "common/checks.h"
#include "common/cpu_isa.h"

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

// fn(item, channel, offset, n) for every non-empty piece, in parallel.
template <typename Fn>
void for_each_piece(const Layout& l, Fn&& fn) {
  const Pieces p = pieces_of(l);
  const int64_t items = l.outer * l.channels * p.per_plane;
  at::parallel_for(0, items, std::max<int64_t>(1, kTaskValues / std::max<int64_t>(1, p.length)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t item = begin; item < end; ++item) {
                       const int64_t plane = item / p.per_plane;
                       const int64_t start = (item % p.per_plane) * p.length;
                       const int64_t n = std::min(p.length, l.inner - start);
                       if (n > 0) fn(item, plane % l.channels, plane * l.inner + start, n);
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
      for (int64_t piece = 0; piece < p.per_plane; ++piece)
        sizes.push_back(static_cast<double>(std::max<int64_t>(0, std::min(p.length, l.inner - piece * p.length))));
  }
  return sizes;
}

// Where a planar item's partial result goes (an index into the parts' values).
int64_t planar_part_value(const Layout& l, int64_t item, int64_t c) {
  const int64_t per_plane = pieces_of(l).per_plane;
  const int64_t part = item / (per_plane * l.channels) * per_plane + item % per_plane;
  return part * l.channels + c;
}

// fn(begin, end) over ranges of channels, in parallel; merges loop parts outside and
// channels inside, so they read the parts' rows contiguously.
template <typename Fn>
void for_channel_ranges(const Layout& l, Fn&& fn) {
  at::parallel_for(0, l.channels, 256, fn);
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
  for_channel_ranges(l, [&](int64_t begin, int64_t end) {
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
  for_channel_ranges(l, [&](int64_t begin, int64_t end) {
    std::fill(sum + begin, sum + end, 0.0);
    for (size_t p = 0; p < parts; ++p)
      for (int64_t c = begin; c < end; ++c) sum[c] += values[p * C + c];
  });
}

// A float64 vector as a new per-channel tensor of `type` on the CPU.
at::Tensor channel_tensor(const std::vector<double>& values, c10::ScalarType type) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(values.begin(), values.end(), t.data_ptr<double>());
  return t.to(type);
}

// A per-channel tensor (or `fill` for none) as float64 values.
std::vector<double> channel_values(const std::optional<at::Tensor>& t, int64_t channels,
                                   double fill) {
  std::vector<double> values(channels, fill);
  if (t) {
    const at::Tensor d = t->to(at::kDouble).contiguous();
    std::copy(d.data_ptr<double>(), d.data_ptr<double>() + channels, values.begin());
  }
  return values;
}

// Per-channel coefficients of every pass, as the kernels' T.
template <typename T>
struct Coefficients {
  std::vector<T> scale, shift, mean, a, b, c;
  ChannelValues<T> values(int64_t ch) const {
    auto at = [&](const std::vector<T>& v) { return v.empty() ? T(0) : v[ch]; };
    return {at(scale), at(shift), at(mean), at(a), at(b), at(c)};
  }
  ChannelArrays<T> arrays() const {
    return {scale.data(), shift.data(), mean.data(), a.data(), b.data(), c.data()};
  }
};

// mean_dz / mean_dz_xmu are null with fixed statistics (then b = c = 0).
template <typename T>
Coefficients<T> coefficients(int64_t channels, const at::Tensor& mean, const at::Tensor& var,
                             const Epilogue& e, const std::optional<at::Tensor>& mean_dz = {},
                             const std::optional<at::Tensor>& mean_dz_xmu = {},
                             bool backward = false) {
  const auto m = channel_values(mean, channels, 0), v = channel_values(var, channels, 0);
  const auto w = channel_values(e.weight, channels, 1), b = channel_values(e.bias, channels, 0);
  const auto mdz = channel_values(mean_dz, channels, 0);
  const auto mdzx = channel_values(mean_dz_xmu, channels, 0);
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
std::tuple<at::Tensor, at::Tensor> stats_typed(const at::Tensor& x, const Layout& l) {
  const std::vector<double> sizes = part_sizes(l);
  std::vector<double> part_mean(sizes.size() * l.channels), part_m2(sizes.size() * l.channels);
  const T* data = x.const_data_ptr<T>();
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      for_each_row_block(l, [&](int64_t block, int64_t first, int64_t rows) {
        kernels.stats_rows(data + first * l.channels, rows, l.channels,
                           part_mean.data() + block * l.channels,
                           part_m2.data() + block * l.channels);
      });
    } else {
      for_each_piece(l, [&](int64_t item, int64_t c, int64_t offset, int64_t n) {
        const int64_t value = planar_part_value(l, item, c);
        kernels.stats_run(data + offset, n, part_mean[value], part_m2[value]);
      });
    }
  });
  std::vector<double> mean(l.channels), var(l.channels);
  merge_moment_parts(l, sizes, part_mean, part_m2, mean.data(), var.data());
  const double count = static_cast<double>(l.count_per_channel());
  for (double& v : var) v = count > 0 ? v / count : 0.0;
  const auto type = stats_dtype(x.scalar_type());
  return {channel_tensor(mean, type), channel_tensor(var, type)};
}

template <typename T>
void forward_typed(const at::Tensor& x, const Layout& l, const Coefficients<T>& k,
                   const Epilogue& e, const at::Tensor& residual, at::Tensor& out) {
  const T* data = x.const_data_ptr<T>();
  const T* res = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  T* y = out.data_ptr<T>();
  const T slope = static_cast<T>(e.negative_slope);
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_each_row_block(l, [&](int64_t, int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.forward_rows(e.activation, slope, data + offset, res ? res + offset : nullptr,
                             arrays, rows, l.channels, y + offset);
      });
    } else {
      for_each_piece(l, [&](int64_t, int64_t c, int64_t offset, int64_t n) {
        kernels.forward_run(e.activation, slope, data + offset, res ? res + offset : nullptr,
                            k.values(c), n, y + offset);
      });
    }
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> backward_reduce_typed(const at::Tensor& grad_y,
                                                         const at::Tensor& x,
                                                         const at::Tensor& residual,
                                                         const Layout& l,
                                                         const Coefficients<T>& k,
                                                         const Epilogue& e) {
  const size_t parts = part_sizes(l).size();
  std::vector<double> part_dz(parts * l.channels), part_dz_xmu(parts * l.channels);
  const T* g = grad_y.const_data_ptr<T>();
  const T* data = x.const_data_ptr<T>();
  const T* res = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  const T slope = static_cast<T>(e.negative_slope);
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_each_row_block(l, [&](int64_t block, int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.backward_reduce_rows(e.activation, slope, g + offset, data + offset,
                                     res ? res + offset : nullptr, arrays, rows, l.channels,
                                     part_dz.data() + block * l.channels,
                                     part_dz_xmu.data() + block * l.channels);
      });
    } else {
      for_each_piece(l, [&](int64_t item, int64_t c, int64_t offset, int64_t n) {
        const int64_t value = planar_part_value(l, item, c);
        kernels.backward_reduce_run(e.activation, slope, g + offset, data + offset,
                                    res ? res + offset : nullptr, k.values(c), n, part_dz[value],
                                    part_dz_xmu[value]);
      });
    }
  });
  std::vector<double> sum_dz(l.channels), sum_dz_xmu(l.channels);
  sum_parts(l, parts, part_dz, sum_dz.data());
  sum_parts(l, parts, part_dz_xmu, sum_dz_xmu.data());
  const auto type = stats_dtype(x.scalar_type());
  return {channel_tensor(sum_dz, type), channel_tensor(sum_dz_xmu, type)};
}

template <typename T>
void backward_input_typed(const at::Tensor& grad_y, const at::Tensor& x,
                          const at::Tensor& residual, const Layout& l, const Coefficients<T>& k,
                          const Epilogue& e, at::Tensor& grad_x, at::Tensor& grad_residual) {
  const T* g = grad_y.const_data_ptr<T>();
  const T* data = x.const_data_ptr<T>();
  const T* res = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  T* gx = grad_x.defined() ? grad_x.data_ptr<T>() : nullptr;
  T* gr = grad_residual.defined() ? grad_residual.data_ptr<T>() : nullptr;
  const T slope = static_cast<T>(e.negative_slope);
  auto at_offset = [](auto* p, int64_t offset) { return p ? p + offset : nullptr; };
  with_kernels<T>([&](auto kernels) {
    if (l.channels_last) {
      const auto arrays = k.arrays();
      for_each_row_block(l, [&](int64_t, int64_t first, int64_t rows) {
        const int64_t offset = first * l.channels;
        kernels.backward_input_rows(e.activation, slope, g + offset, data + offset,
                                    at_offset(res, offset), arrays, rows, l.channels,
                                    at_offset(gx, offset), at_offset(gr, offset));
      });
    } else {
      for_each_piece(l, [&](int64_t, int64_t c, int64_t offset, int64_t n) {
        kernels.backward_input_run(e.activation, slope, g + offset, data + offset,
                                   at_offset(res, offset), k.values(c), n, at_offset(gx, offset),
                                   at_offset(gr, offset));
      });
    }
  });
}

Epilogue make_epilogue(const char* op, const at::Tensor& input,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, double eps,
                       c10::string_view activation, double negative_slope) {
  Epilogue e{weight, bias, residual, eps, parse_activation(op, activation), negative_slope};
  check_epilogue(op, input, e);
  return e;
}

// The input (and residual) dense in the layout the kernels walk.
struct Operands {
  Layout layout;
  at::Tensor input, residual;
};

Operands operands(const at::Tensor& input, const Epilogue& e) {
  const Layout l = layout_of(input);
  return {l, dense_in_layout(input, l),
          e.residual ? dense_in_layout(*e.residual, l) : at::Tensor()};
}

void check_statistics(const char* op, const at::Tensor& input, const at::Tensor& mean,
                      const at::Tensor& var) {
  check_channel_vector(op, "mean", input, mean);
  check_channel_vector(op, "var", input, var);
}

void check_grad_output(const char* op, const at::Tensor& input, const at::Tensor& grad_output) {
  check_same_as_input(op, "grad_output", input, grad_output);
}

at::Tensor forward(const char* op, const at::Tensor& input, const at::Tensor& mean,
                   const at::Tensor& var, const Epilogue& e) {
  const Operands o = operands(input, e);
  at::Tensor out = empty_in_layout(input, o.layout);
  AT_DISPATCH_FLOATING_TYPES(o.input.scalar_type(), "fastdl_batch_norm", [&] {
    const auto k = coefficients<scalar_t>(o.layout.channels, mean, var, e);
    forward_typed<scalar_t>(o.input, o.layout, k, e, o.residual, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cpu(const at::Tensor& input) {
  const char* op = "batch_norm_stats";
  check_input(op, input, false);
  const Layout l = layout_of(input);
  const at::Tensor x = dense_in_layout(input, l);
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl_batch_norm",
                                    [&] { return stats_typed<scalar_t>(x, l); });
}

at::Tensor batch_norm_act_cpu(const at::Tensor& input, const at::Tensor& mean,
                              const at::Tensor& var, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& residual, double eps,
                              c10::string_view activation, double negative_slope) {
  const char* op = "batch_norm_act";
  check_input(op, input, false);
  check_statistics(op, input, mean, var);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  return forward(op, input, mean, var, e);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    double eps, c10::string_view activation, double negative_slope) {
  const char* op = "batch_norm_act_train";
  check_input(op, input, false);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  check_more_than_one_value(op, input);
  auto [mean, var] = batch_norm_stats_cpu(input);
  // Normalise with the rounded statistics the backward pass will read.
  at::Tensor out = forward(op, input, mean, var, e);
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_reduce_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    double eps, c10::string_view activation, double negative_slope) {
  const char* op = "batch_norm_act_backward_reduce";
  check_input(op, input, false);
  check_grad_output(op, input, grad_output);
  check_statistics(op, input, mean, var);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  const Operands o = operands(input, e);
  const at::Tensor g = dense_in_layout(grad_output, o.layout);
  return AT_DISPATCH_FLOATING_TYPES(o.input.scalar_type(), "fastdl_batch_norm", [&] {
    const auto k = coefficients<scalar_t>(o.layout.channels, mean, var, e);
    return backward_reduce_typed<scalar_t>(g, o.input, o.residual, o.layout, k, e);
  });
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_input_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& mean_dz, const std::optional<at::Tensor>& mean_dz_xmu,
    double eps, c10::string_view activation, double negative_slope,
    std::array<bool, 2> output_mask) {
  const char* op = "batch_norm_act_backward_input";
  check_input(op, input, false);
  check_grad_output(op, input, grad_output);
  check_statistics(op, input, mean, var);
  TORCH_CHECK_VALUE(mean_dz.has_value() == mean_dz_xmu.has_value(), "fastdl.", op,
                    ": mean_dz and mean_dz_xmu must be given together (batch statistics) or "
                    "both be None (fixed statistics)");
  if (mean_dz) check_channel_vector(op, "mean_dz", input, *mean_dz);
  if (mean_dz_xmu) check_channel_vector(op, "mean_dz_xmu", input, *mean_dz_xmu);
  const Epilogue e =
      make_epilogue(op, input, weight, bias, residual, eps, activation, negative_slope);
  TORCH_CHECK_VALUE(!output_mask[1] || e.residual, "fastdl.", op,
                    ": grad_residual was asked for, but residual is None");
  const Operands o = operands(input, e);
  const at::Tensor g = dense_in_layout(grad_output, o.layout);
  at::Tensor grad_input = output_mask[0] ? empty_in_layout(input, o.layout) : at::Tensor();
  at::Tensor grad_residual = output_mask[1] ? empty_in_layout(input, o.layout) : at::Tensor();
  if (output_mask[0] || output_mask[1]) {
    AT_DISPATCH_FLOATING_TYPES(o.input.scalar_type(), "fastdl_batch_norm", [&] {
      const auto k = coefficients<scalar_t>(o.layout.channels, mean, var, e, mean_dz,
                                            mean_dz_xmu, /*backward=*/true);
      backward_input_typed<scalar_t>(g, o.input, o.residual, o.layout, k, e, grad_input,
                                     grad_residual);
    });
  }
  return {grad_input, grad_residual};
}

}  // namespace
}  // namespace fastdl::batch_norm

TORCH_LIBRARY_IMPL(fastdl, CPU, m) {
  using namespace fastdl::batch_norm;
  m.impl("batch_norm_stats", &batch_norm_stats_cpu);
  m.impl("batch_norm_act", &batch_norm_act_cpu);
  m.impl("batch_norm_act_train", &batch_norm_act_train_cpu);
  m.impl("batch_norm_act_backward_reduce", &batch_norm_act_backward_reduce_cpu);
  m.impl("batch_norm_act_backward_input", &batch_norm_act_backward_input_cpu);
}
