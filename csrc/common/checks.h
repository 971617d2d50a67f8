// Argument checks shared by every op. Each message names the argument and says what was
// expected, so a user can fix the call without reading the source.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>

namespace latentx {

// Floating dtypes every op accepts.
inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

// The CMA-ES ops (matrix products, not elementwise): float32 and float64 only (SPEC A1).
inline void check_float32_or_64(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64 (float16 / bfloat16 are not supported "
                   "by the CMA-ES ops), got ", t.scalar_type());
}

inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
                    ref_name, " (", ref.device(), "), got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name,
                   " must have the same dtype as ", ref_name, " (", ref.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, " must have the same shape as ",
                    ref_name, " ", ref.sizes(), ", got ", t.sizes());
}

// A per-sample parameter: one value per row of `ref` (shape [B] or [B,1,...,1]) or a
// single value. Returns it as a contiguous [B] tensor in `opmath` dtype.
inline at::Tensor per_sample(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& ref, at::ScalarType opmath) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name,
                    " must be on the same device as z (", ref.device(), "), got ", t.device());
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " must be a floating tensor, got ", t.scalar_type());
  const int64_t rows = ref.dim() == 0 ? 1 : ref.size(0);
  const bool single = t.numel() == 1;
  const bool per_row = t.dim() >= 1 && t.size(0) == rows && t.numel() == rows;
  TORCH_CHECK_VALUE(single || per_row, op, ": ", name,
                    " must hold one value or one per sample (shape [", rows, "]), got shape ",
                    t.sizes());
  return t.reshape({-1}).to(opmath).expand({rows}).contiguous();
}

// Host-side value check of a small per-sample tensor. On CUDA it waits for the device
// (one [B] reduction): the price of an error instead of a silently wrong result.
inline void check_nonnegative(const char* op, const char* name, const at::Tensor& t,
                              bool allow_inf) {
  const at::Tensor ok = allow_inf ? t.ge(0) : t.ge(0).logical_and(t.isfinite());
  TORCH_CHECK_VALUE(ok.all().item<bool>(), op, ": ", name, " must be ",
                    allow_inf ? "non-negative" : "finite and non-negative",
                    " everywhere (NaN is not allowed)");
}

inline void check_nonnegative(const char* op, const char* name, double v, bool allow_inf) {
  // Written as !(in range) so NaN fails.
  TORCH_CHECK_VALUE(!(!(v >= 0) || (!allow_inf && std::isinf(v))), op, ": ", name, " must be ",
                    allow_inf ? "non-negative" : "finite and non-negative", ", got ", v);
}

// Optional box bounds: neither NaN, and lower <= upper when both are given.
inline void check_box(const char* op, std::optional<double> lower, std::optional<double> upper) {
  TORCH_CHECK_VALUE(!(lower.has_value() && std::isnan(*lower)), op, ": lower must not be NaN");
  TORCH_CHECK_VALUE(!(upper.has_value() && std::isnan(*upper)), op, ": upper must not be NaN");
  if (lower.has_value() && upper.has_value()) {
    TORCH_CHECK_VALUE(*lower <= *upper, op, ": lower must be <= upper, got lower=", *lower,
                      " > upper=", *upper);
  }
}

}  // namespace latentx
