// CUDA kernels of the LPIPS head: one thread per (sample, position); its channel loops read
// features strided by H*W, so neighbouring threads read neighbouring addresses (coalesced).
//
// GPU review (issue 13; compile-checked only, not yet run on a GPU):
// - Coalescing: a warp's 32 threads read 32 consecutive positions of one channel, one 128-byte
//   line per load in float32 (64 bytes in half / bfloat16); the weight w[k] is a broadcast
//   (L1). Writes of d [N, HW] and of g0 / g1 [N, C, HW] are coalesced the same way.
// - Vector loads: none. A thread walks channels at stride HW, so 16-byte loads would need a
//   thread to own 4 (float32) or 8 (half) neighbouring positions; for float32 the warp's
//   128-byte lines already use every byte fetched, so that would save instructions, not
//   bytes; for half / bfloat16 it would double the bytes per request. Not done: found, not
//   wrong.
// - Bytes (the floor counts each once): forward reads f0 and f1 (f1 once per batch when it
//   is a broadcast target) and writes d: per element of [N, C, HW] 2 * sizeof(scalar), plus
//   4 bytes per position. The kernel reads each twice (norms, then the weighted difference);
//   a block's 256 positions x C channels (C = 64: 128 KiB of both features in float32) mostly
//   re-hit L1 / L2, so DRAM traffic stays near the floor until C x 256 x 8 bytes outgrows
//   L1 (C >= 256, VGG's deep layers), where the second pass comes from L2. Backward: reads
//   f0, f1 three times (norms, the dot products, the outputs) and writes g0, g1: a floor of
//   4 * sizeof(scalar) per element. A one-pass forward from sum a^2, sum w a^2, sum w a b,
//   sum w b^2 would halve the reads but cancels catastrophically when f0 ~ f1 (the distance
//   LPIPS exists to measure near 0), so the two passes stay.
// - FLOPs: ~8 per element of [N, C, HW] forward, ~14 backward (as benchmarks/gpu_floor.py
//   counts them): a few per byte, far under the H200's rate per byte of bandwidth, so both
//   kernels are memory-bound and their floor is bytes / copy bandwidth.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_helpers.cuh"
#include "ops/lpips_head.h"
#include "ops/lpips_head_math.h"

