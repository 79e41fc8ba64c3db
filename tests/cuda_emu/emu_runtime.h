// A CUDA emulator for tests on machines without a GPU: fastdl's .cu files, with their
// kernel launches rewritten by build.py, compiled as C++ and run on the CPU.
//
// Each block runs alone; each of its threads is a fiber (ucontext) on one OS thread,
// run until it exits or reaches a barrier, in a new random order after each barrier.
// __syncthreads waits for every live thread of the block, warp shuffles and wmma calls
// for every live lane of the warp (of the mask), so a kernel whose threads would wait
// on each other forever (a barrier some threads never reach) stops with an error here
// instead of hanging. __shared__ variables become function statics (blocks run one at
// a time), dynamic shared memory a per-launch buffer; both are filled with NaN bytes at
// the start of each block, so a read of shared memory no thread wrote shows in the
// results.
//
// What this proves: the kernels' index math, tiling, reductions, barrier placement and
// (with FASTDL_CUDA_EMU=asan) memory bounds give the CPU op's results. What it cannot:
// timing, races between threads that run at once (here a thread runs from one barrier
// to the next alone), the memory model, occupancy or any speed.
#pragma once

#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <type_traits>
#include <vector>

// CUDA's keywords as plain C++ (host_defines.h leaves some as attributes gcc ignores).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {

constexpr int kWarpSize = 32;
constexpr size_t kFiberStackBytes = 256 * 1024;

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  dim3 index;
  int lane, warp;
  State state = State::Ready;
  unsigned warp_mask = 0;
  const char* barrier_file = nullptr;  // the __syncthreads the thread waits at
  int barrier_line = 0;
  ucontext_t context;
  alignas(16) unsigned char shuffle_slot[16];
};

struct Launch {
  dim3 grid, block, block_index;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<unsigned char> dynamic_shared;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  Fiber* current = nullptr;
  std::vector<const void*> warp_published;  // one per warp
  std::vector<void*> poisoned_shared;       // the __shared__ statics this block has filled
};

inline Launch& launch_state() {
  static Launch launch;
  return launch;
}

inline void fiber_entry() {
  Launch& l = launch_state();
  (*l.body)();
  l.current->state = State::Done;
  swapcontext(&l.current->context, &l.scheduler);
}

// Leaves the running fiber at a barrier; the scheduler resumes it when released.
inline void wait_at(State barrier, unsigned warp_mask = 0, const char* file = nullptr, int line = 0) {
  Launch& l = launch_state();
  Fiber* self = l.current;
  self->state = barrier;
  self->warp_mask = warp_mask;
  self->barrier_file = file;
  self->barrier_line = line;
  swapcontext(&self->context, &l.scheduler);
}

inline unsigned lane_bit(int lane) { return 1u << lane; }

// After a pass that left no fiber ready: release the warps whose waiting lanes are
// all live lanes of their mask, else the block barrier if every live thread is at it.
inline bool release_barriers(Launch& l) {
  const int threads = static_cast<int>(l.fibers.size());
  const int warps = (threads + kWarpSize - 1) / kWarpSize;
  bool released = false;
  for (int w = 0; w < warps; ++w) {
    unsigned live = 0, waiting = 0, wanted = 0;
    for (int i = w * kWarpSize; i < std::min(threads, (w + 1) * kWarpSize); ++i) {
      const Fiber& f = l.fibers[i];
      if (f.state != State::Done) live |= lane_bit(f.lane);
      if (f.state == State::AtWarpBarrier) {
        waiting |= lane_bit(f.lane);
        wanted |= f.warp_mask;
      }
    }
    if (waiting != 0 && (wanted & live) == waiting) {
      for (int i = w * kWarpSize; i < std::min(threads, (w + 1) * kWarpSize); ++i)
        if (l.fibers[i].state == State::AtWarpBarrier) l.fibers[i].state = State::Ready;
      released = true;
    }
  }
  if (released) return true;
  bool all_at_block_barrier = true, any = false;
  for (const Fiber& f : l.fibers) {
    if (f.state == State::Done) continue;
    any = true;
    all_at_block_barrier &= f.state == State::AtBlockBarrier;
  }
  if (!any || !all_at_block_barrier) return false;
  // CUDA allows __syncthreads in conditional code only where the whole block takes the
  // same branch; GPUs may let threads at different calls pass each other, we do not.
  const Fiber* first = nullptr;
  for (const Fiber& f : l.fibers) {
    if (f.state != State::AtBlockBarrier) continue;
    if (first == nullptr) first = &f;
    TORCH_CHECK(f.barrier_line == first->barrier_line && std::strcmp(f.barrier_file, first->barrier_file) == 0,
                "CUDA emulator: threads of block (", l.block_index.x, ", ", l.block_index.y, ", ",
                l.block_index.z, ") wait at different __syncthreads: ", first->barrier_file, ":",
                first->barrier_line, " and ", f.barrier_file, ":", f.barrier_line);
  }
  for (Fiber& f : l.fibers)
    if (f.state == State::AtBlockBarrier) f.state = State::Ready;
  return true;
}

