#include "common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>

namespace fastdl {
namespace {

CpuIsa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return CpuIsa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::avx2;
#endif
  return CpuIsa::scalar;
}

CpuIsa parse(const std::string& name) {
  if (name == "scalar") return CpuIsa::scalar;
  if (name == "avx2") return CpuIsa::avx2;
  if (name == "avx512") return CpuIsa::avx512;
  TORCH_CHECK_VALUE(false, "fastdl: CPU ISA must be one of scalar, avx2, avx512, got '", name, "'");
}

std::atomic<int>& current() {
  static std::atomic<int> isa = [] {
    const char* forced = std::getenv("FASTDL_ISA");
    if (forced == nullptr || *forced == '\0') return static_cast<int>(best_cpu_isa());
    CpuIsa wanted = parse(forced);
    TORCH_CHECK_VALUE(wanted <= best_cpu_isa(), "fastdl: FASTDL_ISA=", forced,
                      " but this CPU supports at most ", cpu_isa_name(best_cpu_isa()));
    return static_cast<int>(wanted);
  }();
  return isa;
}

}  // namespace

CpuIsa best_cpu_isa() {
  static const CpuIsa best = detect();
  return best;
}

CpuIsa cpu_isa() { return static_cast<CpuIsa>(current().load(std::memory_order_relaxed)); }

void set_cpu_isa(const std::string& name) {
  CpuIsa wanted = parse(name);
  TORCH_CHECK_VALUE(wanted <= best_cpu_isa(), "fastdl: CPU ISA '", name,
                    "' is not supported by this CPU (best: ", cpu_isa_name(best_cpu_isa()), ")");
  current().store(static_cast<int>(wanted), std::memory_order_relaxed);
}

bool cpu_has_avx512_popcount() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vpopcntdq") != 0;
  }();
  return has;
#else
  return false;
#endif
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "scalar";
  }
}

long cpu_l2_cache_bytes() {
  static const long bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? reported : 1L << 20;
  }();
  return bytes;
}

}  // namespace fastdl
