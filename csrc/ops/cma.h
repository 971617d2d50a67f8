// Batched CMA-ES kernels (SPEC A1): sampling and the covariance update for B instances.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <tuple>

namespace latentx {

// cma_sample, checked and laid out contiguously.
struct CmaSampleArgs {
  at::Tensor noise;         // [B, L, d]
  at::Tensor mean;          // [B, d]
  at::Tensor sigma;         // [B]
  at::Tensor eigvecs;       // [B, d, d], columns are C's eigenvectors; undefined: diagonal
  at::Tensor sqrt_eigvals;  // [B, d]
  double lower = -INFINITY;  // +-inf when a bound is absent
  double upper = INFINITY;
  bool bounded = false;
};

CmaSampleArgs prepare_cma_sample(const at::Tensor& noise, const at::Tensor& mean,
                                 const at::Tensor& sigma, const std::optional<at::Tensor>& eigvecs,
                                 const at::Tensor& sqrt_eigvals, std::optional<double> lower,
                                 std::optional<double> upper);

// The matrix part of sampling, the same on every device: y = (noise * D) E^T (ATen's
// batched GEMM, which no hand-written loop beats); the device kernel then fuses
// x = m + sigma*y, the clamp and y's recomputation into one pass.
inline at::Tensor cma_sample_directions(const CmaSampleArgs& a) {
  at::Tensor y = a.noise * a.sqrt_eigvals.unsqueeze(1);
  return a.eigvecs.defined() ? at::bmm(y, a.eigvecs.transpose(1, 2)) : y;
}

// Writes x (and, with bounds, the recomputed y) in place of the inputs given.
using CmaSampleEpilogue = void (*)(const CmaSampleArgs& args, at::Tensor& x, at::Tensor& y);

template <CmaSampleEpilogue Epilogue>
std::tuple<at::Tensor, at::Tensor> cma_sample(const at::Tensor& noise, const at::Tensor& mean,
                                              const at::Tensor& sigma,
                                              const std::optional<at::Tensor>& eigvecs,
                                              const at::Tensor& sqrt_eigvals,
                                              std::optional<double> lower,
                                              std::optional<double> upper) {
  const CmaSampleArgs a =
      prepare_cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper);
  at::Tensor y = cma_sample_directions(a).contiguous();
  at::Tensor x = at::empty_like(y);
  if (y.numel() > 0) Epilogue(a, x, y);
  return {x, y};
}

// Most rows (B*d) of a covariance update: the CUDA launch's grid.x limit.
constexpr int64_t kCmaMaxRows = (int64_t{1} << 31) - 1;

// cma_covariance_update, checked and laid out contiguously.
struct CmaCovArgs {
  at::Tensor pc;       // [B, d]
  at::Tensor y;        // [B, k, d]
  at::Tensor wy;       // [B, k, d]: cmu * w_k * y_k, the rank-mu coefficients
  at::Tensor decay;    // [B]
  double c1 = 0;
};

CmaCovArgs prepare_cma_covariance_update(const at::Tensor& cov, const at::Tensor& pc,
                                         const at::Tensor& y, const at::Tensor& weights,
                                         const at::Tensor& decay, double c1, double cmu);

// Rewrites cov (contiguous [B, d, d]) as decay*cov + c1 pc pc^T + sum_k wy_k y_k^T.
using CmaCovKernel = void (*)(const CmaCovArgs& args, at::Tensor& cov);

template <CmaCovKernel Kernel>
at::Tensor cma_covariance_update(const at::Tensor& cov, const at::Tensor& pc, const at::Tensor& y,
                                 const at::Tensor& weights, const at::Tensor& decay, double c1,
                                 double cmu) {
  const CmaCovArgs a = prepare_cma_covariance_update(cov, pc, y, weights, decay, c1, cmu);
  at::Tensor out = cov.clone(at::MemoryFormat::Contiguous);
  if (out.numel() > 0) Kernel(a, out);
  return out;
}

template <CmaCovKernel Kernel>
void cma_covariance_update_(at::Tensor& cov, const at::Tensor& pc, const at::Tensor& y,
                            const at::Tensor& weights, const at::Tensor& decay, double c1,
                            double cmu) {
  const CmaCovArgs a = prepare_cma_covariance_update(cov, pc, y, weights, decay, c1, cmu);
  if (cov.numel() == 0) return;
  if (cov.is_contiguous()) {
    Kernel(a, cov);
  } else {
    at::Tensor out = cov.contiguous();
    Kernel(a, out);
    cov.copy_(out);
  }
}

// cma_eigh: the shared checks (float32/64, [B, d, d], finite: LAPACK and cuSOLVER fail or
// return garbage on NaN / inf, so both devices refuse them with one message). Returns cov
// contiguous.
at::Tensor prepare_cma_eigh(const at::Tensor& cov);

}  // namespace latentx
