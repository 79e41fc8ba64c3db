// CUDA emulator (tests/cuda_emu): the current stream, and an H100's properties.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstring>

namespace at::cuda {
using c10::cuda::getCurrentCUDAStream;
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp prop = [] {
    cudaDeviceProp p;
    std::memset(&p, 0, sizeof(p));
    std::strcpy(p.name, "fastdl CUDA emulator (H100 limits)");
    p.major = 9;
    p.minor = 0;
    p.multiProcessorCount = 132;
    p.warpSize = 32;
    p.maxThreadsPerBlock = 1024;
    p.sharedMemPerBlock = 48 * 1024;
    p.sharedMemPerBlockOptin = 227 * 1024;
    return p;
  }();
  return &prop;
}
}  // namespace at::cuda
