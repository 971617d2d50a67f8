// Marks small math helpers shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define LATENTX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LATENTX_HOST_DEVICE inline
#endif
