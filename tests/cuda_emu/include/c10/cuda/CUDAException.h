// CUDA emulator (tests/cuda_emu): launches run synchronously and throw on error.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                     \
  do {                                                                           \
    const cudaError_t emu_error = (EXPR);                                        \
    TORCH_CHECK(emu_error == cudaSuccess, "CUDA emulator: ", #EXPR, " failed"); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
