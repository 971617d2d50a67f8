// Argument checking shared by the CPU and CUDA kernels of the CMA-ES ops, and their
// autograd registration (none: they are optimizer state updates).
#include "ops/cma.h"

#include <torch/library.h>

#include <vector>

#include "common/checks.h"

namespace latentx {
namespace {

void check_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                 const char* ref_name, std::vector<int64_t> shape) {
  check_float32_or_64(op, name, t);
  TORCH_CHECK_VALUE(t.device() == ref.device() && t.scalar_type() == ref.scalar_type(), op, ": ",
                    name, " must match ", ref_name, "'s device and dtype (", ref.device(), ", ",
                    ref.scalar_type(), "), got (", t.device(), ", ", t.scalar_type(), ")");
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
}

}  // namespace

CmaSampleArgs prepare_cma_sample(const at::Tensor& noise, const at::Tensor& mean,
                                 const at::Tensor& sigma, const std::optional<at::Tensor>& eigvecs,
                                 const at::Tensor& sqrt_eigvals, std::optional<double> lower,
                                 std::optional<double> upper) {
  constexpr const char* op = "cma_sample";
  check_float32_or_64(op, "noise", noise);
  TORCH_CHECK_VALUE(noise.dim() == 3, op, ": noise must be [B, popsize, d], got shape ",
                    noise.sizes());
  const int64_t b = noise.size(0), d = noise.size(2);
  check_shape(op, "mean", mean, noise, "noise", {b, d});
  check_shape(op, "sigma", sigma, noise, "noise", {b});
  check_shape(op, "sqrt_eigvals", sqrt_eigvals, noise, "noise", {b, d});
  CmaSampleArgs a;
  if (eigvecs.has_value()) {
    check_shape(op, "eigvecs", *eigvecs, noise, "noise", {b, d, d});
    a.eigvecs = *eigvecs;
  }
  check_box(op, lower, upper);
  // Host-side value checks (on CUDA they wait for the device once): sigma <= 0 or a negative
  // D would give a silently wrong sample.
  TORCH_CHECK_VALUE(sigma.gt(0).logical_and(sigma.isfinite()).all().item<bool>(), op,
                    ": sigma must be finite and > 0 everywhere (NaN is not allowed)");
  TORCH_CHECK_VALUE(sqrt_eigvals.ge(0).logical_and(sqrt_eigvals.isfinite()).all().item<bool>(), op,
                    ": sqrt_eigvals (D) must be finite and >= 0 everywhere (NaN is not allowed)");
  a.noise = noise.contiguous();
  a.mean = mean.contiguous();
  a.sigma = sigma.contiguous();
  a.sqrt_eigvals = sqrt_eigvals.contiguous();
  a.bounded = lower.has_value() || upper.has_value();
  if (lower.has_value()) a.lower = *lower;
  if (upper.has_value()) a.upper = *upper;
  return a;
}

CmaCovArgs prepare_cma_covariance_update(const at::Tensor& cov, const at::Tensor& pc,
                                         const at::Tensor& y, const at::Tensor& weights,
                                         const at::Tensor& decay, double c1, double cmu) {
  constexpr const char* op = "cma_covariance_update";
  check_float32_or_64(op, "cov", cov);
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(1) == cov.size(2), op,
                    ": cov must be [B, d, d], got shape ", cov.sizes());
  TORCH_CHECK_VALUE(y.dim() == 3, op, ": y must be [B, k, d], got shape ", y.sizes());
  const int64_t b = cov.size(0), d = cov.size(1), k = y.size(1);
  check_shape(op, "pc", pc, cov, "cov", {b, d});
  check_shape(op, "y", y, cov, "cov", {b, k, d});
  if (weights.dim() == 1) {
    check_shape(op, "weights", weights, cov, "cov", {k});
  } else {
    check_shape(op, "weights", weights, cov, "cov", {b, k});
  }
  check_shape(op, "decay", decay, cov, "cov", {b});
  // The CUDA kernel puts cov's B*d rows on grid.x (limit 2^31 - 1) and indexes rows as
  // int64; B*d*d is cov.numel(), an int64 by construction, so only the row count can
  // overflow. Checked on every device (one limit for the op) and before any copy, so an
  // expanded cov that would not fit in memory is refused rather than materialised.
  TORCH_CHECK_VALUE(b * d <= kCmaMaxRows, op, ": cov has B*d = ", b, "*", d, " = ", b * d,
                    " rows; at most 2^31 - 1 are supported (split the batch of instances)");
  CmaCovArgs a;
  a.pc = pc.contiguous();
  a.y = y.contiguous();
  // [B, k, d], tiny next to C: the rank-mu term's per-row coefficients, made once.
  a.wy = (weights.expand({b, k}).unsqueeze(2) * y * cmu).contiguous();
  a.decay = decay.contiguous();
  a.c1 = c1;
  return a;
}

at::Tensor prepare_cma_eigh(const at::Tensor& cov) {
  constexpr const char* op = "cma_eigh";
  check_float32_or_64(op, "cov", cov);
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(1) == cov.size(2), op,
                    ": cov must be [B, d, d], got shape ", cov.sizes());
  // One host check (on CUDA, one wait for the device; the eigensolver waits anyway).
  TORCH_CHECK_VALUE(cov.numel() == 0 || cov.isfinite().all().item<bool>(), op,
                    ": cov must be finite everywhere (NaN / inf is not allowed)");
  return cov.contiguous();
}

}  // namespace latentx

TORCH_LIBRARY_IMPL(latentx, Autograd, m) {
  m.impl("cma_sample", torch::CppFunction::makeFallthrough());
  m.impl("cma_covariance_update", torch::CppFunction::makeFallthrough());
  m.impl("cma_covariance_update_", torch::CppFunction::makeFallthrough());
  m.impl("cma_eigh", torch::CppFunction::makeFallthrough());
}
