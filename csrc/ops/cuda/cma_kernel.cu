// CUDA kernels of the batched CMA-ES ops, on the current stream under a device guard.
//
// GPU review (issue 13; compile-checked only, not yet run on a GPU):
// - sample epilogue: one thread per element of [B, L, d] in a grid-stride loop (int64
//   indices, at most 65535 blocks of 256), so no thread idles at small d; per element it
//   reads y and mean / sigma (cached broadcasts) and writes x (and y when bounded): 8-12
//   bytes in float32. Reads and writes are coalesced; no vector loads (d is often odd).
//   Its cost is small next to the batched GEMM before it (ATen's bmm).
// - covariance update: was one block of 256 threads per row (b, i) of C, threads striding
//   along j; at d = 5 (the transform search) 251 of 256 threads idled and the row count went
//   to grid.x unchecked. Now a block holds 256 / tpr rows, tpr = d rounded up to a power
//   of two (at most 256): d = 5 uses 8 threads a row (5 of 8 busy), d >= 256 one row a
//   block as before. A warp spanning several rows still reads and writes one contiguous run
//   of C. B*d <= 2^31 - 1 is checked (naming cov) in the shared host code (cma.cpp); B*d*d
//   is cov.numel(), int64 by construction, and the kernels index in int64.
//   Bytes per update: C read and written once (2 B d^2 * sizeof) plus y, wy (2 B k d) and
//   pc; FLOPs: 2 B d^2 (k + 2).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_helpers.cuh"
#include "ops/cma.h"

namespace latentx {
namespace {

// x = m + sigma*y, clamped, y recomputed; one thread per element of [B, L, d].
template <typename T>
__global__ void sample_epilogue_kernel(int64_t n, int64_t popsize, int64_t d,
                                       const T* mean,   // [B, d]
                                       const T* sigma,  // [B]
                                       T* x, T* y,      // [B, L, d]
                                       bool bounded, T lower, T upper) {
  LATENTX_CUDA_KERNEL_LOOP(idx, n) {
    const int64_t j = idx % d;
    const int64_t inst = idx / (popsize * d);
    const T m = mean[inst * d + j];
    const T s = sigma[inst];
    T v = m + s * y[idx];
    if (bounded) {
      v = v < lower ? lower : v;
      v = v > upper ? upper : v;
      y[idx] = (v - m) / s;
    }
    x[idx] = v;
  }
}

void cma_sample_epilogue_cuda(const CmaSampleArgs& a, at::Tensor& x, at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t n = y.numel(), popsize = y.size(1), d = y.size(2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "cma_sample_cuda", [&] {
    sample_epilogue_kernel<scalar_t><<<grid_size(n), kThreadsPerBlock, 0, stream>>>(
        n, popsize, d, a.mean.const_data_ptr<scalar_t>(), a.sigma.const_data_ptr<scalar_t>(),
        x.mutable_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), a.bounded,
        static_cast<scalar_t>(a.lower), static_cast<scalar_t>(a.upper));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Rows (b, i) of C, kRowsPerBlock = blockDim.x / tpr of them per block, tpr threads each
// striding along j: each element is read once, gets c1 pc_i pc_j + sum_k wy_ki y_kj, and is
// written once. Reads of y are coalesced and wy_ki is a broadcast.
template <typename T>
__global__ void covariance_kernel(int64_t rows, int64_t d, int64_t k, int tpr,
                                  T* cov,          // [B, d, d]
                                  const T* pc,     // [B, d]
                                  const T* y,      // [B, k, d]
                                  const T* wy,     // [B, k, d]
                                  const T* decay,  // [B]
                                  T c1) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (row >= rows) return;  // b * d + i
  const int64_t inst = row / d, i = row % d;
  const T* pcb = pc + inst * d;
  const T* yb = y + inst * k * d;
  const T* wyb = wy + inst * k * d;
  const T p = c1 * pcb[i];
  const T a = decay[inst];
  for (int64_t j = threadIdx.x % tpr; j < d; j += tpr) {
    T acc = a * cov[row * d + j] + p * pcb[j];
    for (int64_t m = 0; m < k; ++m) acc += wyb[m * d + i] * yb[m * d + j];
    cov[row * d + j] = acc;
  }
}

// Threads per row: d rounded up to a power of two, at most a block.
int threads_per_row(int64_t d) {
  int tpr = 1;
  while (tpr < d && tpr < kThreadsPerBlock) tpr *= 2;
  return tpr;
}

void cma_covariance_cuda(const CmaCovArgs& a, at::Tensor& cov) {
  const c10::cuda::CUDAGuard guard(cov.device());
  const int64_t b = cov.size(0), d = cov.size(1), k = a.y.size(1);
  const int64_t rows = b * d;  // <= kCmaMaxRows (prepare_cma_covariance_update)
  const int tpr = threads_per_row(d);
  const auto grid = static_cast<unsigned int>(ceil_div(rows, kThreadsPerBlock / tpr));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "cma_covariance_update_cuda", [&] {
    covariance_kernel<scalar_t><<<grid, kThreadsPerBlock, 0, stream>>>(
        rows, d, k, tpr, cov.mutable_data_ptr<scalar_t>(), a.pc.const_data_ptr<scalar_t>(),
        a.y.const_data_ptr<scalar_t>(), a.wy.const_data_ptr<scalar_t>(),
        a.decay.const_data_ptr<scalar_t>(), static_cast<scalar_t>(a.c1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The batch's eigendecompositions: cuSOLVER through torch.linalg.eigh (batched Jacobi,
// syevjBatched, for small matrices; syevd per matrix otherwise), which no hand-written
// kernel of ours would beat; the op exists so that both devices share its checks.
std::tuple<at::Tensor, at::Tensor> cma_eigh_cuda(const at::Tensor& cov_in) {
  const c10::cuda::CUDAGuard guard(cov_in.device());
  const at::Tensor cov = prepare_cma_eigh(cov_in);
  return at::linalg_eigh(cov);
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CUDA, m) {
  m.impl("cma_sample", &cma_sample<cma_sample_epilogue_cuda>);
  m.impl("cma_covariance_update", &cma_covariance_update<cma_covariance_cuda>);
  m.impl("cma_covariance_update_", &cma_covariance_update_<cma_covariance_cuda>);
  m.impl("cma_eigh", &cma_eigh_cuda);
}

}  // namespace latentx
