// CPU kernels of the LPIPS head: blocks of positions of one sample, channel loops innermost
// over contiguous positions (vectorised), parallel over samples x blocks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "common/cpu_helpers.h"
#include "ops/lpips_head.h"
#include "ops/lpips_head_math.h"

namespace latentx {
namespace {

constexpr int64_t kBlock = 64;  // positions per block: three opmath rows stay in L1

// Inverse norms (and norms) over channels for `len` positions starting at a and b.
template <typename scalar_t, typename T>
LATENTX_CPU_MULTIVERSION void channel_norms(const scalar_t* a, const scalar_t* b, int64_t c,
                                            int64_t hw, int64_t len, T* r0, T* r1, T* inv0,
                                            T* inv1) {
  for (int64_t p = 0; p < len; ++p) r0[p] = r1[p] = T(0);
  for (int64_t k = 0; k < c; ++k) {
    const scalar_t* ak = a + k * hw;
    const scalar_t* bk = b + k * hw;
    for (int64_t p = 0; p < len; ++p) {
      const T x = static_cast<T>(ak[p]), y = static_cast<T>(bk[p]);
      r0[p] += x * x;
      r1[p] += y * y;
    }
  }
  for (int64_t p = 0; p < len; ++p) {
    r0[p] = std::sqrt(r0[p]);
    r1[p] = std::sqrt(r1[p]);
    inv0[p] = T(1) / (r0[p] + T(kLpipsEps));
    inv1[p] = T(1) / (r1[p] + T(kLpipsEps));
  }
}

template <typename scalar_t, typename T>
LATENTX_CPU_MULTIVERSION void distance_block(const scalar_t* a, const scalar_t* b, const T* w,
                                             int64_t c, int64_t hw, int64_t len, T* d) {
  T r0[kBlock], r1[kBlock], inv0[kBlock], inv1[kBlock];
  channel_norms(a, b, c, hw, len, r0, r1, inv0, inv1);
  for (int64_t p = 0; p < len; ++p) d[p] = T(0);
  for (int64_t k = 0; k < c; ++k) {
    const scalar_t* ak = a + k * hw;
    const scalar_t* bk = b + k * hw;
    const T wk = w[k];
    for (int64_t p = 0; p < len; ++p) {
      const T diff = static_cast<T>(ak[p]) * inv0[p] - static_cast<T>(bk[p]) * inv1[p];
      d[p] += wk * diff * diff;
    }
  }
}

template <typename scalar_t, typename T>
LATENTX_CPU_MULTIVERSION void backward_block(const scalar_t* a, const scalar_t* b, const T* w,
                                             const T* coef, int64_t c, int64_t hw, int64_t len,
                                             scalar_t* ga, scalar_t* gb) {
  T r0[kBlock], r1[kBlock], inv0[kBlock], inv1[kBlock], k0[kBlock], k1[kBlock];
  channel_norms(a, b, c, hw, len, r0, r1, inv0, inv1);
  for (int64_t p = 0; p < len; ++p) k0[p] = k1[p] = T(0);
  for (int64_t k = 0; k < c; ++k) {  // dots sum_c g_c a_c and sum_c g_c b_c
    const scalar_t* ak = a + k * hw;
    const scalar_t* bk = b + k * hw;
    const T w2 = T(2) * w[k];
    for (int64_t p = 0; p < len; ++p) {
      const T x = static_cast<T>(ak[p]), y = static_cast<T>(bk[p]);
      const T g = w2 * (x * inv0[p] - y * inv1[p]);
      k0[p] += g * x;
      k1[p] += g * y;
    }
  }
  for (int64_t p = 0; p < len; ++p) {
    k0[p] = lpips_radial_factor(k0[p], inv0[p], r0[p]);
    k1[p] = lpips_radial_factor(k1[p], inv1[p], r1[p]);
  }
  for (int64_t k = 0; k < c; ++k) {
    const scalar_t* ak = a + k * hw;
    const scalar_t* bk = b + k * hw;
    const T w2 = T(2) * w[k];
    for (int64_t p = 0; p < len; ++p) {
      const T x = static_cast<T>(ak[p]), y = static_cast<T>(bk[p]);
      const T g = w2 * (x * inv0[p] - y * inv1[p]);
      if (ga) ga[k * hw + p] = static_cast<scalar_t>(coef[p] * (g * inv0[p] - k0[p] * x));
      if (gb) gb[k * hw + p] = static_cast<scalar_t>(coef[p] * (k1[p] * y - g * inv1[p]));
    }
  }
}

// Calls fn(sample, first position, count) for every block, in parallel.
template <typename Fn>
void for_each_block(int64_t n, int64_t hw, const Fn& fn) {
  const int64_t blocks = (hw + kBlock - 1) / kBlock;
  at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i / blocks, p0 = (i % blocks) * kBlock;
      fn(s, p0, std::min(kBlock, hw - p0));
    }
  });
}

at::Tensor lpips_distance_cpu(const LpipsHeadArgs& a) {
  const int64_t n = a.feat0.size(0), c = a.feat0.size(1), hw = a.feat0.size(2) * a.feat0.size(3);
  const bool shared_target = a.feat1.size(0) != n;
  at::Tensor d = at::empty({n, hw}, a.feat0.options().dtype(a.weight.scalar_type()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.feat0.scalar_type(), "lpips_head_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* f0 = a.feat0.const_data_ptr<scalar_t>();
    const scalar_t* f1 = a.feat1.const_data_ptr<scalar_t>();
    const T* w = a.weight.const_data_ptr<T>();
    T* out = d.mutable_data_ptr<T>();
    for_each_block(n, hw, [&](int64_t s, int64_t p0, int64_t len) {
      const int64_t off1 = (shared_target ? 0 : s) * c * hw + p0;
      distance_block<scalar_t, T>(f0 + s * c * hw + p0, f1 + off1, w, c, hw, len, out + s * hw + p0);
    });
  });
  return d;
}

void lpips_backward_cpu(const LpipsHeadArgs& a, const at::Tensor& coef, at::Tensor& grad0,
                        at::Tensor& grad1) {
  const int64_t n = a.feat0.size(0), c = a.feat0.size(1), hw = a.feat0.size(2) * a.feat0.size(3);
  const bool shared_target = a.feat1.size(0) != n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.feat0.scalar_type(), "lpips_head_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* f0 = a.feat0.const_data_ptr<scalar_t>();
    const scalar_t* f1 = a.feat1.const_data_ptr<scalar_t>();
    const T* w = a.weight.const_data_ptr<T>();
    const T* cf = coef.const_data_ptr<T>();
    scalar_t* g0 = grad0.defined() ? grad0.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* g1 = grad1.defined() ? grad1.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_block(n, hw, [&](int64_t s, int64_t p0, int64_t len) {
      const int64_t off0 = s * c * hw + p0;
      const int64_t off1 = (shared_target ? 0 : s) * c * hw + p0;
      backward_block<scalar_t, T>(f0 + off0, f1 + off1, w, cf + s * hw + p0, c, hw, len,
                                  g0 ? g0 + off0 : nullptr, g1 ? g1 + off0 : nullptr);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CPU, m) {
  m.impl("lpips_head", &lpips_head<lpips_distance_cpu>);
  m.impl("lpips_head_backward", &lpips_head_backward<lpips_backward_cpu>);
}

}  // namespace latentx
