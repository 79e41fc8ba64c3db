// Argument checks shared by every op. Each failure raises a Python exception whose
// message names the op, the argument, what was expected and what came, e.g.
//   fastdl.nms: boxes must have shape (N, 4), got (10, 5)
// Shape and value errors are ValueError, dtype errors TypeError, device errors
// RuntimeError, so callers can catch them the way they catch torch's own.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <sstream>
#include <string>

namespace fastdl {

// "(10, 5)": the way Python prints a torch.Size.
inline std::string format_shape(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

// "torch.float32": the way Python prints a dtype.
inline std::string format_dtype(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat: return "torch.float32";
    case c10::kDouble: return "torch.float64";
    case c10::kHalf: return "torch.float16";
    case c10::kBFloat16: return "torch.bfloat16";
    case c10::kByte: return "torch.uint8";
    case c10::kChar: return "torch.int8";
    case c10::kShort: return "torch.int16";
    case c10::kInt: return "torch.int32";
    case c10::kLong: return "torch.int64";
    case c10::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(type);
  }
}

inline std::string format_dtypes(std::initializer_list<c10::ScalarType> types) {
  std::string out;
  size_t i = 0;
  for (auto type : types) {
    out += (i == 0 ? "" : (i + 1 == types.size() ? " or " : ", ")) + format_dtype(type);
    ++i;
  }
  return out;
}

// Shape pattern: -1 is a free dimension. `pattern_text` is what the user reads,
// e.g. "(N, 4)".
inline void check_shape(const char* op, const char* arg, const at::Tensor& t,
                        std::initializer_list<int64_t> pattern, const char* pattern_text) {
  bool ok = t.dim() == static_cast<int64_t>(pattern.size());
  int64_t d = 0;
  for (auto expected : pattern) {
    if (!ok) break;
    ok = expected < 0 || t.size(d) == expected;
    ++d;
  }
  TORCH_CHECK_VALUE(ok, "fastdl.", op, ": ", arg, " must have shape ", pattern_text, ", got ",
                    format_shape(t.sizes()));
}

inline void check_same_size(const char* op, const char* arg_a, const at::Tensor& a, int64_t dim_a,
                            const char* arg_b, const at::Tensor& b, int64_t dim_b) {
  TORCH_CHECK_VALUE(a.size(dim_a) == b.size(dim_b), "fastdl.", op, ": ", arg_a, " and ", arg_b,
                    " must have the same number of entries along dimension ", dim_a, ", got ",
                    a.size(dim_a), " and ", b.size(dim_b));
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t,
                        std::initializer_list<c10::ScalarType> allowed, const char* where = "") {
  for (auto type : allowed)
    if (t.scalar_type() == type) return;
  TORCH_CHECK_TYPE(false, "fastdl.", op, ": ", arg, " must be ", format_dtypes(allowed), where,
                   ", got ", format_dtype(t.scalar_type()));
}

inline void check_same_dtype(const char* op, const char* arg_a, const at::Tensor& a,
                             const char* arg_b, const at::Tensor& b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastdl.", op, ": ", arg_a, " and ", arg_b,
                   " must have the same dtype, got ", format_dtype(a.scalar_type()), " and ",
                   format_dtype(b.scalar_type()));
}

inline void check_same_device(const char* op, const char* arg_a, const at::Tensor& a,
                              const char* arg_b, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), "fastdl.", op, ": ", arg_a, " and ", arg_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_in_range(const char* op, const char* arg, double value, double lo, double hi) {
  // Written so that NaN fails too.
  TORCH_CHECK_VALUE(value >= lo && value <= hi, "fastdl.", op, ": ", arg, " must be in [", lo, ", ",
                    hi, "], got ", value);
}

}  // namespace fastdl
