// Software prefetch into L2, shared by the CPU kernels.
#pragma once

namespace fastdl {

// Prefetch the cache line holding `address` into L2 (prefetcht1 on x86).
// Inline asm rather than __builtin_prefetch: GCC 12 deletes a loop whose body is only
// __builtin_prefetch once it is inlined into its caller (seen at -O1 and -O2 in the
// depthwise row tiles, where the prefetches vanished from the disassembly); a volatile
// asm statement cannot be dropped. Check the .so for prefetcht1 after changing a caller.
// The address goes in a register ("r"), not as a memory operand ("m"): a char memory
// operand may alias anything, so GCC stored every live accumulator array to memory
// before each prefetch, and the LSTM's FMA tile (24 zmm accumulators) ran 2x slower.
inline void prefetch_l2(const void* address) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 (%0)" : : "r"(address));
#else
  __builtin_prefetch(address, 0, 2);
#endif
}

// The same into L1 (prefetcht0).
inline void prefetch_l1(const void* address) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 (%0)" : : "r"(address));
#else
  __builtin_prefetch(address, 0, 3);
#endif
}

}  // namespace fastdl