inline void run_block(Launch& l) {
  const int threads = static_cast<int>(l.fibers.size());
  int i = 0;
  for (unsigned z = 0; z < l.block.z; ++z)
    for (unsigned y = 0; y < l.block.y; ++y)
      for (unsigned x = 0; x < l.block.x; ++x, ++i) {
        Fiber& f = l.fibers[i];
        f.index = dim3(x, y, z);
        f.lane = i % kWarpSize;
        f.warp = i / kWarpSize;
        f.state = State::Ready;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = l.stacks[i].get();
        f.context.uc_stack.ss_size = kFiberStackBytes;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_entry, 0);
      }
  std::fill(l.dynamic_shared.begin(), l.dynamic_shared.end(), 0xff);
  l.poisoned_shared.clear();
  // Each pass runs the ready threads in a new random order (seeded by the block, so a
  // failure repeats): a thread that reads shared memory after a barrier meets writes
  // that other threads make before the next one whichever runs first, as on a GPU.
  std::vector<int> order(threads);
  for (int t = 0; t < threads; ++t) order[t] = t;
  std::mt19937 rng(l.block_index.x * 7919u + l.block_index.y * 104729u + l.block_index.z);
  for (;;) {
    bool any_live = false;
    std::shuffle(order.begin(), order.end(), rng);
    for (int t : order) {
      Fiber& f = l.fibers[t];
      if (f.state != State::Ready) {
        any_live |= f.state != State::Done;
        continue;
      }
      l.current = &f;
      swapcontext(&l.scheduler, &f.context);
      any_live |= f.state != State::Done;
    }
    if (!any_live) return;
    if (!release_barriers(l)) {
      int at_block = 0, at_warp = 0;
      for (const Fiber& f : l.fibers) {
        at_block += f.state == State::AtBlockBarrier;
        at_warp += f.state == State::AtWarpBarrier;
      }
      TORCH_CHECK(false, "CUDA emulator: deadlock in block (", l.block_index.x, ", ",
                  l.block_index.y, ", ", l.block_index.z, "): ", at_block,
                  " threads wait at __syncthreads and ", at_warp,
                  " at a warp-wide call that other live threads never reach (of ", threads, ")");
    }
  }
}

inline size_t dim_count(dim3 d) { return size_t(d.x) * d.y * d.z; }

// kernel<<<grid, block, shared_bytes, stream>>>(args) becomes launch([&] { kernel(args); },
// grid, block, shared_bytes, stream): runs every block in order, every thread a fiber.
template <typename Stream = cudaStream_t>
void launch(const std::function<void()>& body, dim3 grid, dim3 block, size_t shared_bytes = 0,
            Stream = Stream{}) {
  const size_t threads = dim_count(block);
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64,
              "CUDA emulator: block (", block.x, ", ", block.y, ", ", block.z, ") is not a valid block");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
              "CUDA emulator: grid (", grid.x, ", ", grid.y, ", ", grid.z, ") is not a valid grid");
  TORCH_CHECK(shared_bytes <= 227 * 1024, "CUDA emulator: ", shared_bytes,
              " bytes of dynamic shared memory is more than any GPU gives a block");
  // One launch at a time (its fibers share launch_state()); recursive, so that a launch
  // from inside a kernel reaches the check below instead of waiting on itself.
  static std::recursive_mutex one_launch_at_a_time;
  const std::lock_guard<std::recursive_mutex> lock(one_launch_at_a_time);
  Launch& l = launch_state();
  TORCH_CHECK(l.body == nullptr, "CUDA emulator: a kernel launched from inside a kernel");
  l.grid = grid;
  l.block = block;
  l.fibers.assign(threads, Fiber{});
  l.warp_published.assign((threads + kWarpSize - 1) / kWarpSize, nullptr);
  while (l.stacks.size() < threads) l.stacks.emplace_back(new char[kFiberStackBytes]);
  l.dynamic_shared.assign(shared_bytes, 0xff);
  l.body = &body;
  struct Reset {
    ~Reset() { launch_state().body = nullptr; }
  } reset;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        l.block_index = dim3(x, y, z);
        run_block(l);
      }
}

