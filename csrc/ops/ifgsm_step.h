// Fused I-FGSM sign step with clamping (SPEC A2; AdvLatGAN eq. 6):
//   z' = z - s * sign(g)                      (+ when ascend)
//   z' = min(max(z', z0 - r), z0 + r)        when an anchor z0 is given
//   z' = min(max(z', lo), hi)                 when bounds are given
// sign(0) = 0 and a NaN anywhere on an element's path makes that element NaN.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "common/host_device.h"

namespace latentx {

// Everything a device kernel needs, checked and laid out by prepare_ifgsm_step.
struct IfgsmStepArgs {
  at::Tensor z;           // z's shape, contiguous, dtype T
  at::Tensor grad;        // z's shape, contiguous, dtype T
  at::Tensor anchor;      // z's shape, contiguous, dtype T; undefined without an anchor
  at::Tensor step_sizes;  // [rows] contiguous, opmath dtype; undefined: use step_size
  at::Tensor radii;       // [rows] contiguous, opmath dtype; undefined: use radius
  double step_size = 0;   // already negated when ascending
  double radius = 0;
  double lower = -INFINITY;  // +-inf when a bound is absent: the clamp is then exact identity
  double upper = INFINITY;
  int64_t inner = 1;      // elements per sample: numel / rows
  bool ascend = false;
};

// Checks every argument (naming it in the error) and returns contiguous views.
IfgsmStepArgs prepare_ifgsm_step(const at::Tensor& z, const at::Tensor& grad, double step_size,
                                 const std::optional<at::Tensor>& step_sizes,
                                 const std::optional<at::Tensor>& anchor,
                                 std::optional<double> radius,
                                 const std::optional<at::Tensor>& radii,
                                 std::optional<double> lower, std::optional<double> upper,
                                 bool ascend);

// Writes the step into `out` (contiguous, z's shape; may be the storage of args.z itself).
using IfgsmStepInto = void (*)(const IfgsmStepArgs& args, at::Tensor& out);

// The op's two schemas over a device's `Into` kernel: out-of-place, and in place (through a
// temporary when z is not contiguous).
template <IfgsmStepInto Into>
at::Tensor ifgsm_step(const at::Tensor& z, const at::Tensor& grad, double step_size,
                      const std::optional<at::Tensor>& step_sizes,
                      const std::optional<at::Tensor>& anchor, std::optional<double> radius,
                      const std::optional<at::Tensor>& radii, std::optional<double> lower,
                      std::optional<double> upper, bool ascend) {
  const IfgsmStepArgs a = prepare_ifgsm_step(z, grad, step_size, step_sizes, anchor, radius,
                                             radii, lower, upper, ascend);
  at::Tensor out = at::empty(z.sizes(), z.options());
  if (out.numel() > 0) Into(a, out);
  return out;
}

template <IfgsmStepInto Into>
void ifgsm_step_(at::Tensor& z, const at::Tensor& grad, double step_size,
                 const std::optional<at::Tensor>& step_sizes,
                 const std::optional<at::Tensor>& anchor, std::optional<double> radius,
                 const std::optional<at::Tensor>& radii, std::optional<double> lower,
                 std::optional<double> upper, bool ascend) {
  const IfgsmStepArgs a = prepare_ifgsm_step(z, grad, step_size, step_sizes, anchor, radius,
                                             radii, lower, upper, ascend);
  if (z.numel() == 0) return;
  if (z.is_contiguous()) {
    Into(a, z);
  } else {
    at::Tensor out = at::empty(z.sizes(), z.options());
    Into(a, out);
    z.copy_(out);
  }
}

// NaN-propagating max / min (as torch.maximum / torch.minimum). Plain selects, no
// short-circuit logic, so the compiler turns loops over them into vector blends.
template <typename T>
LATENTX_HOST_DEVICE T max_nan(T a, T b) {
  const T m = a > b ? a : b;  // b when b is NaN
  return a != a ? a : m;
}
template <typename T>
LATENTX_HOST_DEVICE T min_nan(T a, T b) {
  const T m = a < b ? a : b;
  return a != a ? a : m;
}

// One element of the step, in opmath precision. `step` carries the sign of the direction.
template <bool kAnchor, typename T>
LATENTX_HOST_DEVICE T ifgsm_element(T z, T g, T anchor, T step, T radius, T lower, T upper) {
  T sign = T(g > T(0)) - T(g < T(0));
  sign = g != g ? g : sign;  // keep NaN (torch.sign would give 0) so a broken gradient shows
  T v = z - step * sign;
  if constexpr (kAnchor) {
    v = min_nan(max_nan(v, anchor - radius), anchor + radius);
  }
  return min_nan(max_nan(v, lower), upper);
}

}  // namespace latentx
