// Per-thread scratch buffers that outlive a call, for the CPU kernels' per-task
// buffers (channels-last blocks of NCHW planes, padded planes).
//
// Why: a buffer allocated per call is fresh memory every time, since glibc hands
// buffers of 128 KB and up back to the system when they are freed (munmap, or a trim of
// the heap top), so each call paid that buffer's page faults again, and
// std::vector(n) zero-filled it on top. A 32x112x112 NCHW depthwise forward, whose
// two threads each take two 800 KB blocks, ran at 0.28-0.33 ms between oneDNN calls,
// 0.23-0.25 ms with glibc told to keep its memory.
//
// Contents are uninitialised (whatever the slot's last user left): callers write
// every element they read. Tests set poisoning (set_scratch_poison), which fills each
// buffer with NaN bytes when handed out, so a read of unwritten scratch shows up in
// their results. A slot keeps at most kKeptBytes between calls, so each thread keeps at
// most kSlots * kKeptBytes per element type, which bounds what all of a many-core
// machine's OpenMP threads hold; larger requests get a buffer of their own, freed with
// the ThreadScratch. The exceptions: a buffer that an op's calling thread shares with
// its workers for the call (kCallKeptBytes), one per calling thread; and a thread's
// share of a packed weight panel (kPanelKeptBytes, the LSTM's slots 3 and 4), whose
// shares over a team add up to about one copy of a layer's weights.
// Two ThreadScratch alive at once on one thread must use different slots.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstring>

#include "common/aligned_vector.h"

namespace fastdl {

inline std::atomic<bool>& scratch_poison_flag() {
  static std::atomic<bool> poison{false};
  return poison;
}
// Whether scratch buffers are filled with 0xFF bytes (NaN as float and double) when
// handed out: for tests.
inline void set_scratch_poison(bool on) { scratch_poison_flag().store(on); }

template <typename T>
class ThreadScratch {
 public:
  static constexpr int kSlots = 5;
  static constexpr std::size_t kKeptBytes = std::size_t(2) << 20;
  // What a slot may keep for a buffer that an op's calling thread holds for the whole
  // call and shares with its workers (one such thread per caller, not per OpenMP worker).
  static constexpr std::size_t kCallKeptBytes = std::size_t(32) << 20;
  // What a slot may keep for a thread's share of a packed weight panel.
  static constexpr std::size_t kPanelKeptBytes = std::size_t(32) << 20;

  // `kept_bytes`: the largest buffer the slot keeps between calls (kKeptBytes,
  // kCallKeptBytes for a call's shared buffer, kPanelKeptBytes for a panel's share).
  ThreadScratch(int slot, std::size_t count, std::size_t kept_bytes = kKeptBytes) {
    const std::size_t bytes = count * sizeof(T);
    AlignedVector<std::byte>* buffer = &own_;
    if (bytes <= kept_bytes) {
      thread_local std::array<AlignedVector<std::byte>, kSlots> kept;
      buffer = &kept.at(slot);
    }
    if (buffer->size() < bytes) {
      buffer->clear();
      buffer->shrink_to_fit();  // no copy of the old contents
      buffer->resize(bytes);
    }
    data_ = reinterpret_cast<T*>(buffer->data());
    if (scratch_poison_flag().load(std::memory_order_relaxed)) std::memset(data_, 0xFF, bytes);
  }
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;

  T* data() const { return data_; }

 private:
  AlignedVector<std::byte> own_;
  T* data_ = nullptr;
};

}  // namespace fastdl
