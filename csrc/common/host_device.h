// Marks math shared by CPU and CUDA code: compiled for both, so the CPU tests
// exercise the exact expressions the GPU kernels run.
#pragma once

#if defined(__CUDACC__)
#define FASTDL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTDL_HOST_DEVICE inline
#endif