namespace latentx {
namespace {

template <typename scalar_t, typename T>
__device__ __forceinline__ void norms(const scalar_t* a, const scalar_t* b, int64_t c,
                                      int64_t hw, T& r0, T& r1, T& inv0, T& inv1) {
  r0 = r1 = T(0);
  for (int64_t k = 0; k < c; ++k) {
    const T x = static_cast<T>(a[k * hw]), y = static_cast<T>(b[k * hw]);
    r0 += x * x;
    r1 += y * y;
  }
  r0 = sqrt(r0);
  r1 = sqrt(r1);
  inv0 = T(1) / (r0 + T(kLpipsEps));
  inv1 = T(1) / (r1 + T(kLpipsEps));
}

template <typename scalar_t, typename T>
__global__ void distance_kernel(int64_t n, int64_t c, int64_t hw, bool shared_target,
                                const scalar_t* f0,  // [N, C, HW]
                                const scalar_t* f1,  // [N or 1, C, HW]
                                const T* w,          // [C]
                                T* d) {              // [N, HW]
  LATENTX_CUDA_KERNEL_LOOP(i, n * hw) {
    const int64_t s = i / hw, p = i % hw;
    const scalar_t* a = f0 + s * c * hw + p;
    const scalar_t* b = f1 + (shared_target ? 0 : s) * c * hw + p;
    T r0, r1, inv0, inv1;
    norms(a, b, c, hw, r0, r1, inv0, inv1);
    T acc = T(0);
    for (int64_t k = 0; k < c; ++k) {
      const T diff = static_cast<T>(a[k * hw]) * inv0 - static_cast<T>(b[k * hw]) * inv1;
      acc += w[k] * diff * diff;
    }
    d[i] = acc;
  }
}

template <typename scalar_t, typename T>
__global__ void backward_kernel(int64_t n, int64_t c, int64_t hw, bool shared_target,
                                const scalar_t* f0, const scalar_t* f1, const T* w,
                                const T* coef,            // [N, HW]
                                scalar_t* g0, scalar_t* g1) {  // [N, C, HW] or null
  LATENTX_CUDA_KERNEL_LOOP(i, n * hw) {
    const int64_t s = i / hw, p = i % hw;
    const int64_t off0 = s * c * hw + p;
    const scalar_t* a = f0 + off0;
    const scalar_t* b = f1 + (shared_target ? 0 : s) * c * hw + p;
    T r0, r1, inv0, inv1;
    norms(a, b, c, hw, r0, r1, inv0, inv1);
    T dot0 = T(0), dot1 = T(0);
    for (int64_t k = 0; k < c; ++k) {
      const T x = static_cast<T>(a[k * hw]), y = static_cast<T>(b[k * hw]);
      const T g = T(2) * w[k] * (x * inv0 - y * inv1);
      dot0 += g * x;
      dot1 += g * y;
    }
    const T k0 = lpips_radial_factor(dot0, inv0, r0);
    const T k1 = lpips_radial_factor(dot1, inv1, r1);
    const T cf = coef[i];
    for (int64_t k = 0; k < c; ++k) {
      const T x = static_cast<T>(a[k * hw]), y = static_cast<T>(b[k * hw]);
      const T g = T(2) * w[k] * (x * inv0 - y * inv1);
      if (g0) g0[off0 + k * hw] = static_cast<scalar_t>(cf * (g * inv0 - k0 * x));
      if (g1) g1[off0 + k * hw] = static_cast<scalar_t>(cf * (k1 * y - g * inv1));
    }
  }
}

at::Tensor lpips_distance_cuda(const LpipsHeadArgs& a) {
  const c10::cuda::CUDAGuard guard(a.feat0.device());
  const int64_t n = a.feat0.size(0), c = a.feat0.size(1), hw = a.feat0.size(2) * a.feat0.size(3);
  at::Tensor d = at::empty({n, hw}, a.feat0.options().dtype(a.weight.scalar_type()));
  if (d.numel() == 0) return d;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.feat0.scalar_type(), "lpips_head_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    distance_kernel<scalar_t, T><<<grid_size(n * hw), kThreadsPerBlock, 0, stream>>>(
        n, c, hw, a.feat1.size(0) != n, a.feat0.const_data_ptr<scalar_t>(),
        a.feat1.const_data_ptr<scalar_t>(), a.weight.const_data_ptr<T>(), d.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return d;
}

void lpips_backward_cuda(const LpipsHeadArgs& a, const at::Tensor& coef, at::Tensor& grad0,
                         at::Tensor& grad1) {
  const c10::cuda::CUDAGuard guard(a.feat0.device());
  const int64_t n = a.feat0.size(0), c = a.feat0.size(1), hw = a.feat0.size(2) * a.feat0.size(3);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.feat0.scalar_type(), "lpips_head_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, T><<<grid_size(n * hw), kThreadsPerBlock, 0, stream>>>(
        n, c, hw, a.feat1.size(0) != n, a.feat0.const_data_ptr<scalar_t>(),
        a.feat1.const_data_ptr<scalar_t>(), a.weight.const_data_ptr<T>(), coef.const_data_ptr<T>(),
        grad0.defined() ? grad0.mutable_data_ptr<scalar_t>() : nullptr,
        grad1.defined() ? grad1.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CUDA, m) {
  m.impl("lpips_head", &lpips_head<lpips_distance_cuda>);
  m.impl("lpips_head_backward", &lpips_head_backward<lpips_backward_cuda>);
}

}  // namespace latentx
