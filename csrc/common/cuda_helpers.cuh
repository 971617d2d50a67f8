// Loop and launch helpers shared by the CUDA kernels.
#pragma once

#include <cstdint>

namespace latentx {

constexpr int kThreadsPerBlock = 256;
// Blocks of a grid-stride launch: enough to fill any current GPU many times over.
constexpr int64_t kMaxBlocks = 65535;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned int grid_size(int64_t n) {
  const int64_t blocks = ceil_div(n, kThreadsPerBlock);
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace latentx

// for (i = first index of this thread; i < n; i += total threads), in 64-bit indices.
#define LATENTX_CUDA_KERNEL_LOOP(i, n)                                                 \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
