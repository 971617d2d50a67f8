// CPU kernel of ifgsm_step: one pass over z, grad and anchor, parallel over elements.
// The inner loop is branch-free (selects, no calls), which the compiler vectorises, once
// per instruction set (LATENTX_CPU_MULTIVERSION).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_helpers.h"
#include "ops/ifgsm_step.h"

namespace latentx {
namespace {

// Elements [begin, end) of one sample. out may be z itself (in place), but element j only
// reads index j before writing it: no dependence between iterations, hence ivdep.
template <bool kAnchor, typename scalar_t, typename opmath_t>
LATENTX_CPU_MULTIVERSION void ifgsm_step_span(const scalar_t* z, const scalar_t* g,
                                              const scalar_t* z0, scalar_t* out, int64_t begin,
                                              int64_t end, opmath_t step, opmath_t radius,
                                              opmath_t lower, opmath_t upper) {
#pragma GCC ivdep
  for (int64_t j = begin; j < end; ++j) {
    const opmath_t anchor = kAnchor ? static_cast<opmath_t>(z0[j]) : opmath_t(0);
    out[j] = static_cast<scalar_t>(ifgsm_element<kAnchor, opmath_t>(
        static_cast<opmath_t>(z[j]), static_cast<opmath_t>(g[j]), anchor, step, radius, lower,
        upper));
  }
}

template <bool kAnchor, typename scalar_t>
void ifgsm_step_rows(const IfgsmStepArgs& a, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* z = a.z.const_data_ptr<scalar_t>();
  const scalar_t* g = a.grad.const_data_ptr<scalar_t>();
  const scalar_t* z0 = kAnchor ? a.anchor.const_data_ptr<scalar_t>() : nullptr;
  const opmath_t* steps = a.step_sizes.defined() ? a.step_sizes.const_data_ptr<opmath_t>() : nullptr;
  const opmath_t* radii = a.radii.defined() ? a.radii.const_data_ptr<opmath_t>() : nullptr;
  const opmath_t lower = static_cast<opmath_t>(a.lower);
  const opmath_t upper = static_cast<opmath_t>(a.upper);
  // With no per-sample parameter the whole tensor is one row: long vector loops.
  const int64_t inner = (steps || radii) ? a.inner : a.z.numel();

  at::parallel_for(0, a.z.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
    // A chunk may span several samples: walk it sample by sample so the per-sample step
    // and radius are loop constants.
    for (int64_t i = begin; i < end;) {
      const int64_t row = i / inner;
      const int64_t stop = std::min(end, (row + 1) * inner);
      const opmath_t step = steps ? steps[row] : static_cast<opmath_t>(a.step_size);
      const opmath_t radius = radii ? radii[row] : static_cast<opmath_t>(a.radius);
      ifgsm_step_span<kAnchor>(z, g, z0, out, i, stop, step, radius, lower, upper);
      i = stop;
    }
  });
}

void ifgsm_step_cpu(const IfgsmStepArgs& a, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.z.scalar_type(), "ifgsm_step_cpu", [&] {
    if (a.anchor.defined()) {
      ifgsm_step_rows<true, scalar_t>(a, out.mutable_data_ptr<scalar_t>());
    } else {
      ifgsm_step_rows<false, scalar_t>(a, out.mutable_data_ptr<scalar_t>());
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CPU, m) {
  m.impl("ifgsm_step", &ifgsm_step<ifgsm_step_cpu>);
  m.impl("ifgsm_step_", &ifgsm_step_<ifgsm_step_cpu>);
}

}  // namespace latentx
