// CUDA kernel of ifgsm_step: one pass (read z, grad, anchor; write z') on the current
// stream under a device guard.
//
// GPU review (issue 13; compile-checked only, not yet run on a GPU):
// - Bytes per element: reads z and grad (and the anchor) and writes z': 3 * sizeof(scalar)
//   (4 with an anchor), i.e. 12 / 16 bytes in float32; per-sample steps / radii are
//   [rows] and re-read from L1 / L2. These are the floor: each byte is moved once.
// - Coalescing: one thread per element in a grid-stride loop (int64 index), consecutive
//   threads on consecutive elements: every access is coalesced. At most 65535 blocks of 256
//   (16.7 M threads) cover an H200's 132 x 2048 resident threads many times over.
// - Vector loads: none. For float32 each warp load already fills whole 128-byte lines, so
//   16-byte vector loads would cut instructions, not bytes; for half / bfloat16 a warp's
//   load is 64 bytes and vectorising (as ATen's vectorized elementwise loop does) would
//   likely help. The per-sample variant divides i / inner in int64 per element (tens of
//   instructions), likely hidden behind the memory time. Neither is wrong: both found, not
//   changed, until the GPU floor table (benchmarks/gpu_floor.py) says how far from the
//   floor the kernel runs.
// - In place (ifgsm_step_), out aliases z: each thread reads its element before writing it,
//   so the aliasing is safe (no __restrict__ on purpose).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_helpers.cuh"
#include "ops/ifgsm_step.h"

namespace latentx {
namespace {

// kPerSample: at least one of step / radius varies by sample (row = i / inner).
template <bool kAnchor, bool kPerSample, typename scalar_t, typename opmath_t>
__global__ void ifgsm_step_kernel(int64_t n, int64_t inner,
                                  const scalar_t* z,        // [n]
                                  const scalar_t* g,        // [n]
                                  const scalar_t* z0,       // [n] or null
                                  const opmath_t* steps,    // [rows] or null
                                  const opmath_t* radii,    // [rows] or null
                                  opmath_t step, opmath_t radius, opmath_t lower,
                                  opmath_t upper, scalar_t* out) {  // [n], may be z
  LATENTX_CUDA_KERNEL_LOOP(i, n) {
    opmath_t s = step;
    opmath_t r = radius;
    if constexpr (kPerSample) {
      const int64_t row = i / inner;
      if (steps != nullptr) s = steps[row];
      if (radii != nullptr) r = radii[row];
    }
    const opmath_t anchor = kAnchor ? static_cast<opmath_t>(z0[i]) : opmath_t(0);
    out[i] = static_cast<scalar_t>(ifgsm_element<kAnchor, opmath_t>(
        static_cast<opmath_t>(z[i]), static_cast<opmath_t>(g[i]), anchor, s, r, lower, upper));
  }
}

template <bool kAnchor, bool kPerSample, typename scalar_t>
void launch(const IfgsmStepArgs& a, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t n = a.z.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  ifgsm_step_kernel<kAnchor, kPerSample, scalar_t, opmath_t>
      <<<grid_size(n), kThreadsPerBlock, 0, stream>>>(
          n, a.inner, a.z.const_data_ptr<scalar_t>(), a.grad.const_data_ptr<scalar_t>(),
          kAnchor ? a.anchor.const_data_ptr<scalar_t>() : nullptr,
          a.step_sizes.defined() ? a.step_sizes.const_data_ptr<opmath_t>() : nullptr,
          a.radii.defined() ? a.radii.const_data_ptr<opmath_t>() : nullptr,
          static_cast<opmath_t>(a.step_size), static_cast<opmath_t>(a.radius),
          static_cast<opmath_t>(a.lower), static_cast<opmath_t>(a.upper), out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ifgsm_step_cuda(const IfgsmStepArgs& a, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const bool per_sample = a.step_sizes.defined() || a.radii.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.z.scalar_type(), "ifgsm_step_cuda", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (a.anchor.defined()) {
      per_sample ? launch<true, true, scalar_t>(a, o) : launch<true, false, scalar_t>(a, o);
    } else {
      per_sample ? launch<false, true, scalar_t>(a, o) : launch<false, false, scalar_t>(a, o);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CUDA, m) {
  m.impl("ifgsm_step", &ifgsm_step<ifgsm_step_cuda>);
  m.impl("ifgsm_step_", &ifgsm_step_<ifgsm_step_cuda>);
}

}  // namespace latentx
