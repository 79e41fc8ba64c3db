// Runtime choice of the CPU vector path. The package is compiled for baseline
// x86-64; vector kernels are compiled per function with target attributes and
// chosen here, so one wheel runs on any x86-64 CPU.
//
// FASTDL_ISA=scalar|avx2|avx512 (read at import) forces a path; tests switch
// paths with fastdl._C.set_cpu_isa to cover every path the machine has.
#pragma once

#include <string>
#include <type_traits>

namespace fastdl {

enum class CpuIsa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// avx2 means AVX2+FMA; avx512 means AVX-512 F/BW/VL/DQ.
CpuIsa best_cpu_isa();
CpuIsa cpu_isa();
// Throws (ValueError) for an unknown name or a path this CPU lacks.
void set_cpu_isa(const std::string& name);
const char* cpu_isa_name(CpuIsa isa);
// AVX-512 VPOPCNTDQ (vector popcount; Ice Lake, Zen 4 and later), which the avx512
// path does not imply: the binary convolution checks it on its own.
bool cpu_has_avx512_popcount();
// Bytes of one core's L2 cache (sysconf; 1 MB where the system does not say): the
// budget kernels size what a thread keeps hot across passes by.
long cpu_l2_cache_bytes();

// Calls fn(kernels) with the kernel set of the current ISA. Each op declares one
// struct of kernels per ISA; float uses the vector sets, every other type (float64)
// the scalar set.
template <typename T, typename Scalar, typename Avx2, typename Avx512, typename Fn>
void with_isa_kernels(Fn&& fn) {
  if constexpr (std::is_same_v<T, float>) {
    const CpuIsa isa = cpu_isa();
    if (isa == CpuIsa::avx512) return fn(Avx512{});
    if (isa == CpuIsa::avx2) return fn(Avx2{});
  }
  fn(Scalar{});
}

}  // namespace fastdl