inline void* dynamic_shared() { return launch_state().dynamic_shared.data(); }

// build.py puts a call after each __shared__ declaration: the block's first thread to
// pass it fills the variable with NaN bytes, later threads leave it as it is.
inline void poison_shared(void* variable, size_t bytes) {
  std::vector<void*>& done = launch_state().poisoned_shared;
  if (std::find(done.begin(), done.end(), variable) != done.end()) return;
  done.push_back(variable);
  std::memset(variable, 0xff, bytes);
}

inline void sync_warp(unsigned mask) { wait_at(State::AtWarpBarrier, mask); }

// The warp's first live lane, and a pointer it hands its warp between two barriers.
inline bool is_warp_leader() {
  const Launch& l = launch_state();
  const Fiber* self = l.current;
  const int first = self->warp * kWarpSize;
  for (int i = first; i < std::min<int>(first + kWarpSize, static_cast<int>(l.fibers.size())); ++i)
    if (l.fibers[i].state != State::Done) return &l.fibers[i] == self;
  return false;
}
inline const void*& warp_published() {
  Launch& l = launch_state();
  return l.warp_published[l.current->warp];
}

// Every lane of the mask writes its value, waits for the others, reads its source's
// value, and waits again before a later shuffle can overwrite the slots.
template <typename T, typename SourceLane>
T shuffle(unsigned mask, T value, int width, SourceLane source_of) {
  static_assert(sizeof(T) <= 16, "CUDA emulator: shuffle of a type wider than 16 bytes");
  Launch& l = launch_state();
  Fiber* self = l.current;
  std::memcpy(self->shuffle_slot, &value, sizeof(T));
  sync_warp(mask);
  const int segment = self->lane / width * width;
  const int source = source_of(self->lane - segment);  // within the segment; -1: own value
  T result = value;
  if (source >= 0 && source < width) {
    const Fiber& from = l.fibers[self->warp * kWarpSize + segment + source];
    std::memcpy(&result, from.shuffle_slot, sizeof(T));
  }
  sync_warp(mask);
  return result;
}

}  // namespace emu

#define threadIdx (::emu::launch_state().current->index)
#define blockIdx (::emu::launch_state().block_index)
#define blockDim (::emu::launch_state().block)
#define gridDim (::emu::launch_state().grid)

#define __syncthreads() ::emu::wait_at(::emu::State::AtBlockBarrier, 0, __FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::sync_warp(mask); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
  return ::emu::shuffle(mask, value, width, [&](int) { return source % width; });
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return ::emu::shuffle(mask, value, width, [&](int lane) { return lane + int(delta); });
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return ::emu::shuffle(mask, value, width, [&](int lane) { return lane ^ lane_mask; });
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// One OS thread runs every fiber, so the atomics are plain read-modify-writes.
template <typename T>
T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}

// CUDA's global min and max (fminf and fmaxf for floating point).
template <typename A, typename B>
std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmin(T(a), T(b));
  else return T(b) < T(a) ? T(b) : T(a);
}
template <typename A, typename B>
std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmax(T(a), T(b));
  else return T(a) < T(b) ? T(b) : T(a);
}

inline cudaError_t emu_func_set_attribute(...) { return cudaSuccess; }
#define cudaFuncSetAttribute(...) emu_func_set_attribute(__VA_ARGS__)

// The ops register as torch.ops.fastdl_emu.*: the CUDA kernels under the CPU key (the
// emulator takes CPU tensors); the op files' CPU and autograd registrations go to a
// namespace nothing defines, so no emulated op runs fastdl's real CPU kernels.
#include <torch/library.h>
#undef TORCH_LIBRARY_FRAGMENT
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_FRAGMENT(ns, m) _TORCH_LIBRARY_FRAGMENT(fastdl_emu, m, C10_UID)
#define TORCH_LIBRARY_IMPL(ns, k, m) FASTDL_EMU_IMPL_##k(m)
#define FASTDL_EMU_IMPL_CUDA(m) _TORCH_LIBRARY_IMPL(fastdl_emu, CPU, m, C10_UID)
#define FASTDL_EMU_IMPL_CPU(m) _TORCH_LIBRARY_IMPL(fastdl_emu_unused, CPU, m, C10_UID)
#define FASTDL_EMU_IMPL_Autograd(m) _TORCH_LIBRARY_IMPL(fastdl_emu_unused, Autograd, m, C10_UID)
