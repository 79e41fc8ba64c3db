// Kernels that test the CUDA emulator itself (tests/test_cuda_emulated.py): warp
// shuffles against their definitions, wmma against a matrix product, and barriers
// the block's threads do not all reach, which must stop with an error. Emulator-only: not built
// into fastdl.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <mma.h>
#include <torch/library.h>

namespace {

// out[kind][thread]: shfl_xor(., 5), shfl_down(., 3, width 16), shfl_sync(., 7, width 8)
// of each thread's own index, over a block of 64 threads (two warps).
__global__ void shuffle_kernel(int64_t* out) {
  const int t = threadIdx.x;
  out[t] = __shfl_xor_sync(0xffffffffu, int64_t(t), 5);
  out[64 + t] = __shfl_down_sync(0xffffffffu, int64_t(t), 3, 16);
  out[128 + t] = __shfl_sync(0xffffffffu, int64_t(t), 7, 8);
}

at::Tensor shuffles(const at::Tensor& like) {
  at::Tensor out = at::empty({3, 64}, like.options().dtype(at::kLong));
  shuffle_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<int64_t>());
  return out;
}

// One warp: C = A B for 16 x 16 half tiles, A row-major, B column-major.
__global__ void wmma_kernel(const __half* a, const __half* b, float* c) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

at::Tensor wmma_product(const at::Tensor& a, const at::Tensor& b_col_major) {
  at::Tensor c = at::empty({16, 16}, a.options().dtype(at::kFloat));
  wmma_kernel<<<1, 32>>>(reinterpret_cast<const __half*>(a.data_ptr<at::Half>()),
                         reinterpret_cast<const __half*>(b_col_major.data_ptr<at::Half>()),
                         c.data_ptr<float>());
  return c;
}

// mode 0: every thread reaches the same barriers. 1: threads 0-31 wait at a barrier
// the others skip, then all meet at the last (two __syncthreads calls at once: an error
// here). 2: lanes 0-15 of each warp shuffle while lanes 16-31 wait at a barrier (no
// thread can go on: a deadlock).
__global__ void divergent_kernel(int mode, float* out) {
  const int t = threadIdx.x;
  if (mode == 1 && t < 32) __syncthreads();
  if (mode == 2) {
    if (t % 32 < 16) out[t] = __shfl_xor_sync(0xffffffffu, float(t), 1);
    else __syncthreads();
  }
  out[t] = 1.0f;
  __syncthreads();
}

at::Tensor divergent(const at::Tensor& like, int64_t mode) {
  at::Tensor out = at::empty({64}, like.options().dtype(at::kFloat));
  divergent_kernel<<<2, 64>>>(static_cast<int>(mode), out.data_ptr<float>());
  return out;
}

}  // namespace

// Registered with their schemas (TORCH_LIBRARY_IMPL is the emulator's renaming macro here).
TORCH_LIBRARY(fastdl_emu_selftest, m) {
  m.def("shuffles(Tensor like) -> Tensor", &shuffles);
  m.def("wmma_product(Tensor a, Tensor b_col_major) -> Tensor", &wmma_product);
  m.def("divergent(Tensor like, int mode) -> Tensor", &divergent);
}
