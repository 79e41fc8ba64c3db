// Software prefetch into L2, shared by the CPU kernels.
#pragma once

namespace fastdl {

// Prefetch the cache line holding `address` into L2 (prefetcht1 on x86).
// Inline asm rather than __builtin_prefetch: GCC 12 deletes a loop whose body is only
// __builtin_prefetch once it is inlined into its caller (seen at -O1 and -O2 in the
// depthwise row tiles, where the prefetches vanished from the disassembly); a volatile
// asm statement cannot be dropped. Check the .so for prefetcht1 after changing a caller.
inline void prefetch_l2(const void* address) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(address)));
#else
  __builtin_prefetch(address, 0, 2);
#endif
}

}  // namespace fastdl
