// std::vector whose data starts on a 64-byte boundary (a cache line, one AVX-512
// register), for the packed panels and scratch that vector kernels stream.
//
// Why: a plain std::vector of a large size comes from mmap at a page offset of 16
// bytes, so every 64-byte load of a packed panel straddles two cache lines (measured on
// an Intel Xeon, a standalone 6 x 4-vector FMA tile: 166 GFLOP/s on such a panel, 202
// aligned). And a large buffer is first touched a 4 KB page fault at a time: a fresh
// 64 MB copy ran at 5 GB/s here against 13 GB/s into touched memory. Buffers of
// kHugeBytes and up are therefore aligned to 2 MB and madvise'd MADV_HUGEPAGE (under
// the usual transparent_hugepage=madvise setting): the kernel backs them with 2 MB
// pages, 512x fewer faults. An LSTM layer at hidden 1024 (16 MB of panel per thread)
// went from 14.5 to 10.7 ms for a one-step call. The advice covers this buffer only,
// never a caller's tensor.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <new>
#include <vector>

namespace fastdl {

template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::size_t kHugeBytes = std::size_t(4) << 20;
  static constexpr std::size_t kHugePage = std::size_t(2) << 20;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  static std::align_val_t alignment(std::size_t bytes) {
    return std::align_val_t{bytes >= kHugeBytes ? kHugePage : 64};
  }
  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    void* p = ::operator new(bytes, alignment(bytes));
    if (bytes >= kHugeBytes) madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);  // advice only
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) {
    ::operator delete(p, n * sizeof(T), alignment(n * sizeof(T)));
  }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace fastdl
