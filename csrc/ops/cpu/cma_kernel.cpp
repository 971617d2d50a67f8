// CPU kernels of the batched CMA-ES ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cpu_helpers.h"
#include "ops/cma.h"

namespace latentx {
namespace {

// x = m + sigma*y, clamped, with y recomputed from the clamped x; one pass over [L, d] of
// one instance.
template <typename T>
LATENTX_CPU_MULTIVERSION void sample_epilogue_instance(const T* mean, T sigma, T* x, T* y,
                                                       int64_t popsize, int64_t d, bool bounded,
                                                       T lower, T upper) {
  for (int64_t k = 0; k < popsize; ++k) {
    T* xk = x + k * d;
    T* yk = y + k * d;
    if (bounded) {
#pragma GCC ivdep
      for (int64_t j = 0; j < d; ++j) {
        T v = mean[j] + sigma * yk[j];
        v = v < lower ? lower : v;
        v = v > upper ? upper : v;
        xk[j] = v;
        yk[j] = (v - mean[j]) / sigma;
      }
    } else {
#pragma GCC ivdep
      for (int64_t j = 0; j < d; ++j) xk[j] = mean[j] + sigma * yk[j];
    }
  }
}

void cma_sample_epilogue_cpu(const CmaSampleArgs& a, at::Tensor& x, at::Tensor& y) {
  const int64_t b = y.size(0), popsize = y.size(1), d = y.size(2);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "cma_sample_cpu", [&] {
    const scalar_t* mean = a.mean.const_data_ptr<scalar_t>();
    const scalar_t* sigma = a.sigma.const_data_ptr<scalar_t>();
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    // Work-based grain: small batches stay on one thread (a parallel region costs more).
    const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, popsize * d));
    at::parallel_for(0, b, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        sample_epilogue_instance<scalar_t>(mean + i * d, sigma[i], xp + i * popsize * d,
                                           yp + i * popsize * d, popsize, d, a.bounded,
                                           static_cast<scalar_t>(a.lower),
                                           static_cast<scalar_t>(a.upper));
      }
    });
  });
}

// One row i of instance b: C_i <- decay*C_i + (c1 pc_i) pc + sum_k wy_ki y_k. The row (d
// values) stays in L1 across the k passes, so C is read and written once from memory.
template <typename T>
LATENTX_CPU_MULTIVERSION void covariance_row(T* row, const T* pc, const T* y, const T* wy,
                                             int64_t i, int64_t k, int64_t d, T decay, T c1) {
  const T p = c1 * pc[i];
#pragma GCC ivdep
  for (int64_t j = 0; j < d; ++j) row[j] = decay * row[j] + p * pc[j];
  for (int64_t m = 0; m < k; ++m) {
    const T coef = wy[m * d + i];
    const T* ym = y + m * d;
#pragma GCC ivdep
    for (int64_t j = 0; j < d; ++j) row[j] += coef * ym[j];
  }
}

void cma_covariance_cpu(const CmaCovArgs& a, at::Tensor& cov) {
  const int64_t b = cov.size(0), d = cov.size(1), k = a.y.size(1);
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "cma_covariance_update_cpu", [&] {
    scalar_t* c = cov.mutable_data_ptr<scalar_t>();
    const scalar_t* pc = a.pc.const_data_ptr<scalar_t>();
    const scalar_t* y = a.y.const_data_ptr<scalar_t>();
    const scalar_t* wy = a.wy.const_data_ptr<scalar_t>();
    const scalar_t* decay = a.decay.const_data_ptr<scalar_t>();
    const scalar_t c1 = static_cast<scalar_t>(a.c1);
    // Parallel over all B*d rows: balanced for one large instance or many small ones; a
    // work-based grain keeps small updates on one thread.
    const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, d * (k + 1)));
    at::parallel_for(0, b * d, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t inst = r / d, i = r % d;
        covariance_row<scalar_t>(c + r * d, pc + inst * d, y + inst * k * d, wy + inst * k * d,
                                 i, k, d, decay[inst], c1);
      }
    });
  });
}

// The batch's eigendecompositions, one matrix per task. torch.linalg.eigh on a batch calls
// LAPACK (syevd) once per matrix in turn, each call threaded inside by MKL; on few cores that
// inner threading scales poorly (d = 128: 1.3 ms per matrix on 2 threads vs 1.2 ms on one),
// while independent matrices scale with the cores. So: matrices in parallel, each solved by
// one thread (at::parallel_for's workers run LAPACK sequentially: MKL does not nest inside
// an OpenMP region). One matrix, or one thread, is torch.linalg.eigh itself.
std::tuple<at::Tensor, at::Tensor> cma_eigh_cpu(const at::Tensor& cov_in) {
  const at::Tensor cov = prepare_cma_eigh(cov_in);
  const int64_t b = cov.size(0), d = cov.size(1);
  if (b <= 1 || at::get_num_threads() <= 1 || d == 0) return at::linalg_eigh(cov);
  at::Tensor eigvals = at::empty({b, d}, cov.options());
  at::Tensor eigvecs = at::empty({b, d, d}, cov.options());
  at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto [w, v] = at::linalg_eigh(cov[i]);
      eigvals[i].copy_(w);
      eigvecs[i].copy_(v);
    }
  });
  return {eigvals, eigvecs};
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CPU, m) {
  m.impl("cma_sample", &cma_sample<cma_sample_epilogue_cpu>);
  m.impl("cma_covariance_update", &cma_covariance_update<cma_covariance_cpu>);
  m.impl("cma_covariance_update_", &cma_covariance_update_<cma_covariance_cpu>);
  m.impl("cma_eigh", &cma_eigh_cpu);
}

}  // namespace latentx
